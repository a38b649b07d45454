"""Shared test helpers: a tiny image run through the real CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.common import TINY_RUN, set_args

TINY = set_args({**TINY_RUN, "train.ckpt_every": 3})


def tiny_args(out, steps, *extra):
    return ["--plugin", "image", "--out", str(out), "--steps", str(steps), *TINY, *extra]


def png_tree(root, n=2, size=8, ext="png"):
    """An image folder of two classes, a and b, with n random RGB images each."""
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.{ext}")
    return root


def read_metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def tiny_vae(size: int, std_bias: float | None = None):
    """A randomly initialised diffusers AutoencoderKL that halves the image side."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=size,
    )
    if std_bias is not None:  # raise the posterior's log-variance bias
        with torch.no_grad():
            vae.quant_conv.bias[4:] = std_bias
    return vae


def error_line(main, argv, capsys) -> str:
    """Run a CLI's main expecting bad input: exit code 2 and one line on stderr, returned."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1, err
    return err[0]
