"""Training-step speed: eager vs torch.compile vs CUDA graph, LayerSync on and off.

For each model/batch/input it reports the median step time, peak GPU
memory, images/s and model-FLOPs utilisation: the FLOPs of forward and
backward (torch's FlopCounterMode at a small batch, scaled to the measured
one) over the step time, against the card's datasheet peak (``mfu``; NaN
for a card not in benchmarks/common.py) and against its measured dense
matmul peak in the same precision (``mfu_measured_peak``). On CPU it also
times a plain single-file implementation of the same model and step
(benchmarks/plain_sit.py) as the no-regression baseline (target: ours
within 5%). On CUDA OOM the batch is halved until it fits (graph mode's
eager warm-up steps meet the OOM before capture). The report is rewritten
after every row, so a run cut short keeps its finished rows.

    python -m benchmarks step_speed                                   # CPU: tiny SiT
    python -m benchmarks step_speed --configs B/2:64 XL/2:256 --modes eager compile graph
"""

from __future__ import annotations

import argparse
import gc
import math

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from benchmarks.common import datasheet_peak, device_name, median, publish, resolve_device, table, target, timed
from benchmarks.overhead import build_step, parse_shape
from benchmarks.plain_sit import PlainSiT, PlainStep
from layersync import FlowObjective, LayerSync
from layersync.train.step import TrainStep
from layersync_image.sit import build_sit, parse_size

PLAIN_TARGET = 1.05
GRAPH_SPEEDUP_TARGET = 1.3  # eager / graph step time, LayerSync on
MFU_TARGET = 0.40  # of the datasheet peak
MFU_TARGET_MODELS = ("SiT-XL/2",)
COUNT_BATCH = 2  # FLOPs are counted at this batch and scaled: every counted op is linear in the batch


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# FlopCounterMode has formulas for the CUDA attention kernels but not for the CPU one.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops,
}


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
    """FLOPs of one forward + backward at ``batch`` (the optimizer and EMA are not model FLOPs)."""
    n = min(batch, COUNT_BATCH)
    step = TrainStep(model, FlowObjective(), layersync, torch.optim.SGD(model.parameters(), lr=0.0),
                     autocast_dtype=precision, generator=torch.Generator(device).manual_seed(0))
    x = torch.randn(n, *shape, device=device)
    y = torch.zeros(n, dtype=torch.long, device=device)
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        step.forward_losses(x, *step.draw(x), y)[0].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() // n * batch


def measure(base, batch, shape, mode, pairs, device, precision, steps, warmup):
    """-> (median step seconds, peak GPU memory GiB, FLOPs of the step) of a fresh copy of ``base``."""
    layersync = LayerSync.parse(pairs) if pairs else None
    run = build_step(base, layersync, device, mode, precision)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timed(lambda: run(x, y), warmup, device)
    seconds = median(timed(lambda: run(x, y), steps, device))
    memory = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    model = getattr(run, "step", run).model
    return seconds, memory, step_flops(model, shape, batch, layersync, device, precision)


def measure_fitting(base, batch, *args) -> tuple[int, tuple]:
    """measure() at ``batch``, halved on CUDA OOM until it fits -> (batch, measure's result).
    Every try starts clean: a fresh dynamo cache (a later configuration must not reuse a
    symbolic-batch or eager-fallback graph) and the memory of the last try handed back."""
    while True:
        torch._dynamo.reset()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        try:
            return batch, measure(base, batch, *args)
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            print(f"out of memory at batch {batch}: halving it", flush=True)
        batch //= 2  # out of the except block: its traceback holds the failed try's tensors


def targets_of(rows: list[dict], card: str) -> list[dict]:
    """The graph speed-up of every model/batch timed eager and graph, and the MFU of the MFU_TARGET_MODELS."""
    found = []
    ms = {(r["model"], r["batch"], r["mode"]): r["step_ms"] for r in rows if r["layersync"] == "on"}
    for (model, batch, mode), graph_ms in ms.items():
        if mode == "graph" and (model, batch, "eager") in ms:
            speedup = ms[model, batch, "eager"] / graph_ms
            found.append(target("graph_speedup", f"{model} batch {batch}: graph vs eager (>= {GRAPH_SPEEDUP_TARGET}x)",
                                speedup, speedup >= GRAPH_SPEEDUP_TARGET))
    for r in rows:
        if r["model"] in MFU_TARGET_MODELS:
            known = not math.isnan(r["mfu"])  # NaN: the card is not in the datasheet table
            what = f"{r['model']} batch {r['batch']} {r['mode']}: MFU of datasheet peak (>= {MFU_TARGET:.0%})"
            found.append(target("mfu", what if known else f"{what}; no datasheet peak for {card}",
                                r["mfu"], r["mfu"] >= MFU_TARGET if known else None))
    return found


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
    dtype_name = "bf16" if cuda else "fp32"
    card = device_name(device)
    peak = matmul_peak(device, precision or torch.float32)
    datasheet = datasheet_peak(card, "bf16" if precision is not None else "tf32")
    notes = [f"measured matmul peak: {peak / 1e12:.1f} TFLOP/s ({dtype_name}), the base of mfu_measured_peak",
             f"datasheet peak of {card}: {datasheet / 1e12:.1f} TFLOP/s dense ({dtype_name}), the base of mfu"
             if not math.isnan(datasheet) else f"no datasheet peak for {card}: mfu is NaN"]
    rows, targets, path = [], [], None

    def report():
        found = targets_of(rows, card) + targets
        verdicts = [f"{t['verdict']}: {t['what']}: {t['value']:.3g}" for t in found]
        markdown = "\n".join([table(rows, list(rows[0])), "", *notes, *verdicts])
        return publish("step_speed", device, rows, markdown, path, config=vars(args), matmul_peak_flops=peak,
                       datasheet_peak_flops=datasheet, targets=found)

    for spec in configs:
        size, batch, shape, pairs = parse_config(spec)
        torch.manual_seed(0)
        base = build_sit(shape, 1000, size)  # on the CPU; every measurement trains its own copy
        for mode in modes:
            for ls in args.layersync:
                b, (seconds, memory, flops) = measure_fitting(base, batch, shape, mode, pairs if ls == "on" else None,
                                                              device, precision, args.steps, args.warmup)
                rows.append({"model": f"SiT-{size}", "input": "x".join(map(str, shape)), "batch": b, "mode": mode,
                             "layersync": ls, "step_ms": 1e3 * seconds, "images_per_s": b / seconds,
                             "peak_mem_gib": memory, "tflops": flops / seconds / 1e12,
                             "mfu": flops / seconds / datasheet, "mfu_measured_peak": flops / seconds / peak})
                print(table(rows[-1:], list(rows[-1])).splitlines()[-1], flush=True)
                _, path = report()
        by_mode = {(r["mode"], r["layersync"]): r["step_ms"] for r in rows if r["model"] == f"SiT-{size}"}
        if ("eager", "on") in by_mode and ("eager", "off") in by_mode:
            notes.append(f"SiT-{size}: LayerSync on/off (eager, separately built models; the overhead suite "
                         f"pairs them on one model): {by_mode['eager', 'on'] / by_mode['eager', 'off']:.3f}")
    if not cuda:
        size, batch, shape, pairs = parse_config(configs[0])
        plain = plain_vs_ours(size, batch, shape, pairs, args.steps, args.repeats)
        ratio = plain["ours"] / plain["plain"]
        targets.append(target("plain_baseline", f"SiT-{size} CPU eager step vs plain single file (<= {PLAIN_TARGET})",
                              ratio, ratio <= PLAIN_TARGET))
        notes.append(f"SiT-{size} CPU eager: ours {1e3 * plain['ours']:.1f} ms vs plain single file "
                     f"{1e3 * plain['plain']:.1f} ms")
    result, path = report()
    print(result["markdown"])
    print(f"report: {path}")
    return result


if __name__ == "__main__":
    main()
