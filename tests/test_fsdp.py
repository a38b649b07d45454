"""FSDP2 (train.parallel=fsdp) under two gloo processes matches DDP; its DCP checkpoints resume at another
number of processes; a process that stops answering fails the others within LAYERSYNC_DIST_TIMEOUT."""

import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from helpers import read_metrics, tiny_args
from layersync import checkpoint

pytestmark = pytest.mark.distributed

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
FSDP = ("--set", "train.parallel=fsdp")
KEYS = ("loss", "flow_loss", "layersync_loss")


def run(args, procs=1, env=ENV, timeout=120):
    launch = ["torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), "-m"] if procs > 1 else []
    return subprocess.run([sys.executable, "-m", *launch, "layersync.cli.train", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def check_ok(result):
    assert result.returncode == 0, result.stderr[-3000:]


def close(a, b, tol=1e-5):
    for x, y in zip(a, b):
        for key in KEYS:
            assert abs(x[key] - y[key]) < tol, (key, x, y)


def weights(out):
    return checkpoint.load(checkpoint.latest(out / "checkpoints"))


def test_fsdp_matches_ddp_and_resumes_at_another_world_size(tmp_path):
    ddp, fsdp, resumed = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "resumed"
    check_ok(run(tiny_args(ddp, 4), procs=2))
    check_ok(run(tiny_args(fsdp, 4, *FSDP), procs=2))
    close(read_metrics(ddp), read_metrics(fsdp))
    assert [m["step"] for m in read_metrics(fsdp)] == [1, 2, 3, 4]
    assert [p.name for p in checkpoint.list_checkpoints(fsdp / "checkpoints")] == ["step_0000003", "step_0000004"]
    a, b = weights(ddp), weights(fsdp)
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.allclose(a[key][name], b[key][name], atol=1e-5), (key, name)

    # saved by 2 processes at step 3, resumed by 1 process
    shutil.copytree(fsdp, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000004")
    result = run(tiny_args(resumed, 4, *FSDP))
    check_ok(result)
    assert "from step 3 (step_0000003)" in result.stderr
    close(read_metrics(fsdp), read_metrics(resumed))
    c = weights(resumed)
    for key in ("model", "ema"):
        for name in b[key]:
            assert torch.allclose(b[key][name], c[key][name], atol=1e-5), (key, name)


STALL = """
import os, time
from layersync import distributed
env = distributed.setup("cpu")
if env.rank == 1:
    time.sleep(60)  # alive but never joins
distributed.agree_stop(0, env)
"""


def test_a_silent_process_fails_the_others_within_the_timeout():
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-c", STALL], env={**ENV, "LAYERSYNC_DIST_TIMEOUT": "2"}, capture_output=True, text=True,
                            timeout=50)
    assert result.returncode != 0
    assert time.perf_counter() - started < 40
    assert "timed out" in result.stderr.lower() or "timeout" in result.stderr.lower(), result.stderr[-2000:]
