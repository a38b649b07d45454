"""Wall-clock overhead of the LayerSync regularizer on one full training step.

Measures the median time of a complete ``TrainStep`` (noise/t sampling,
forward with block capture, flow loss [+ LayerSync], backward, AdamW, EMA)
for a small SiT with LayerSync off (``layersync=None``) and on (one pair,
by default ``depth//3 : 2*depth//3``), in one run, and prints the ratio
on/off. Target: ratio <= 1.02 (LayerSync is a cosine between two block
outputs the forward pass already computes, so it should cost ~nothing).

Repetitions alternate off, on, off, on, ... to cancel thermal/load drift; both
variants start from the same initial weights. The exit code is always 0: this
is a report, not a test.

    python benchmarks/overhead.py                  # CPU (+ CUDA if available)
    python benchmarks/overhead.py --device cuda --size S/2 --image-size 32 --out report.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import time

import torch

from layersync import FlowObjective, LayerSync
from layersync.train.ema import EMA
from layersync.train.step import TrainStep
from layersync_image.sit import build_sit, parse_size

TARGET = 1.02


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def make_step(base, layersync, device, seed):
    model = copy.deepcopy(base).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    gen = torch.Generator(device).manual_seed(seed)
    return TrainStep(model, FlowObjective(), layersync, opt, EMA(model, 0.9999), cfg_dropout=0.1, generator=gen)


def timed(step, x, y, n, device) -> list[float]:
    times = []
    for _ in range(n):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(x, y)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def bench(args, device, pairs) -> dict:
    torch.manual_seed(0)
    shape = (args.channels, args.image_size, args.image_size)
    base = build_sit(shape, num_classes=10, size=args.size)
    steps = {"off": make_step(base, None, device, 1), "on": make_step(base, LayerSync.parse(pairs), device, 1)}
    g = torch.Generator().manual_seed(2)
    x = torch.randn(args.batch, *shape, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    times = {"off": [], "on": []}
    for _ in range(args.repeats):
        for mode in ("off", "on"):  # interleaved: off, on, off, on, ...
            timed(steps[mode], x, y, args.warmup, device)
            times[mode] += timed(steps[mode], x, y, args.steps, device)
    med = {m: statistics.median(v) for m, v in times.items()}
    return {"device": device, "device_name": device_name(device), "median_s": med, "ratio": med["on"] / med["off"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="T/4")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed steps per repetition")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each repetition")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--pairs", default=None, help="k:k'[,k:k'...]; default depth//3:2*depth//3")
    p.add_argument("--out", default=None, help="write a JSON report here")
    args = p.parse_args()

    depth = parse_size(args.size)[0]
    pairs = args.pairs or f"{depth // 3}:{2 * depth // 3}"
    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"], "cuda": ["cuda"]}
    print(f"SiT-{args.size} {args.channels}x{args.image_size}x{args.image_size} batch {args.batch}, "
          f"LayerSync pairs {pairs}, {args.repeats} x {args.steps} timed steps per variant, torch {torch.__version__}")
    print(f"{'device':<8}{'off ms':>10}{'on ms':>10}{'on/off':>9}")
    results = []
    for device in devices[args.device]:
        r = bench(args, device, pairs)
        results.append(r)
        m = r["median_s"]
        print(f"{device:<8}{1e3 * m['off']:>10.2f}{1e3 * m['on']:>10.2f}{r['ratio']:>9.3f}   ({r['device_name']})")
    for r in results:
        verdict = "PASS" if r["ratio"] <= TARGET else "FAIL"
        print(f"[{r['device']}] overhead ratio (on/off): {r['ratio']:.3f}  (target <= {TARGET})  {verdict}")
    if args.out:
        report = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "config": {**vars(args), "pairs": pairs}, "target": TARGET, "results": results,
        }
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
