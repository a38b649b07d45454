"""Training end to end through the CLI: outputs, exact resume, config checks."""

import pytest
import torch

from helpers import read_metrics, tiny_args
from layersync.cli import sample, train
from layersync import checkpoint
from layersync.train import trainer
from layersync.train.optim import build_optimizer, load_optimizer_state

pytestmark = pytest.mark.slow

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


def test_micro_batches_train_the_same_run_and_may_change_on_resume(tmp_path):
    """train.grad_accum splits the batch, not the run: 3 steps in 4 micro-batches, then 3 more in 2,
    log the losses of 6 whole-batch steps."""
    train.main(tiny_args(tmp_path / "straight", 6))
    train.main(tiny_args(tmp_path / "split", 3, "--set", "train.grad_accum=4"))
    train.main(tiny_args(tmp_path / "split", 6, "--set", "train.grad_accum=2"))
    straight, split = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "split")
    assert [m["step"] for m in split] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(straight, split):
        assert all(b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6) for k in KEYS), (a, b)


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


def test_a_folder_without_checkpoints_takes_other_settings(tmp_path):
    """A run that stopped before its first checkpoint left config.yaml only: it locks nothing."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("optim: {lr: 0.5}\n")  # what a run that failed at step 1 leaves
    assert train.main(tiny_args(run, 2)) == 0
    assert [r["step"] for r in read_metrics(run)] == [1, 2]


def test_resuming_a_finished_run_says_it_is_complete(tmp_path, caplog):
    train.main(tiny_args(tmp_path / "run", 2))
    caplog.clear()
    with caplog.at_level("INFO", logger="layersync"):
        assert train.main(tiny_args(tmp_path / "run", 2)) == 0
    assert "the run is complete: step 2 of 2" in caplog.text and "nan" not in caplog.text


def test_resumed_optimizer_keeps_the_flags_of_this_run(tmp_path):
    """An eager checkpoint resumed by a graph-mode run: the optimizer stays capturable, its
    step counts move where capturable wants them, and the lr stays this run's tensor."""
    train.main(tiny_args(tmp_path / "run", 2))
    saved = checkpoint.load(checkpoint.latest(tmp_path / "run" / "checkpoints"))["optimizer"]
    assert saved["param_groups"][0]["capturable"] is False
    shaped = [torch.nn.Parameter(torch.zeros_like(saved["state"][i]["exp_avg"])) for i in range(len(saved["state"]))]
    opt = build_optimizer(shaped, {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
                          "cpu", capturable=True)
    lr = opt.param_groups[0]["lr"]
    load_optimizer_state(opt, saved)
    group = opt.param_groups[0]
    assert group["capturable"] is True and group["fused"] is False
    assert group["lr"] is lr and float(lr) == float(saved["param_groups"][0]["lr"])
    steps = [opt.state[p]["step"] for p in shaped]
    assert all(s.dtype == torch.float32 and float(s) == 2.0 for s in steps)


def test_generator_of_another_device_is_reseeded(tmp_path, caplog):
    """A run saved on CUDA resumed on the CPU: the step generator's state does not fit, so it
    is reseeded from (seed, step), said in the log, and training goes on."""
    train.main(tiny_args(tmp_path / "run", 2))
    path = checkpoint.latest(tmp_path / "run" / "checkpoints")
    state = checkpoint.load(path)
    state.update(step_generator=torch.zeros(16, dtype=torch.uint8), step_generator_device="cuda")
    torch.save(state, path)
    with caplog.at_level("INFO", logger="layersync"):
        train.main(tiny_args(tmp_path / "run", 4))
    assert "saved on cuda" in caplog.text and "reseeded" in caplog.text
    assert [m["step"] for m in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]


def test_preview_grid_is_what_the_sample_cli_draws(tmp_path):
    """Training previews use per-sample CPU generators (any device, ODE or SDE), the same
    samples `layersync-sample --seed <run seed>` draws from the checkpoint's EMA weights."""
    out = tmp_path / "run"
    sde = ["--set", "sample.method=sde", "--set", "sample.solver=euler", "--set", "train.sample_every=2"]
    train.main(tiny_args(out, 2, "--seed", "5", *sde))
    sample.main(["--ckpt", str(out), "--out", str(tmp_path / "again"), "--num", "4", "--seed", "5"])
    import numpy as np
    from PIL import Image

    again = np.load(tmp_path / "again.npz")["samples"]
    assert again.shape == (4, 1, 8, 8)
    grid = np.asarray(Image.open(out / "samples" / "step_0000002.png"))
    assert np.array_equal(grid, np.asarray(Image.open(tmp_path / "again.png")))


def test_an_early_preview_shows_its_progress_and_leaves_the_run_unchanged(tmp_path, monkeypatch):
    """train.first_sample writes previews at that early step too (not only every sample_every steps and
    at the last), with a bar that moves at each model evaluation (heun, 2 steps: 4). Previews draw from
    their own generators: a run stopped before it and resumed across it trains as one without it."""
    bars = []

    class Recorded(trainer.tqdm):
        def close(self):
            if not self.disable:  # the first close (a closed bar is disabled)
                bars.append((self.desc, self.n, self.total))
            super().close()

    monkeypatch.setattr(trainer, "tqdm", Recorded)
    train.main(tiny_args(tmp_path / "plain", 4, "--set", "train.first_sample=0"))
    train.main(tiny_args(tmp_path / "early", 1, "--set", "train.first_sample=2"))
    train.main(tiny_args(tmp_path / "early", 4, "--set", "train.first_sample=2"))
    assert [bar for bar in bars if bar[0]] == [("preview at step 4", 4, 4), ("preview at step 1", 4, 4),
                                               ("preview at step 2", 4, 4), ("preview at step 4", 4, 4)]
    assert [p.name for p in (tmp_path / "plain" / "samples").iterdir()] == ["step_0000004.png"]
    assert sorted(p.name for p in (tmp_path / "early" / "samples").iterdir()) == [
        "step_0000001.png", "step_0000002.png", "step_0000004.png"]
    plain, early = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "early")
    assert [[m[k] for k in KEYS] for m in plain] == [[m[k] for k in KEYS] for m in early]
    a, b = (checkpoint.load(checkpoint.latest(tmp_path / run / "checkpoints")) for run in ("plain", "early"))
    assert all(torch.equal(a["model"][name], b["model"][name]) for name in a["model"])


def test_warmup_and_cosine_drive_the_run(tmp_path):
    schedule = ["--set", "train.lr_schedule=cosine", "--set", "train.warmup_steps=2", "--set", "optim.lr=0.01"]
    train.main(tiny_args(tmp_path / "run", 4, *schedule))
    lrs = [m["lr"] for m in read_metrics(tmp_path / "run")]
    assert lrs == pytest.approx([0.005, 0.01, 0.01, 0.005])  # linear warm-up, then cosine from step 3
