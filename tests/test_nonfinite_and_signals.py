"""NaN and inf: found on the device, read at log steps, a stop with exit 3 or a skipped step;
signals: SIGTERM exits 143, SIGINT 130, and under DDP every rank stops at the same step."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from helpers import error_line, tiny_args
from layersync import FlowObjective, LayerSync
from layersync.cli import sample, train
from layersync.cli.common import entry_point
from layersync.errors import Interrupted, NonFiniteError
from layersync import checkpoint
from layersync.train.ema import EMA
from layersync.train.modes import CapturedStep
from layersync.train.optim import build_optimizer
from layersync.train.step import FIRST, FLOW, GRADS, SEEN, SKIPPED, SYNC, TrainStep
from layersync_image.sit import build_sit

OPTIM = {"lr": 1e-3, "betas": (0.9, 0.99), "eps": 1e-6, "weight_decay": 0.05}


def strict_metrics(out) -> list[dict]:
    """metrics.jsonl read as strict JSON: a bare NaN or Infinity fails."""
    def refuse(token):
        raise AssertionError(f"metrics.jsonl holds a bare {token}")
    return [json.loads(line, parse_constant=refuse) for line in (out / "metrics.jsonl").read_text().splitlines()]


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ---- the step: flags on the device, skipping ------------------------------------------------

def tiny_step(skip=False, fused=False, weight=0.3):
    torch.manual_seed(0)
    model = build_sit((1, 8, 8), 10, "T/2")
    opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-3), weight_decay=0.05, fused=fused)
    ema = EMA(model, 0.9)
    step = TrainStep(model, FlowObjective(), LayerSync([(2, 4)], weight), opt, ema, cfg_dropout=0.0,
                     generator=torch.Generator().manual_seed(7), skip_nonfinite=skip)
    return model, opt, ema, step


def batch(nan=False):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 8, 8, generator=g)
    if nan:
        x[0, 0, 0, 0] = float("nan")
    return x, torch.randint(0, 10, (4,), generator=g)


def test_step_flags_nonfinite_terms_on_the_device():
    """Which term went bad and at which step since the last read; reading zeroes the flags."""
    _, _, _, step = tiny_step()
    step(*batch())
    step.layersync.weight = float("nan")  # what --layersync-weight nan did (now refused up front)
    step(*batch())
    h = step.read_health().tolist()
    assert h[SEEN] == 2 and h[FIRST] == 2  # the second of the two steps since the last read
    assert h[SYNC] == 1 and h[GRADS] == 1 and h[FLOW] == 0  # LayerSync and the gradients; the flow loss stayed finite
    assert h[SKIPPED] == 0  # stop mode skips nothing
    assert step.read_health().tolist() == [0.0] * 6  # reading zeroes the flags
    step(*batch())  # stop mode applied the NaN update: now the flow loss is NaN too
    h = step.read_health().tolist()
    assert h[SEEN] == 1 and h[FIRST] == 1 and h[FLOW] == 1


@pytest.mark.parametrize("fused", [False, True], ids=["snapshot", "fused-found_inf"])
def test_skipped_step_leaves_weights_adamw_state_and_ema_untouched(fused):
    model, opt, ema, step = tiny_step(skip=True, fused=fused)
    step(*batch())
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    moments = {i: {k: v.clone() for k, v in opt.state[p].items()} for i, p in enumerate(model.parameters())}
    averaged = {k: v.clone() for k, v in ema.model.named_parameters()}

    out = step(*batch(nan=True))
    assert not torch.isfinite(out["loss"])
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k
    for i, p in enumerate(model.parameters()):
        for key, value in opt.state[p].items():  # exp_avg, exp_avg_sq and the step count
            assert torch.equal(value, moments[i][key]), (i, key)
    for k, v in ema.model.named_parameters():
        assert torch.equal(v, averaged[k]), k
    assert step.read_health()[SKIPPED] == 1

    step(*batch())  # a good step after it is applied as usual
    assert float(opt.state[next(model.parameters())]["step"]) == 2
    assert any(not torch.equal(v, params[k]) for k, v in model.named_parameters())


def test_skipping_the_very_first_step_leaves_fresh_adamw_state():
    model, opt, _, step = tiny_step(skip=True)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    step(*batch(nan=True))
    assert all(torch.equal(v, params[k]) for k, v in model.named_parameters())
    for p in model.parameters():
        state = opt.state[p]
        assert float(state["step"]) == 0 and not state["exp_avg"].any() and not state["exp_avg_sq"].any()


@pytest.mark.gpu
def test_captured_step_flags_and_skips_on_replay():
    """Graph mode: the flags and the skip are part of the captured graph (fused AdamW's found_inf)."""
    torch.manual_seed(0)
    model = build_sit((1, 8, 8), 10, "T/2").cuda()
    opt = build_optimizer(model.parameters(), OPTIM, "cuda", capturable=True)
    ema = EMA(model, 0.9)
    step = TrainStep(model, FlowObjective(), LayerSync([(2, 4)], 0.3), opt, ema,
                     generator=torch.Generator("cuda").manual_seed(7), skip_nonfinite=True)
    run = CapturedStep(step, warmup=1)
    x, y = (t.cuda() for t in batch())
    run(x, y)  # eager warm-up
    run(x, y)  # capture and replay
    step.read_health()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    averaged = {k: v.clone() for k, v in ema.model.named_parameters()}
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    run(bad, y)  # a replay
    h = step.read_health().tolist()
    assert h[SKIPPED] == 1 and h[GRADS] == 1 and h[FIRST] == 1
    assert all(torch.equal(v, params[k]) for k, v in model.named_parameters())
    assert all(torch.equal(v, averaged[k]) for k, v in ema.model.named_parameters())
    run(x, y)
    assert step.read_health()[SKIPPED] == 0
    assert any(not torch.equal(v, params[k]) for k, v in model.named_parameters())


# ---- the CLI: stop with exit 3, skip, the weight, sampling -----------------------------------

@pytest.mark.slow
def test_diverging_run_stops_with_exit_3_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        train.main(tiny_args(out, 6, "--set", "optim.lr=1e6", "--set", "train.ckpt_every=1"))
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 3, err
    line = err[-1]
    assert line.startswith("layersync-train: error: non-finite") and "at step" in line, line
    stopped = int(line.split("at step ")[1].split()[0].rstrip(":"))
    assert stopped < 6
    saved = checkpoint.list_checkpoints(out / "checkpoints")
    state = checkpoint.load(saved[-1])
    assert state["step"] < stopped  # the last good one stays the resume point
    assert all_finite(state["model"]) and all_finite(state["ema"])
    assert [m["step"] for m in strict_metrics(out)] == list(range(1, stopped))


@pytest.mark.slow
def test_skip_mode_trains_on_and_logs_skipped_steps_as_valid_json(tmp_path):
    out = tmp_path / "run"
    assert train.main(tiny_args(out, 5, "--set", "optim.lr=1e6", "--set", "train.on_nonfinite=skip")) == 0
    metrics = strict_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    assert sum(m["skipped_steps"] for m in metrics) >= 1
    bad = [m for m in metrics if m["skipped_steps"]]
    assert all("gradients" in m["nonfinite"] for m in bad)
    assert any(m["loss"] is None for m in bad)  # non-finite numbers are written as null
    for path in checkpoint.list_checkpoints(out / "checkpoints"):
        state = checkpoint.load(path)
        assert all_finite(state["model"]) and all_finite(state["ema"]), path


def test_bad_on_nonfinite_value(tmp_path, capsys):
    line = error_line(train.main, tiny_args(tmp_path, 1, "--set", "train.on_nonfinite=ignore"), capsys)
    assert "train.on_nonfinite" in line and "ignore" in line


@pytest.mark.parametrize("weight", ["nan", "inf", "-0.5"])
def test_layersync_weight_must_be_finite_and_not_negative(tmp_path, capsys, weight):
    line = error_line(train.main, tiny_args(tmp_path, 1, "--layersync-weight", weight), capsys)
    assert "layersync.weight" in line and weight in line


def test_sample_refuses_non_finite_output(tiny_run, tmp_path, capsys):
    out = shutil.copytree(tiny_run, tmp_path / "run")
    path = checkpoint.latest(out / "checkpoints")
    state = checkpoint.load(path)
    for key in ("model", "ema"):
        state[key] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                      for k, v in state[key].items()}
    torch.save(state, path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        sample.main(["--ckpt", str(out), "--out", str(tmp_path / "grid"), "--num", "2", "--set", "sample.steps=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 3 and "NaN" in err[-1], err
    assert not (tmp_path / "grid.npz").exists()


# ---- exit codes and signals ------------------------------------------------------------------

@pytest.mark.parametrize("exc, code", [
    (Interrupted("stopped", signal.SIGTERM), 143),
    (Interrupted("stopped", signal.SIGINT), 130),
    (KeyboardInterrupt(), 130),
    (NonFiniteError("non-finite gradients at step 3"), 3),
])
def test_exit_codes(exc, code, capsys):
    @entry_point("layersync-x")
    def main(argv=None):
        raise exc

    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == code
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_lines(path, n, procs, limit=240):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
        time.sleep(0.2)
    raise AssertionError(f"no {n} lines in {path} after {limit}s")


def finish(procs, limit=240):
    results = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a rank hung after the signal") from None
        results.append((p.returncode, err))
    return results


def launch(out, rank=0, world=1, port=0, steps=400):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if world > 1:
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    args = tiny_args(out, steps, "--set", "train.ckpt_every=100000", "--set", "train.sample_every=100000")
    return subprocess.Popen([sys.executable, "-m", "layersync.cli.train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigterm_exits_143_with_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = launch(out)
    wait_for_lines(out / "metrics.jsonl", 2, [proc])
    proc.send_signal(signal.SIGTERM)
    [(code, err)] = finish([proc])
    assert code == 143, err[-2000:]
    assert "SIGTERM" in err and "checkpoint saved" in err
    assert checkpoint.latest(out / "checkpoints") is not None


@pytest.mark.distributed
def test_sigterm_to_one_ddp_rank_stops_all_ranks_together(tmp_path):
    """Two gloo ranks, SIGTERM to rank 1 only: both stop at the same step, rank 0 saves, both exit 143."""
    out, port = tmp_path / "run", free_port()
    procs = [launch(out, rank, 2, port) for rank in range(2)]
    try:
        wait_for_lines(out / "metrics.jsonl", 2, procs)
        procs[1].send_signal(signal.SIGTERM)
        results = finish(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (code, err) in enumerate(results):
        assert code == 143, (rank, err[-2000:])
        assert "SIGTERM" in err, (rank, err[-2000:])
    stopped = [int(err.split("stopped at step ")[1].split()[0]) for _, err in results]
    assert stopped[0] == stopped[1]
    state = checkpoint.load(checkpoint.latest(out / "checkpoints"))
    assert state["step"] == stopped[0]
