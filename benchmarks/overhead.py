"""LayerSync overhead: median step time with the term on vs off, measured in one run.

A full training step (noise/t sampling, forward with block capture, flow
loss [+ LayerSync], backward, AdamW, EMA) of a small SiT, in the device's
default step mode (eager on CPU, CUDA graph on GPU). Repetitions alternate
off, on, off, on, ... on one shared model and optimizer (two separately
built copies differ by up to 5% on a CPU from memory layout alone).
Target: on/off <= 1.02.

    python -m benchmarks overhead                         # tiny SiT on CPU
    python -m benchmarks overhead --device cuda --size B/2 --input 4x32x32 --batch 64
"""

from __future__ import annotations

import argparse
import copy

import torch

from benchmarks.common import median, publish, resolve_device, table, target, timed
from layersync import FlowObjective, LayerSync
from layersync.config import DEFAULTS
from layersync.train.ema import EMA
from layersync.train.modes import make_step, resolve_mode
from layersync.train.optim import build_optimizer
from layersync.train.step import TrainStep
from layersync_image.sit import build_sit, parse_size

TARGET = 1.02


def build_steps(base, variants: dict, device, mode, precision) -> dict:
    """One step function per LayerSync setting, all sharing ONE model, optimizer (the
    training run's: AdamW with a tensor lr, default settings), EMA and generator, so
    that no variant gains from its own memory layout."""
    model = copy.deepcopy(base).to(device).train()
    opt = build_optimizer(model.parameters(), DEFAULTS["optim"], device, capturable=mode == "graph")
    ema, generator = EMA(model, 0.9999), torch.Generator(device).manual_seed(1)
    return {
        name: make_step(TrainStep(model, FlowObjective(), layersync, opt, ema, cfg_dropout=0.1,
                                  autocast_dtype=precision, generator=generator), mode)
        for name, layersync in variants.items()
    }


def build_step(base, layersync, device, mode, precision):
    return build_steps(base, {"step": layersync}, device, mode, precision)["step"]


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.lower().split("x"))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks overhead", description=__doc__.splitlines()[0])
    p.add_argument("--size", default="T/4")
    p.add_argument("--input", default="1x16x16", help="CxHxW of the model input")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps per repetition")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each repetition")
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--device", default="auto")
    p.add_argument("--pairs", default=None, help="k:k'[,k:k'...]; default depth//3:2*depth//3")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    mode = resolve_mode("auto", torch.device(device))
    precision = torch.bfloat16 if device == "cuda" else None
    depth = parse_size(args.size)[0]
    pairs = args.pairs or f"{depth // 3}:{2 * depth // 3}"
    shape = parse_shape(args.input)
    torch.manual_seed(0)
    base = build_sit(shape, 10, args.size)
    steps = build_steps(base, {"off": None, "on": LayerSync.parse(pairs)}, device, mode, precision)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(args.batch, *shape, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    times = {"off": [], "on": []}
    for _ in range(args.repeats):
        for name in ("off", "on"):  # interleaved against drift
            timed(lambda: steps[name](x, y), args.warmup, device)
            times[name] += timed(lambda: steps[name](x, y), args.steps, device)
    ratio = median(times["on"]) / median(times["off"])
    row = {"model": f"SiT-{args.size}", "input": args.input, "batch": args.batch, "pairs": pairs, "mode": mode,
           "off_ms": 1e3 * median(times["off"]), "on_ms": 1e3 * median(times["on"]), "ratio": ratio,
           "verdict": "PASS" if ratio <= TARGET else "FAIL"}
    markdown = table([row], list(row)) + f"\n\ntarget: on/off <= {TARGET}"
    verdict = target("overhead", f"LayerSync on/off step time, SiT-{args.size} batch {args.batch} {mode} (<= {TARGET})",
                     ratio, ratio <= TARGET)
    print(markdown)
    report, path = publish("overhead", device, [row], markdown, config=vars(args), targets=[verdict])
    print(f"overhead ratio (on/off): {ratio:.3f}  (target <= {TARGET})  {row['verdict']}   report: {path}")
    return report


if __name__ == "__main__":
    main()
