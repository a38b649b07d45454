"""Sample sets: ADM layout, class balance, resume, batch and rank independence."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import error_line, tiny_args
from layersync import Pipeline, build, sample_set as writer
from layersync.cli import sample, train
from layersync.errors import DataError
from layersync_image.output import to_uint8_nhwc

N, CLASSES = 20, 10
FAST = ["--steps", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample_scale") / "run"
    train.main(tiny_args(out, 2))
    return out


@pytest.fixture
def uint8_images(monkeypatch):
    """The image modality with its array format, whether or not the plugin names it yet."""
    real = build.modality
    monkeypatch.setattr(build, "modality", lambda reg, config: replace(real(reg, config), to_array=to_uint8_nhwc))


def sample_set(run, out, *extra, num=N):
    sample.main(["--ckpt", str(run), "--out", f"{out}/", "--num", str(num), *FAST, *extra])
    with np.load(Path(out) / "samples.npz") as data:
        return {key: data[key] for key in data.files}


def test_to_uint8_nhwc_rounds_like_adm():
    x = torch.tensor([-1.5, -1.0, -0.5, 0.0, 1 / 255, 0.5, 1.0, 2.0]).reshape(1, 2, 2, 2)
    expected = np.clip(np.round((x.numpy().astype(np.float64) + 1) * 127.5), 0, 255).astype(np.uint8)
    out = to_uint8_nhwc(x)
    assert out.dtype == np.uint8 and out.shape == (1, 2, 2, 2)
    assert np.array_equal(out, expected.transpose(0, 2, 3, 1))
    assert out[0, 0, 0].tolist() == [0, 128] and out[0, 1, 0].tolist() == [64, 255]  # channels last
    assert out[0, 1, 1].tolist() == [128, 255]  # 127.5 rounds half to even, as torch.round does


@pytest.mark.slow
def test_python_api_draws_what_the_preview_holds(run, tmp_path):
    sample.main(["--ckpt", str(run), "--out", str(tmp_path / "grid"), "--num", "3", *FAST])
    pipe = Pipeline.from_checkpoint(run, assignments=["sample.steps=2"])
    cond = pipe.conditions(pipe.labels(3))
    items, info = pipe.decode(pipe.sample(cond, seed=0), cond)
    with np.load(tmp_path / "grid.npz") as data:
        assert np.array_equal(data["cond"], [0, 1, 2]) and set(data.files) == {"samples", "cond", *info}
        assert np.array_equal(data["samples"], items.numpy())
    fresh = Pipeline.from_config(pipe.config)  # new weights, the shape and classes of the run's data set
    assert (fresh.input_shape, fresh.num_classes) == (pipe.input_shape, CLASSES)
    assert fresh.decode(fresh.sample(cond), cond)[0].shape == items.shape


@pytest.mark.slow
def test_npz_has_adm_layout_and_balanced_classes(run, tmp_path, uint8_images):
    data = sample_set(run, tmp_path / "set")
    images, labels = data["arr_0"], data["arr_1"]
    assert set(data) == {"arr_0", "arr_1"}
    assert images.dtype == np.uint8 and images.shape == (N, 8, 8, 1)
    assert labels.dtype == np.int64 and sorted(labels) == sorted(np.arange(N) % CLASSES)
    assert not np.array_equal(labels, np.arange(N) % CLASSES)  # shuffled with the seed
    assert 0 < images.std()
    assert (tmp_path / "set" / "samples.png").exists() and (tmp_path / "set" / "manifest.json").exists()
    assert not (tmp_path / "set" / "parts").exists()
    other = sample_set(run, tmp_path / "seed1", "--seed", "1")
    assert not np.array_equal(other["arr_1"], labels) and not np.array_equal(other["arr_0"], images)


@pytest.mark.slow
def test_without_to_array_floats_are_kept(run, tmp_path, monkeypatch):
    real = build.modality
    monkeypatch.setattr(build, "modality", lambda reg, config: replace(real(reg, config), to_array=None))
    data = sample_set(run, tmp_path / "set", num=6)
    assert data["arr_0"].dtype == np.float32 and data["arr_0"].shape == (6, 1, 8, 8)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_file(run, tmp_path, uint8_images, monkeypatch):
    straight = sample_set(run, tmp_path / "straight", "--batch", "4")
    written = []
    real_write = writer.write_part

    def stop_after_two(folder, start, end, arrays):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append((start, end))
        return real_write(folder, start, end, arrays)

    monkeypatch.setattr(writer, "write_part", stop_after_two)
    with pytest.raises(SystemExit) as info:
        sample_set(run, tmp_path / "resumed", "--batch", "4")
    assert info.value.code == 130
    parts = sorted(p.name for p in (tmp_path / "resumed" / "parts").glob("part_*.npz"))
    assert parts == ["part_00000000_00000004.npz", "part_00000004_00000008.npz"]
    assert not (tmp_path / "resumed" / "samples.npz").exists()

    written.clear()
    monkeypatch.setattr(writer, "write_part", lambda *a: written.append(a[1:3]) or real_write(*a))
    resumed = sample_set(run, tmp_path / "resumed", "--batch", "4")
    assert written == [(8, 12), (12, 16), (16, 20)]  # only the missing batches were drawn
    for key in ("arr_0", "arr_1"):
        assert np.array_equal(straight[key], resumed[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ode", "sde"])
def test_batch_size_does_not_change_samples(run, tmp_path, uint8_images, mode):
    a = sample_set(run, tmp_path / "b3", "--batch", "3", "--mode", mode)
    b = sample_set(run, tmp_path / "b5", "--batch", "5", "--mode", mode)
    for key in ("arr_0", "arr_1"):
        assert np.array_equal(a[key], b[key]), key


@pytest.mark.distributed
def test_two_gloo_ranks_match_one_process(run, tmp_path):
    args = ["--ckpt", str(run), "-n", str(N), "--batch", "3", *FAST]
    sample.main([*args, "--out", f"{tmp_path}/one/"])
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "layersync.cli.sample", *args, "--out", f"{tmp_path}/two/"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    with np.load(tmp_path / "one" / "samples.npz") as one, np.load(tmp_path / "two" / "samples.npz") as two:
        assert one.files == two.files
        for key in one.files:
            assert np.array_equal(one[key], two[key]), key


def refused(argv, capsys) -> str:
    return error_line(sample.main, argv, capsys)


@pytest.mark.slow
def test_other_settings_cannot_resume_into_a_folder(run, tmp_path, capsys, caplog):
    base = ["--ckpt", str(run), "--out", f"{tmp_path}/set/", "--num", "8", *FAST]
    sample.main(base)
    capsys.readouterr()
    line = refused([*base, "--seed", "3"], capsys)
    assert "another run" in line and "seed: 3 here vs 0 there" in line
    with caplog.at_level("INFO", logger="layersync"):
        sample.main(base)  # the same settings: already complete, nothing redone
    assert "already complete" in caplog.text and not (tmp_path / "set" / "parts").exists()

    adaptive = ["--ckpt", str(run), "--out", f"{tmp_path}/dopri5/", "--num", "8", "--set", "sample.solver=dopri5"]
    sample.main([*adaptive, "--batch", "4"])
    capsys.readouterr()
    assert "batch: 3 here vs 4 there" in refused([*adaptive, "--batch", "3"], capsys)  # dopri5 steps per batch


def test_coverage_check_names_gaps_and_overlaps(tmp_path):
    def parts(*ranges):
        return [(a, b, tmp_path / f"part_{a:08d}_{b:08d}.npz") for a, b in ranges]

    writer.check_coverage(parts((0, 4), (4, 6)), 6, tmp_path)
    with pytest.raises(DataError, match="samples 4..5 are missing"):
        writer.check_coverage(parts((0, 4), (6, 8)), 8, tmp_path)
    with pytest.raises(DataError, match="part_00000003_00000006.npz overlaps"):
        writer.check_coverage(parts((0, 4), (3, 6)), 6, tmp_path)
    with pytest.raises(DataError, match="samples 6..7 are missing"):
        writer.check_coverage(parts((0, 6)), 8, tmp_path)
    with pytest.raises(DataError, match="goes past sample 5"):
        writer.check_coverage(parts((0, 8)), 6, tmp_path)
