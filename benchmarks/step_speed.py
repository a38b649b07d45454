"""Training-step speed: eager vs torch.compile vs CUDA graph, LayerSync on and off.

For each model/batch/input it reports the median step time, peak GPU
memory, images/s and model-FLOPs utilisation (MFU: FLOPs of forward and
backward, counted by torch's FlopCounterMode, over the step time and the
card's measured dense matmul peak in the same precision). On CPU it also
times a plain single-file implementation of the same model and step
(benchmarks/plain_sit.py) as the no-regression baseline (target: ours
within 5%). On OOM the batch is halved until it fits.

    python -m benchmarks step_speed                                   # CPU: tiny SiT
    python -m benchmarks step_speed --configs B/2:64 XL/2:256 --modes eager compile graph
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import median, publish, resolve_device, table, timed
from benchmarks.overhead import build_step, parse_shape
from benchmarks.plain_sit import PlainSiT, PlainStep
from layersync import FlowObjective, LayerSync
from layersync.train.step import TrainStep
from layersync_image.sit import build_sit, parse_size

PLAIN_TARGET = 1.05


def parse_config(spec: str) -> tuple[str, int, tuple[int, ...], str]:
    """'SIZE:BATCH[:CxHxW]' -> (size, batch, input shape, the default LayerSync pairs for that depth)."""
    size, batch, *rest = spec.split(":")
    depth = parse_size(size)[0]
    return size, int(batch), parse_shape(rest[0]) if rest else (4, 32, 32), f"{depth // 3}:{2 * depth // 3}"


def matmul_peak(device: str, dtype: torch.dtype) -> float:
    """Measured dense matmul FLOP/s of this device in this dtype."""
    n = 8192 if device == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    timed(lambda: a @ b, 3, device)  # warm-up
    return 2 * n**3 / median(timed(lambda: a @ b, 10, device))


def step_flops(model, shape, batch, layersync, device, precision) -> int:
    """FLOPs of one forward + backward (the optimizer and EMA are not model FLOPs)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    step = TrainStep(model, FlowObjective(), layersync, opt, autocast_dtype=precision,
                     generator=torch.Generator(device).manual_seed(0))
    x = torch.randn(batch, *shape, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        step.forward_losses(x, *step.draw(x), y)[0].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure(size, batch, shape, mode, pairs, device, precision, steps, warmup):
    torch.manual_seed(0)
    base = build_sit(shape, 1000, size)
    layersync = LayerSync.parse(pairs) if pairs else None
    run = build_step(base, layersync, device, mode, precision)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timed(lambda: run(x, y), warmup, device)
    seconds = median(timed(lambda: run(x, y), steps, device))
    memory = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return seconds, memory


def plain_vs_ours(size, batch, shape, pairs, steps, repeats) -> dict:
    """Interleaved CPU timing of our eager step and the plain single file."""
    depth, hidden, heads, patch = parse_size(size)
    torch.manual_seed(0)
    base = build_sit(shape, 1000, size)
    ours = build_step(base, LayerSync.parse(pairs), "cpu", "eager", None)
    plain_model = PlainSiT(shape[1], patch, shape[0], hidden, depth, heads, 1000)
    plain_model.load_state_dict(base.state_dict())
    k, kt = LayerSync.parse(pairs).pairs[0]
    plain = PlainStep(plain_model, 1e-4, 0.0, [(k, kt)], 0.2, 0.1, 0.9999, torch.Generator().manual_seed(1))
    x, y = torch.randn(batch, *shape), torch.randint(0, 1000, (batch,))
    times = {"ours": [], "plain": []}
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("plain", plain)):
            timed(lambda: fn(x, y), 3, "cpu")
            times[name] += timed(lambda: fn(x, y), steps, "cpu")
    return {name: median(t) for name, t in times.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks step_speed", description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", help="SIZE:BATCH[:CxHxW]; default B/2:64 XL/2:256 on GPU, T/4:64:1x16x16 on CPU")
    p.add_argument("--modes", nargs="+", help="eager compile graph; default all on GPU, eager on CPU")
    p.add_argument("--layersync", nargs="+", default=["on", "off"], choices=["on", "off"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5, help="interleaved repetitions of the CPU plain-baseline check")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    cuda = device == "cuda"
    configs = args.configs or (["B/2:64", "XL/2:256"] if cuda else ["T/4:64:1x16x16"])
    modes = args.modes or (["eager", "compile", "graph"] if cuda else ["eager"])
    precision = torch.bfloat16 if cuda else None
    peak = matmul_peak(device, precision or torch.float32)
    rows = []
    for spec in configs:
        size, batch, shape, pairs = parse_config(spec)
        for mode in modes:
            for ls in args.layersync:
                b = batch
                while True:
                    try:
                        seconds, memory = measure(size, b, shape, mode, pairs if ls == "on" else None,
                                                  device, precision, args.steps, args.warmup)
                        break
                    except torch.cuda.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        if b == 1:
                            raise
                        b //= 2
                flops = step_flops(build_sit(shape, 1000, size).to(device), shape, b,
                                   LayerSync.parse(pairs) if ls == "on" else None, device, precision)
                rows.append({"model": f"SiT-{size}", "input": "x".join(map(str, shape)), "batch": b, "mode": mode,
                             "layersync": ls, "step_ms": 1e3 * seconds, "images_per_s": b / seconds,
                             "peak_mem_gib": memory, "tflops": flops / seconds / 1e12, "mfu": flops / seconds / peak})
                print(table(rows[-1:], list(rows[-1])).splitlines()[-1], flush=True)
    markdown = table(rows, list(rows[0]))
    markdown += f"\n\nmeasured matmul peak: {peak / 1e12:.1f} TFLOP/s ({'bf16' if cuda else 'fp32'})"
    for spec in configs:
        size = parse_config(spec)[0]
        by_mode = {(r["mode"], r["layersync"]): r["step_ms"] for r in rows if r["model"] == f"SiT-{size}"}
        if ("graph", "on") in by_mode and ("eager", "on") in by_mode:
            markdown += f"\nSiT-{size}: graph speed-up over eager (LayerSync on): {by_mode['eager', 'on'] / by_mode['graph', 'on']:.2f}x"
        if ("eager", "on") in by_mode and ("eager", "off") in by_mode:
            markdown += (f"\nSiT-{size}: LayerSync on/off (eager, separately built models; the overhead suite "
                         f"pairs them on one model): {by_mode['eager', 'on'] / by_mode['eager', 'off']:.3f}")
    if not cuda:
        size, batch, shape, pairs = parse_config(configs[0])
        plain = plain_vs_ours(size, batch, shape, pairs, args.steps, args.repeats)
        ratio = plain["ours"] / plain["plain"]
        verdict = "PASS" if ratio <= PLAIN_TARGET else "FAIL"
        markdown += (f"\nSiT-{size} CPU eager: ours {1e3 * plain['ours']:.1f} ms vs plain single file "
                     f"{1e3 * plain['plain']:.1f} ms, ratio {ratio:.3f} (target <= {PLAIN_TARGET}) {verdict}")
    report, path = publish("step_speed", device, rows, markdown, config=vars(args), matmul_peak_flops=peak)
    print(f"report: {path}")
    return report


if __name__ == "__main__":
    main()
