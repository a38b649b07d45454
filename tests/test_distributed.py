"""Two gloo processes under torchrun match one process with the same global batch, and resume."""

import os
import subprocess
import sys

import pytest
import torch

from helpers import read_metrics, tiny_args
from layersync import checkpoint

pytestmark = pytest.mark.distributed


def test_two_gloo_ranks_match_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [sys.executable, "-m"]
    single = subprocess.run([*common, "layersync.cli.train", *tiny_args(tmp_path / "one", 4)],
                            env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    def torchrun(out, steps):
        run = subprocess.run([*common, "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              "-m", "layersync.cli.train", *tiny_args(out, steps)], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]

    torchrun(tmp_path / "two", 4)
    for steps in (2, 4):  # stopped after 2 steps, then resumed under 2 processes again
        torchrun(tmp_path / "resumed", steps)
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [m["step"] for m in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        for key in ("loss", "flow_loss", "layersync_loss"):
            assert abs(a[key] - b[key]) < 1e-5, (key, a, b)
    pa = checkpoint.load(checkpoint.latest(tmp_path / "one" / "checkpoints"))["model"]
    pb = checkpoint.load(checkpoint.latest(tmp_path / "two" / "checkpoints"))["model"]
    pr = checkpoint.load(checkpoint.latest(tmp_path / "resumed" / "checkpoints"))["model"]
    for name in pa:
        assert torch.allclose(pa[name], pb[name], atol=1e-5), name
        assert torch.equal(pb[name], pr[name]), name
    def losses(records):
        return [[m[k] for k in ("step", "loss", "flow_loss", "layersync_loss")] for m in records]

    assert losses(read_metrics(tmp_path / "resumed")) == losses(two)
