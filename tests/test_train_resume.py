"""Training end to end through the CLI: outputs, exact resume, config checks."""

import torch

from helpers import read_metrics, tiny_args
from layersync.cli import sample, train
from layersync.train import checkpoint

KEYS = ("loss", "flow_loss", "layersync_loss")


def test_resume_matches_uninterrupted(tmp_path):
    train.main(tiny_args(tmp_path / "straight", 6))
    train.main(tiny_args(tmp_path / "resumed", 3))
    assert [m["step"] for m in read_metrics(tmp_path / "resumed")] == [1, 2, 3]
    train.main(tiny_args(tmp_path / "resumed", 6))

    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(straight, resumed):
        assert all(a[k] == b[k] for k in KEYS), (a, b)
    assert len({m["loss"] for m in straight}) == 6  # the losses do change
    a = checkpoint.load(checkpoint.latest(tmp_path / "straight" / "checkpoints"))
    b = checkpoint.load(checkpoint.latest(tmp_path / "resumed" / "checkpoints"))
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), name
    assert a["step"] == b["step"] == 6


def test_run_writes_outputs_and_sample_cli_reads_them(tmp_path):
    out = tmp_path / "run"
    train.main(tiny_args(out, 4, "--layersync", "2:4"))
    metrics = read_metrics(out)
    assert {"step", "loss", "flow_loss", "layersync_loss"} <= set(metrics[-1])
    last = metrics[-1]
    assert abs(last["loss"] - (last["flow_loss"] + last["layersync_loss"])) < 1e-5
    assert last["layersync_loss"] < 0  # weight * (-cos)
    assert (out / "samples" / "step_0000004.png").exists()
    assert [p.name for p in checkpoint.list_checkpoints(out / "checkpoints")] == ["step_0000003.pt", "step_0000004.pt"]

    sample.main(["--ckpt", str(out), "--out", str(tmp_path / "grid"), "--num", "6", "--set", "sample.steps=3"])
    import numpy as np

    data = np.load(tmp_path / "grid.npz")
    assert data["samples"].shape == (6, 1, 8, 8) and np.isfinite(data["samples"]).all()
    assert (tmp_path / "grid.png").exists()


def test_layersync_off_logs_zero_term(tmp_path):
    train.main(tiny_args(tmp_path / "off", 2, "--layersync", "off"))
    assert all(m["layersync_loss"] == 0.0 and m["loss"] == m["flow_loss"] for m in read_metrics(tmp_path / "off"))


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    train.main(tiny_args(tmp_path / "run", 2))
    try:
        train.main(tiny_args(tmp_path / "run", 4, "--set", "optim.lr=0.5"))
    except SystemExit as exc:
        assert exc.code == 2
    assert "optim.lr" in capsys.readouterr().err
