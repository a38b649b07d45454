"""Shared test helpers: a tiny image run through the real CLI."""

import json
from pathlib import Path

TINY = [
    "--set", "data.image_size=8",
    "--set", "model.size=T/4",
    "--set", "train.batch_size=16",
    "--set", "train.log_every=1",
    "--set", "train.ckpt_every=3",
    "--set", "train.sample_every=1000",
    "--set", "sample.num=4",
    "--set", "sample.steps=2",
]


def tiny_args(out, steps, *extra):
    return ["--plugin", "image", "--out", str(out), "--steps", str(steps), *TINY, *extra]


def read_metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
