"""LayerSync overhead: median step time with the term on vs off, measured in one run.

A full training step (noise/t sampling, forward with block capture, flow
loss [+ LayerSync], backward, AdamW, EMA) of a small SiT (an input CxHxW) or
SiT-1D (an input CxT: channels and frames, the audio backbone) or SiT-3D with
factorised attention (CxTxHxW, the video backbone; at CLEVRER's latent size
``--size B/2 --input 4x16x16x16`` on a GPU), in the device's
default step mode (resolve_mode("auto"): eager on CPU, graph, compiled and
captured, on one GPU). Repetitions alternate off, on, on, off, ... on one
shared model and optimizer (two separately built copies differ by up to 5%
on a CPU from memory layout alone). Target: on/off <= 1.01 on a GPU, <= 1.02
on a CPU (noisier).

    python -m benchmarks overhead                         # the image and audio defaults' models on CPU
    python -m benchmarks overhead --device cuda --size B/2 --input 4x32x32 --batch 64
    python -m benchmarks overhead --device cuda --size XL/2 --input 4x32x32 --batch 64
"""

from __future__ import annotations

import argparse
import copy

import torch

from benchmarks.common import median, publish, resolve_device, table, target, timed
from layersync import FlowObjective, LayerSync
from layersync.config import defaults
from layersync.nn import build_sit1d, build_sit3d, parse_size_1d, parse_size_3d
from layersync.train.ema import EMA
from layersync.train.modes import CAPTURED, make_step, resolve_mode
from layersync.train.optim import build_optimizer
from layersync.train.step import TrainStep
from layersync_image.sit import build_sit, parse_size

GPU_TARGET, CPU_TARGET = 1.01, 1.02  # on/off step time: a CPU's timings are noisier
CAPTURE_WARMUP = 3  # eager steps of a captured step before the call that captures it
# ImageNet's, as in step_speed and graph_check: the same model at the same batch is the same compiled graph,
# which torch.compile's on-disk cache then hands to the next suite instead of compiling it again
NUM_CLASSES = 1000
DEFAULT_CASES = (("T/4", "1x16x16"), ("T/2", "64x60"))  # the image and audio default runs' models and inputs


def build_steps(base, variants: dict, device, mode, precision, grad_accum=1) -> dict:
    """One step function per LayerSync setting, all sharing ONE model, optimizer (the
    training run's: AdamW with a tensor lr, default settings), EMA and generator, so
    that no variant gains from its own memory layout."""
    model = copy.deepcopy(base).to(device).train()
    opt = build_optimizer(model.parameters(), defaults()["optim"], device, capturable=mode in CAPTURED)
    ema, generator = EMA(model, 0.9999), torch.Generator(device).manual_seed(1)
    return {
        name: make_step(TrainStep(model, FlowObjective(), layersync, opt, ema, cfg_dropout=0.1,
                                  autocast_dtype=precision, generator=generator, grad_accum=grad_accum),
                        mode, CAPTURE_WARMUP)
        for name, layersync in variants.items()
    }


def build_step(base, layersync, device, mode, precision, grad_accum=1):
    return build_steps(base, {"step": layersync}, device, mode, precision, grad_accum)["step"]


def ratio_limit(device: str) -> float:
    return GPU_TARGET if device == "cuda" else CPU_TARGET


def calls_before_replay(mode: str) -> int:
    """Calls of a new step in ``mode`` that do not time it: a captured step's warm-up and capture."""
    return CAPTURE_WARMUP + 1 if mode in CAPTURED else 0


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.lower().split("x"))


def backbone(size: str, shape: tuple[int, ...]):
    """(model, name, tokens per sample): SiT for CxHxW inputs, SiT-1D for CxT, SiT-3D (factorised) for CxTxHxW."""
    if len(shape) == 4:
        patch = parse_size_3d(size)[3]
        tokens = shape[1] * (shape[2] // patch) * (shape[3] // patch)
        return build_sit3d(shape, NUM_CLASSES, size, attention="factorised"), f"SiT-3D-{size}", tokens
    if len(shape) == 2:
        patch = parse_size_1d(size)[3]
        return build_sit1d(shape, NUM_CLASSES, size), f"SiT-1D-{size}", shape[1] // patch
    patch = parse_size(size)[3]
    return build_sit(shape, NUM_CLASSES, size), f"SiT-{size}", (shape[1] // patch) * (shape[2] // patch)


def measure(size: str, shape_text: str, args, device: str, mode: str, precision) -> dict:
    shape = parse_shape(shape_text)
    torch.manual_seed(0)
    base, name, tokens = backbone(size, shape)
    pairs = args.pairs or f"{base.depth // 3}:{2 * base.depth // 3}"
    steps = build_steps(base, {"off": None, "on": LayerSync.parse(pairs)}, device, mode, precision)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(args.batch, *shape, generator=g).to(device)
    y = torch.randint(0, NUM_CLASSES, (args.batch,), generator=g).to(device)
    for variant in steps:  # compile, warm up and capture each before any timing
        timed(lambda: steps[variant](x, y), calls_before_replay(mode) + 1, device)
    times = {"off": [], "on": []}
    for repeat in range(args.repeats):
        for variant in ("off", "on") if repeat % 2 == 0 else ("on", "off"):  # interleaved, ABBA, against drift
            timed(lambda: steps[variant](x, y), args.warmup, device)
            times[variant] += timed(lambda: steps[variant](x, y), args.steps, device)
    ratio = median(times["on"]) / median(times["off"])
    return {"model": name, "input": shape_text, "batch": args.batch, "pairs": pairs, "mode": mode,
            "off_ms": 1e3 * median(times["off"]), "on_ms": 1e3 * median(times["on"]),
            "tokens_per_s": args.batch * tokens / median(times["on"]), "ratio": ratio,
            "verdict": "PASS" if ratio <= ratio_limit(device) else "FAIL"}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks overhead", description=__doc__.splitlines()[0])
    p.add_argument("--size", help="one model size (default: the cases below, or T/4)")
    p.add_argument("--input", help="CxHxW (SiT), CxT (SiT-1D) or CxTxHxW (SiT-3D) of the model input; with --size, "
                   "the one case "
                   f"measured (default: {', '.join(f'{s} at {i}' for s, i in DEFAULT_CASES)})")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps per repetition")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each repetition")
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--device", default="auto")
    p.add_argument("--pairs", default=None, help="k:k'[,k:k'...]; default depth//3:2*depth//3")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    mode, why = resolve_mode("auto", torch.device(device))
    limit = ratio_limit(device)
    precision = torch.bfloat16 if device == "cuda" else None
    one = args.size or args.input
    cases = [(args.size or "T/4", args.input or "1x16x16")] if one else DEFAULT_CASES
    rows = [measure(size, shape, args, device, mode, precision) for size, shape in cases]
    markdown = table(rows, list(rows[0])) + f"\n\nmode {mode} ({why}); target: on/off <= {limit}"
    verdicts = [target(f"overhead_{row['model']}",
                       f"LayerSync on/off step time, {row['model']} batch {args.batch} {mode} (<= {limit})",
                       row["ratio"], row["ratio"] <= limit) for row in rows]
    print(markdown)
    report, path = publish("overhead", device, rows, markdown, config=vars(args), targets=verdicts)
    for row in rows:
        print(f"{row['model']}: overhead ratio (on/off) {row['ratio']:.3f}  (target <= {limit})  {row['verdict']}")
    print(f"report: {path}")
    return report


if __name__ == "__main__":
    main()
