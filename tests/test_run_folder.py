"""The run folder under damage: torn metrics, corrupt or deleted checkpoints, a lost config.yaml."""

import shutil

import pytest
import torch

from helpers import error_line, read_metrics, tiny_args
from layersync.cli import train
from layersync.config import read_yaml
from layersync import checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished 6-step run: checkpoints at steps 3 and 6, samples at step 6."""
    out = tmp_path_factory.mktemp("base") / "run"
    train.main(tiny_args(out, 6))
    return out


def copy_of(base, tmp_path):
    return shutil.copytree(base, tmp_path / "run")


def names(run) -> list[str]:
    return [p.name for p in checkpoint.list_checkpoints(run / "checkpoints")]


def test_torn_last_metrics_line_is_dropped(base, tmp_path, caplog):
    run = copy_of(base, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss": 0.')  # a write cut short by a full disk
    with caplog.at_level("WARNING", logger="layersync"):
        assert train.main(tiny_args(run, 7)) == 0
    assert "metrics.jsonl" in caplog.text and "line 7" in caplog.text
    assert [m["step"] for m in read_metrics(run)] == [1, 2, 3, 4, 5, 6, 7]


def test_torn_metrics_line_elsewhere_is_an_error(base, tmp_path, capsys):
    run = copy_of(base, tmp_path)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    line = error_line(train.main, tiny_args(run, 7), capsys)
    assert "metrics.jsonl" in line and "line 2" in line


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def random_bytes(path):
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())


def without_optimizer(path):
    state = checkpoint.load(path)
    del state["optimizer"]
    torch.save(state, path)


@pytest.mark.parametrize("damage", [truncate, random_bytes, without_optimizer])
def test_corrupt_latest_checkpoint_falls_back_to_the_one_before(base, tmp_path, caplog, damage):
    run = copy_of(base, tmp_path)
    damage(run / "checkpoints" / "step_0000006.pt")
    with caplog.at_level("WARNING", logger="layersync"):
        assert train.main(tiny_args(run, 6)) == 0
    assert "step_0000006.pt" in caplog.text
    assert (run / "checkpoints" / "step_0000006.pt.corrupt").exists()
    assert names(run) == ["step_0000003.pt", "step_0000006.pt"]
    assert [m["step"] for m in read_metrics(run)] == [1, 2, 3, 4, 5, 6]
    a = checkpoint.load(base / "checkpoints" / "step_0000006.pt")["model"]
    b = checkpoint.load(run / "checkpoints" / "step_0000006.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # steps 4-6 again, bit for bit


def test_no_readable_checkpoint_is_an_error(base, tmp_path, capsys):
    run = copy_of(base, tmp_path)
    for path in checkpoint.list_checkpoints(run / "checkpoints"):
        truncate(path)
    line = error_line(train.main, tiny_args(run, 7), capsys)
    assert "no checkpoint" in line and "--restart" in line
    assert names(run) == [] and len(list((run / "checkpoints").glob("*.corrupt"))) == 2
    assert "--restart" in error_line(train.main, tiny_args(run, 7), capsys)  # no silent restart the next time


def test_keep_and_keep_every_prune_and_may_change_on_resume(tmp_path):
    every = ["--set", "train.ckpt_every=1", "--set", "train.keep_every=4"]
    train.main(tiny_args(tmp_path / "run", 6, *every, "--set", "train.keep=2"))
    assert names(tmp_path / "run") == ["step_0000004.pt", "step_0000005.pt", "step_0000006.pt"]
    train.main(tiny_args(tmp_path / "run", 7, *every, "--set", "train.keep=1"))
    assert names(tmp_path / "run") == ["step_0000004.pt", "step_0000007.pt"]


@pytest.mark.parametrize("change, key", [
    (["--seed", "7"], "seed"),
    (["--set", "optim.lr=0.5"], "optim.lr"),
    (["--layersync", "1:3"], "layersync.pairs"),
])
def test_resume_checks_the_config_in_the_checkpoint(base, tmp_path, capsys, change, key):
    run = copy_of(base, tmp_path)
    (run / "config.yaml").unlink()
    assert key in error_line(train.main, tiny_args(run, 7, *change), capsys)


def test_outputs_without_checkpoints_need_restart(base, tmp_path, capsys):
    run = copy_of(base, tmp_path)
    shutil.rmtree(run / "checkpoints")
    line = error_line(train.main, tiny_args(run, 2), capsys)
    assert "no checkpoint" in line and "--restart" in line
    assert train.main(tiny_args(run, 2, "--restart")) == 0
    assert [m["step"] for m in read_metrics(run)] == [1, 2]
    assert [p.name for p in (run / "samples").iterdir()] == ["step_0000002.png"]
    assert (run / "previous_1" / "samples" / "step_0000006.png").exists()
    assert len((run / "previous_1" / "metrics.jsonl").read_text().splitlines()) == 6


def test_config_yaml_of_a_started_run_alone_needs_restart(base, tmp_path, capsys):
    run = copy_of(base, tmp_path)
    for name in ("checkpoints", "samples"):
        shutil.rmtree(run / name)
    (run / "metrics.jsonl").unlink()
    assert "--restart" in error_line(train.main, tiny_args(run, 2), capsys)


def test_config_yaml_waits_for_the_first_checkpoint(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        def step(*batch):
            raise RuntimeError("the first step fails")
        return step

    with monkeypatch.context() as m:
        m.setattr("layersync.train.trainer.make_step", broken)
        with pytest.raises(RuntimeError, match="first step fails"):
            train.main(tiny_args(tmp_path / "run", 2))
    assert not (tmp_path / "run" / "config.yaml").exists()
    (tmp_path / "run" / "config.yaml").write_text("")  # what an older version could leave: blocks nothing
    assert train.main(tiny_args(tmp_path / "run", 2, "--seed", "3")) == 0
    assert read_yaml(tmp_path / "run" / "config.yaml")["seed"] == 3
