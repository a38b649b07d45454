"""Training-step speed: every step mode and the plain single file side by side, in one run.

For each model/batch/input and mode it reports the median step time, peak GPU
memory, images/s and model-FLOPs utilisation: the FLOPs of forward and
backward (torch's FlopCounterMode at a small batch, scaled to the measured
one; recomputed checkpointed blocks not counted) over the step time, against
the card's datasheet peak (``mfu``; NaN for a card not in benchmarks/common.py)
and against its measured dense matmul peak in the same precision
(``mfu_measured_peak``). The modes: ``eager``, ``compile``, ``graph``
(compiled, then captured as one CUDA graph: the default on one GPU),
``graph-eager`` (captured, not compiled) and ``plain``, the reference's math
in a plain single file (benchmarks/plain_sit.py), eager at the same precision:
the no-regression baseline. The captured modes need CUDA; elsewhere they are
skipped with the reason. On CUDA OOM the batch is halved until it fits (the
eager warm-up steps before a capture meet the OOM). ``--grad-accum`` and/or
``--checkpoint-blocks`` add a row per configuration in the first mode at
``--large-batch`` (default: the configuration's batch), set against the
largest batch that fits without them. Each row also times the gradient-finiteness
check every step without clipping runs (``TrainStep.nonfinite_grads()``),
alone, on the gradients the step left. On CPU the eager step is also timed
against the plain file, interleaved (target: within 5%). The report is
rewritten after every row, so a run cut short keeps its finished rows.

    python -m benchmarks step_speed                                   # CPU: tiny SiT
    python -m benchmarks step_speed --configs B/2:64 --modes eager compile graph graph-eager plain
    python -m benchmarks step_speed --configs XL/2:128 --modes graph plain --large-batch 256 --grad-accum 2
"""

from __future__ import annotations

import argparse
import copy
import gc
import math

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from benchmarks.common import datasheet_peak, device_name, median, publish, resolve_device, table, target, timed
from benchmarks.overhead import NUM_CLASSES, build_step, calls_before_replay, parse_shape
from benchmarks.plain_sit import PlainSiT, PlainStep
from layersync import FlowObjective, LayerSync
from layersync.config import defaults
from layersync.errors import ConfigError
from layersync.train.modes import STEP_MODES, resolve_mode
from layersync.train.step import TrainStep
from layersync_image.sit import build_sit, parse_size

MODES = (*(m for m in STEP_MODES if m != "auto"), "plain")
SPEEDUP_TARGETS = (  # (id, faster mode, slower mode, least images/s ratio, models it applies to; None: all)
    ("graph_vs_eager", "graph", "eager", 1.8, ("SiT-B/2",)),
    ("graph_vs_compile", "graph", "compile", 1.03, None),
    ("graph_vs_plain", "graph", "plain", 1.5, ("SiT-XL/2",)),
)
MFU_TARGET, MFU_STRETCH = 0.40, 0.45  # of the datasheet peak, in graph mode
MFU_TARGET_MODELS = ("SiT-XL/2",)
LARGE_BATCH_TARGET = 0.85  # images/s of the large-batch row over the fitting batch's
PLAIN_TARGET = 1.05  # CPU: our eager step time over the plain file's
COUNT_BATCH = 2  # FLOPs are counted at this batch and scaled: every counted op is linear in the batch
FINITE_CHECK_CALLS = 20  # timed calls of TrainStep.nonfinite_grads() per row


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


def checkpoint_count(text: str) -> int | str:
    return text if text == "all" else int(text)


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


def plain_step(base, size, shape, layersync, device, precision) -> PlainStep:
    """The plain file's step on a copy of ``base``'s weights, set up as ours is in build_step."""
    depth, hidden, heads, patch = parse_size(size)
    model = PlainSiT(shape[1], patch, shape[0], hidden, depth, heads, NUM_CLASSES)
    model.load_state_dict(base.state_dict())
    optim = defaults()["optim"]
    pairs, weight = (layersync.pairs, layersync.weight) if layersync else ([], 0.0)
    return PlainStep(model.to(device), optim["lr"], optim["weight_decay"], pairs, weight, 0.1, 0.9999,
                     torch.Generator(device).manual_seed(1), tuple(optim["betas"]), optim["eps"], precision)


def measure(base, batch, size, shape, mode, pairs, device, precision, steps, warmup,
            grad_accum=1, checkpoint_blocks=0):
    """-> (median step seconds, peak GPU memory GiB, median seconds of the gradient-finiteness check
    (NaN for plain)) of a fresh copy of ``base`` trained in ``mode``."""
    layersync = LayerSync.parse(pairs) if pairs else None
    if mode == "plain":
        run = step = plain_step(base, size, shape, layersync, device, precision)
    else:
        run = build_step(base, layersync, device, mode, precision, grad_accum)
        step = getattr(run, "step", run)  # the TrainStep inside a captured one
        step.model.checkpoint_blocks = checkpoint_blocks
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timed(lambda: run(x, y), calls_before_replay(mode) + warmup, device)
    seconds = median(timed(lambda: run(x, y), steps, device))
    memory = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    check = (median(timed(step.nonfinite_grads, FINITE_CHECK_CALLS, device)) if isinstance(step, TrainStep)
             else float("nan"))
    return seconds, memory, check


def measure_fitting(base, batch, *args) -> tuple[int, tuple]:
    """measure() at ``batch``, halved on CUDA OOM until it fits -> (batch, measure's result).
    A retry starts clean: the memory of the failed try handed back, a fresh dynamo cache."""
    while True:
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
        torch._dynamo.reset()


def is_large(row: dict) -> bool:
    """A row with accumulation or checkpointing (the large-batch row)."""
    return row["grad_accum"] > 1 or row["checkpoint_blocks"] > 0


def targets_of(rows: list[dict], large_batch: int, card: str) -> list[dict]:
    """The targets among one configuration's rows: speed-ups between modes (images/s, LayerSync on),
    the MFU of graph mode, each large-batch row against the same mode's fitting batch."""
    large = [r for r in rows if is_large(r)]
    fitting = {(r["mode"], r["layersync"]): r for r in rows if not is_large(r)}
    model = rows[0]["model"]
    found = []
    for key, fast, slow, least, models in SPEEDUP_TARGETS:
        a, b = fitting.get((fast, "on")), fitting.get((slow, "on"))
        if a and b and (models is None or model in models):
            ratio = a["images_per_s"] / b["images_per_s"]
            batches = f"batch {a['batch']}" + (f" vs {b['batch']}" if a["batch"] != b["batch"] else "")
            found.append(target(key, f"{model} {batches}: {fast} vs {slow} images/s (>= {least}x)",
                                ratio, ratio >= least))
    graph = fitting.get(("graph", "on"))
    if graph and model in MFU_TARGET_MODELS:
        known = not math.isnan(graph["mfu"])  # NaN: the card is not in the datasheet table
        stretch = f"stretch {MFU_STRETCH:.0%} {'met' if graph['mfu'] >= MFU_STRETCH else 'not met'}"
        what = f"{model} batch {graph['batch']} graph: MFU of datasheet peak (>= {MFU_TARGET:.0%}; {stretch})"
        found.append(target("mfu", what if known else f"{what}; no datasheet peak for {card}",
                            graph["mfu"], graph["mfu"] >= MFU_TARGET if known else None))
    for r in large:
        ref = fitting.get((r["mode"], r["layersync"]))
        if ref:
            ratio = r["images_per_s"] / ref["images_per_s"]
            what = (f"{model} {r['mode']} batch {r['batch']} (asked {large_batch}) in {r['grad_accum']} micro-batches, "
                    f"{r['checkpoint_blocks']} blocks checkpointed, vs batch {ref['batch']} without: images/s "
                    f"(>= {LARGE_BATCH_TARGET:.0%})")
            passed = ratio >= LARGE_BATCH_TARGET and r["batch"] == large_batch
            found.append(target("large_batch", what, ratio, passed))
    return found


def plain_vs_ours(size, batch, shape, pairs, steps, repeats) -> dict:
    """Interleaved CPU timing of our eager step and the plain single file."""
    torch.manual_seed(0)
    base = build_sit(shape, NUM_CLASSES, size)
    layersync = LayerSync.parse(pairs)
    ours = build_step(base, layersync, "cpu", "eager", None)
    plain = plain_step(base, size, shape, layersync, "cpu", None)
    x, y = torch.randn(batch, *shape), torch.randint(0, NUM_CLASSES, (batch,))
    times = {"ours": [], "plain": []}
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("plain", plain)):
            timed(lambda: fn(x, y), 3, "cpu")
            times[name] += timed(lambda: fn(x, y), steps, "cpu")
    return {name: median(t) for name, t in times.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks step_speed", description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+",
                   help="SIZE:BATCH[:CxHxW]; default B/2:64 XL/2:256 on GPU, T/4:64:1x16x16 on CPU")
    p.add_argument("--modes", nargs="+", choices=MODES, help=f"default: {' '.join(MODES)} on GPU, eager on CPU")
    p.add_argument("--layersync", nargs="+", default=["on", "off"], choices=["on", "off"])
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches of the large-batch row")
    p.add_argument("--checkpoint-blocks", type=checkpoint_count, default=0, metavar="N|all",
                   help="blocks checkpointed in the large-batch row (the first N, or all)")
    p.add_argument("--large-batch", type=int, help="global batch of the large-batch row (default: the config's)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps (after a captured mode's warm-up and capture)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repetitions of the CPU plain-baseline check")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    cuda = device == "cuda"
    configs = args.configs or (["B/2:64", "XL/2:256"] if cuda else ["T/4:64:1x16x16"])
    modes = args.modes or (list(MODES) if cuda else ["eager"])
    large_mode = modes[0] if args.grad_accum > 1 or args.checkpoint_blocks != 0 else None
    if large_mode == "plain":
        p.error("the --grad-accum/--checkpoint-blocks row runs in the first of --modes: ours, not plain")
    if args.large_batch and not large_mode:
        p.error("--large-batch is the batch of the --grad-accum/--checkpoint-blocks row: give one of them")
    precision = torch.bfloat16 if cuda else None
    dtype_name = "bf16" if cuda else "fp32"
    card = device_name(device)
    peak = matmul_peak(device, precision or torch.float32)
    datasheet = datasheet_peak(card, "bf16" if precision is not None else "tf32")
    notes = [f"measured matmul peak: {peak / 1e12:.1f} TFLOP/s ({dtype_name}), the base of mfu_measured_peak",
             f"datasheet peak of {card}: {datasheet / 1e12:.1f} TFLOP/s dense ({dtype_name}), the base of mfu"
             if not math.isnan(datasheet) else f"no datasheet peak for {card}: mfu is NaN",
             "finite_check_ms: TrainStep.nonfinite_grads() alone (eager, synchronised) on the gradients a step "
             "left; finite_check_share: of the step time"]
    for mode in [m for m in modes if m != "plain"]:
        try:
            resolve_mode(mode, torch.device(device))
        except ConfigError as skipped:
            notes.append(f"{mode}: not run: {skipped}")
            modes = [m for m in modes if m != mode]
    rows, groups, cpu_targets, path = [], [], [], None  # groups: (rows, large batch) of each configuration

    def report():
        targets = [t for group, asked in groups if group for t in targets_of(group, asked, card)]
        targets += cpu_targets
        verdicts = [f"{t['verdict']}: {t['what']}: {t['value']:.3g}" for t in targets]
        markdown = "\n".join([table(rows, list(rows[0])) if rows else "no rows", "", *notes, *verdicts])
        return publish("step_speed", device, rows, markdown, path, config=vars(args), matmul_peak_flops=peak,
                       datasheet_peak_flops=datasheet, targets=targets)

    for spec in configs:
        size, batch, shape, pairs = parse_config(spec)
        torch.manual_seed(0)
        base = build_sit(shape, NUM_CLASSES, size)  # on the CPU; every measurement trains its own copy
        depth = parse_size(size)[0]
        blocks = depth if args.checkpoint_blocks == "all" else min(args.checkpoint_blocks, depth)
        large_batch = args.large_batch or batch
        runs = [(mode, ls, batch, 1, 0) for mode in modes for ls in args.layersync]
        if large_mode in modes:  # asked for, and it can run here
            runs += [(large_mode, ls, large_batch, args.grad_accum, blocks) for ls in args.layersync]
        torch._dynamo.reset()  # a new model: its own compiled graphs (the modes of one configuration share them)
        config_rows, flops = [], {}
        groups.append((config_rows, large_batch))
        for mode, ls, asked, grad_accum, checkpointed in runs:
            ls_pairs = pairs if ls == "on" else None
            b, (seconds, memory, check) = measure_fitting(base, asked, size, shape, mode, ls_pairs, device, precision,
                                                          args.steps, args.warmup, grad_accum, checkpointed)
            if (b, ls) not in flops:  # the same math in every mode: model FLOPs, without recomputation
                flops[b, ls] = step_flops(copy.deepcopy(base).to(device), shape, b,
                                          LayerSync.parse(ls_pairs) if ls_pairs else None, device, precision)
            f = flops[b, ls]
            config_rows.append({"model": f"SiT-{size}", "input": "x".join(map(str, shape)), "batch": b,
                                "grad_accum": grad_accum, "checkpoint_blocks": checkpointed, "mode": mode,
                                "layersync": ls, "step_ms": 1e3 * seconds, "images_per_s": b / seconds,
                                "peak_mem_gib": memory, "tflops": f / seconds / 1e12, "mfu": f / seconds / datasheet,
                                "mfu_measured_peak": f / seconds / peak, "finite_check_ms": 1e3 * check,
                                "finite_check_share": check / seconds})
            rows.append(config_rows[-1])
            print(table(rows[-1:], list(rows[-1])).splitlines()[-1], flush=True)
            _, path = report()
        by_mode = {(r["mode"], r["layersync"]): r["step_ms"] for r in config_rows if not is_large(r)}
        if ("eager", "on") in by_mode and ("eager", "off") in by_mode:
            notes.append(f"SiT-{size}: LayerSync on/off (eager, separately built models; the overhead suite "
                         f"pairs them on one model): {by_mode['eager', 'on'] / by_mode['eager', 'off']:.3f}")
    if not cuda:
        size, batch, shape, pairs = parse_config(configs[0])
        plain = plain_vs_ours(size, batch, shape, pairs, args.steps, args.repeats)
        ratio = plain["ours"] / plain["plain"]
        cpu_targets.append(target("plain_baseline", f"SiT-{size} CPU eager step vs plain single file "
                                  f"(<= {PLAIN_TARGET})", ratio, ratio <= PLAIN_TARGET))
        notes.append(f"SiT-{size} CPU eager: ours {1e3 * plain['ours']:.1f} ms vs plain single file "
                     f"{1e3 * plain['plain']:.1f} ms")
    result, path = report()
    print(result["markdown"])
    print(f"report: {path}")
    return result


if __name__ == "__main__":
    main()
