"""Issue 24's plugin, written from docs/writing-a-plugin.md alone (tests/data/strokes): pen strokes of 20-64
points padded with a mask, ``{shape: one-hot, scale: vector}`` conditions, core's sit1d with ``cond_dims``, a
masked Fréchet evaluator. It passes check-plugin, then trains, samples with CFG and evaluates, in process;
variants of it show what check-plugin and layersync-sample now catch."""

import importlib.metadata as md
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from layersync.check import check_plugin
from layersync.cli import eval as eval_cli
from layersync.cli import sample as sample_cli
from layersync.cli import train as train_cli
from layersync.plugins import Registry

pytestmark = pytest.mark.slow

SOURCE = Path(__file__).parent / "data" / "strokes"
MODULE = "layersync_strokes"
TINY = ["--steps", "3", "--set", "train.batch_size=8", "--set", "train.log_every=1", "--set", "sample.steps=2"]


def use_plugin(monkeypatch, folder: Path, module: str = MODULE) -> Registry:
    """The installed plugins and ``strokes`` (``module`` in ``folder``), as the CLIs' registry."""
    monkeypatch.syspath_prepend(str(folder))
    entry = md.EntryPoint("strokes", module, "layersync")
    registry = Registry(entry_points=[*md.entry_points(group="layersync"), entry])
    monkeypatch.setattr("layersync.plugins._registry", registry)
    return registry


def variant(folder: Path, module: str, *edits) -> Path:
    """The plugin with ``(old, new)`` edits, as ``module`` in ``folder`` beside its recipe."""
    text = (SOURCE / f"{MODULE}.py").read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    (folder / f"{module}.py").write_text(text)
    shutil.copy(SOURCE / "strokes.yaml", folder)
    return folder


def refusal(argv, capsys) -> str:
    """layersync-sample's one error line (after its progress bar, if any), exit 2."""
    with pytest.raises(SystemExit) as info:
        sample_cli.main(argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("layersync-sample: error: ")]
    assert info.value.code == 2 and len(errors) == 1, errors
    return errors[0]


def rows(results) -> dict:
    return {(r.item, r.check): (r.status, r.detail) for r in results}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 3-step run of the plugin's recipe."""
    out = tmp_path_factory.mktemp("strokes") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_plugin(monkeypatch, SOURCE)
        assert train_cli.main(["--plugin", "strokes", "--out", str(out), *TINY]) == 0
    return out


def test_it_passes_check_plugin(monkeypatch):
    results = check_plugin("strokes", use_plugin(monkeypatch, SOURCE))
    assert {r.status for r in results} == {"PASS"}, [r for r in results if r.status != "PASS"]
    found = rows(results)
    assert "preview(n): cond {shape: (2, 3) float32, scale: (2, 2) float32}, mask (2, 64) bool" in \
        found["dataset/strokes", "preview"][1]
    assert found["modality/strokes", "conditions"][1].startswith("9 conditions {shape: (9, 3) float32, scale: (9, 2) "
                                                                 "float32}, facts shape; 2 samples")


def test_it_trains_samples_with_cfg_and_evaluates(run, tmp_path, monkeypatch):
    use_plugin(monkeypatch, SOURCE)
    preview = np.load(run / "samples" / "step_0000003.npy")  # the recipe's 9 samples, zero past their lengths
    assert preview.shape == (9, 2, 64) and not preview[0, :, 20:].any() and preview[0, :, :20].all()

    sampled = tmp_path / "set"
    assert sample_cli.main(["--ckpt", str(run), "--out", f"{sampled}/", "-n", "12", "--cfg-scale", "3",
                            "--device", "cpu"]) == 0
    with np.load(sampled / "samples.npz") as archive:
        assert sorted(archive.files) == ["arr_0", "lengths", "shape"]  # no labels: the model takes none
        assert archive["arr_0"].shape == (12, 2, 64) and archive["arr_0"].dtype == np.float32
        assert set(archive["lengths"]) == {20, 42, 64} and set(archive["shape"]) == {"circle", "line", "zigzag"}
    assert json.loads((sampled / "manifest.json").read_text())["sample"]["cfg_scale"] == 3.0
    unguided = tmp_path / "unguided"
    assert sample_cli.main(["--ckpt", str(run), "--out", str(unguided), "--device", "cpu"]) == 0
    guided = tmp_path / "guided"
    assert sample_cli.main(["--ckpt", str(run), "--out", str(guided), "--cfg-scale", "3", "--device", "cpu"]) == 0
    assert not np.array_equal(np.load(f"{guided}.npz")["samples"], np.load(f"{unguided}.npz")["samples"])

    from layersync_strokes import write_reference

    reference = write_reference(tmp_path / "reference.npz", 64)
    metrics = tmp_path / "metrics.json"
    assert eval_cli.main(["--plugin", "strokes", "--samples", str(sampled), "--ref", str(reference),
                          "--device", "cpu", "--out", str(metrics)]) == 0
    assert np.isfinite(json.loads(metrics.read_text())["fd_strokes"])


def test_check_plugin_fails_what_training_and_sampling_would_trip_on(tmp_path, monkeypatch):
    folder = variant(tmp_path, "strokes_unfinished",
                     ("    def preview(self, n: int):", "    def first_conditions(self, n: int):"),
                     ("conditions=conditions)", "cache_views=lambda x: x)"))
    found = rows(check_plugin("strokes", use_plugin(monkeypatch, folder, "strokes_unfinished")))
    status, detail = found["dataset/strokes", "preview"]
    assert status == "FAIL" and "not class labels, and the data set has no preview(n)" in detail
    status, detail = found["modality/strokes", "conditions"]
    assert status == "FAIL" and "not class labels, and the modality has no conditions(values, config, " in detail
    status, detail = found["modality/strokes", "cache_views"]
    assert status == "FAIL" and "gave (2, 2, 64) float32; it must return a list of tensors shaped like x" in detail


def test_sampling_a_vector_model_without_conditions_is_refused(run, tmp_path, monkeypatch, capsys):
    use_plugin(monkeypatch, variant(tmp_path, "strokes_labels", ("conditions=conditions)", ")")), "strokes_labels")
    line = refusal(["--ckpt", str(run), "--out", str(tmp_path / "p"), "--device", "cpu"], capsys)
    assert "the model takes vector conditions (model.cond_dims: shape, scale), but modality 'strokes' defines no " \
           "conditions(values, config, num_classes)" in line


def test_save_samples_may_not_take_the_sample_commands_own_file(run, tmp_path, monkeypatch, capsys):
    edit = ('path = Path(stem).with_suffix(".npy")', 'path = Path(stem).with_suffix(".npz")')
    use_plugin(monkeypatch, variant(tmp_path, "strokes_npz", edit), "strokes_npz")
    line = refusal(["--ckpt", str(run), "--out", str(tmp_path / "p"), "--device", "cpu"], capsys)
    assert f"modality 'strokes': save_samples wrote {tmp_path / 'p.npz'}, where layersync-sample keeps" in line
