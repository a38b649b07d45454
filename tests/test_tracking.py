"""Experiment tracking: the loggers of train.loggers, curves.png, `layersync report`, the progress bar."""

import io
import re
import wave

import numpy as np
import pytest
from PIL import Image

from helpers import error_line, read_metrics, tiny_args
from layersync.cli import main, report, train
from layersync.errors import ConfigError
from layersync.interfaces import Preview
from layersync.train import loggers

pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (a dev dependency)")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TB = ["--set", "train.loggers=[jsonl,tensorboard]", "--set", "train.sample_every=2"]


def events(run) -> EventAccumulator:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "audio": 0})
    acc.Reload()
    return acc


def scalars(acc, key) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(f"train/{key}")]


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory):
    """4 steps with TensorBoard: log lines at every step, samples at steps 2 and 4."""
    out = tmp_path_factory.mktemp("tb") / "sync"
    assert train.main(tiny_args(out, 4, *TB)) == 0
    return out


@pytest.mark.slow
def test_tensorboard_holds_the_scalars_of_metrics_jsonl(tb_run):
    acc, records = events(tb_run), read_metrics(tb_run)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for key in ("loss", "flow_loss", "layersync_loss", "lr", "samples_per_s", "elapsed_s"):
        assert scalars(acc, key) == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in records], key
    step_s = scalars(acc, "step_s")
    assert step_s == [(r["step"], pytest.approx(16 / r["samples_per_s"], rel=1e-5)) for r in records]


@pytest.mark.slow
def test_tensorboard_holds_the_sample_grids(tb_run):
    images = events(tb_run).Images("samples")
    assert [image.step for image in images] == [2, 4]
    with Image.open(tb_run / "samples" / "step_0000004.png") as grid:
        assert (images[-1].width, images[-1].height) == grid.size


@pytest.mark.slow
def test_curves_png_is_written_beside_metrics(tb_run):
    with Image.open(tb_run / "curves.png") as image:
        assert image.format == "PNG" and image.size[0] > 600


@pytest.mark.slow
def test_a_resumed_run_drops_the_events_after_its_checkpoint(tmp_path):
    """Stopped after step 5 with the last checkpoint at 3: the resumed run's events replace steps 4 and 5."""
    run = tmp_path / "run"
    assert train.main(tiny_args(run, 5, *TB)) == 0
    (run / "checkpoints" / "step_0000005.pt").unlink()
    assert train.main(tiny_args(run, 6, *TB)) == 0
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert scalars(events(run), "loss") == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in records]


def test_tensorboard_takes_a_video_preview_as_its_first_frame_and_audio_at_its_rate(tmp_path):
    frames = [Image.new("RGB", (6, 4), color) for color in ("red", "blue")]
    gif, wav = tmp_path / "samples" / "step_0000001.gif", tmp_path / "samples" / "step_0000001.wav"
    gif.parent.mkdir()
    frames[0].save(gif, format="gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with wave.open(str(wav), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(8000)
        f.writeframes((np.sin(np.arange(800) / 5) * 16000).astype("<i2").tobytes())
    writer = loggers.TensorBoard(tmp_path, {"train": {"batch_size": 4}}, 0)
    writer.samples(1, Preview("video", gif, 10))
    writer.samples(1, Preview("audio", wav, 8000))
    writer.samples(2, Preview("file", wav))  # not shown
    writer.close()
    acc = events(tmp_path)
    (image,) = acc.Images("samples")
    with Image.open(io.BytesIO(image.encoded_image_string)) as first:
        assert first.size == (6, 4) and first.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    (audio,) = acc.Audio("samples/audio")
    assert audio.sample_rate == 8000 and audio.length_frames == 800


@pytest.mark.slow
def test_wandb_offline_writes_its_run_folder(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="wandb is not installed (pip install 'layersync-core[wandb]')")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert train.main(tiny_args(run, 2, "--set", "train.loggers=[jsonl,wandb]")) == 0
    wandb.teardown()  # what the end of the process does: the service writes out what it holds
    (folder,) = (run / "wandb").glob("offline-run-*")
    (log,) = folder.glob("run-*.wandb")  # the records to sync: config, git commit, scalars
    data, commit = log.read_bytes(), loggers.git_commit()
    assert b"git_commit" in data and (commit is None or commit.encode() in data)
    assert b'"loggers":["jsonl","wandb"]' in data and b"train/flow_loss" in data and b"train/step_s" in data
    assert list((folder / "files" / "media" / "images").glob("samples_2_*.png"))
    assert (run / "wandb" / "layersync_run_id").read_text().strip() in folder.name


@pytest.mark.slow
def test_report_compares_two_runs(tb_run, tmp_path, capsys):
    vanilla = tmp_path / "vanilla"
    assert train.main(tiny_args(vanilla, 4, "--layersync", "off")) == 0
    bar = capsys.readouterr().err
    assert re.search(r"loss=[\d.]+, sync=[-\d.]+, samples/s=[\d.]+", bar)  # the progress bar's postfix
    (vanilla / "metrics.json").write_text('{"fid": 12.5, "samples": "samples.npz"}')  # as layersync-eval --out
    out = tmp_path / "report"
    figure = report.write([tb_run, vanilla], out)
    for ax in figure.axes:  # one line per run in each term's panel
        assert [line.get_label() for line in ax.get_lines()] == ["sync", "vanilla"]
    assert main.main(["report", str(tb_run), str(vanilla), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images == ["curves.png", "samples_1.png", "samples_2.png"]
    for name in images:
        with Image.open(out / name) as image:
            assert image.format == "PNG"
    assert re.search(r"\| layersync\.pairs \| \[\[\d+, \d+\]\] \| \[\] \|", text)
    assert "| fid | 12.5 |" in text


@pytest.mark.slow
def test_report_goes_into_the_run_folder_and_gives_the_checkpoint_step(tmp_path, monkeypatch):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    assert train.main(tiny_args(run, 4)) == 0  # checkpoints at steps 3 and 4
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main.main(["report", str(run)]) == 0
    assert not list(elsewhere.iterdir())
    assert f"| run | `{run}` | 4 |" in (run / "report" / "report.md").read_text()
    (run / "checkpoints" / "step_0000004.pt").unlink()  # logged beyond the newest checkpoint
    assert main.main(["report", str(run)]) == 0
    assert f"| run | `{run}` | 3 (logged: 4) |" in (run / "report" / "report.md").read_text()


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert str(missing) in error_line(main.main, ["report", str(missing)], capsys)
    tmp_path.joinpath("empty").mkdir()
    assert str(tmp_path / "empty" / "metrics.jsonl") in error_line(main.main, ["report", str(tmp_path / "empty")],
                                                                     capsys)
    (tmp_path / "empty" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (tmp_path / "empty" / "metrics.json").write_text("{")
    assert str(tmp_path / "empty" / "metrics.json") + " is not JSON" in error_line(
        main.main, ["report", str(tmp_path / "empty")], capsys)


def test_an_unknown_logger_names_the_known_ones(tmp_path, capsys):
    line = error_line(train.main, tiny_args(tmp_path / "run", 1, "--set", "train.loggers=[jsonl,mlflow]"), capsys)
    assert "train.loggers=[jsonl, mlflow]" in line and "jsonl, tensorboard, wandb" in line
    assert not (tmp_path / "run").exists()


def test_a_logger_without_its_package_is_refused(monkeypatch):
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"wandb needs the wandb package \(pip install 'layersync-core\[wandb\]'\)"):
        loggers.check(["jsonl", "wandb"])
    assert loggers.default_loggers() == ["jsonl"]
