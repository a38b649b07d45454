"""GPU correctness: the captured steps replay what the uncaptured ones compute, compiled or not.

SiT-B/2 on 4x32x32 latents at batch 64 (step_speed's and overhead's SiT-B/2, so the suites after reuse
its compiled bf16 graph from torch.compile's cache): 12 steps in each mode from the same weights and
generator seed, in fp32 (TF32 off) and in bf16 autocast, under a warm-up + cosine learning-rate schedule
written into the optimizer before every step (a schedule ignored by a captured graph makes the runs
differ). It compares the losses of every step and the parameters after the last of

- graph-eager against eager and graph against compile: the same kernels, captured or not (TOLERANCE);
- graph against eager: compiled kernels fuse and reorder sums, so they round differently
  (COMPILED_TOLERANCE);

and checks that the replays of both captured modes draw fresh noise (losses differ at lr 0). A second
eager run gives the kernels' own run-to-run noise for comparison. Writes graph_check-*.json/.md under the
results folder. Needs CUDA.
"""

from __future__ import annotations

import gc
import sys

import torch

from benchmarks.common import publish, table, target
from benchmarks.overhead import CAPTURE_WARMUP, NUM_CLASSES, build_step
from layersync import LayerSync
from layersync.train.modes import CAPTURED
from layersync.train.optim import LRSchedule, set_lr
from layersync_image.sit import build_sit

STEPS, BATCH = 12, 64
SCHEDULE = LRSchedule(1e-4, "cosine", warmup_steps=4, total_steps=STEPS)  # replays run under the cosine part
TOLERANCE = {"fp32": (1e-4, 1e-4), "bf16": (2e-2, 2e-3)}  # (loss rel, param abs)
# AdamW moves a parameter by about lr a step whatever the size of its gradient, so one whose true gradient
# is zero (the attention key bias) moves by rounding noise alone: two runs that round differently may
# drift apart by up to twice the summed lr. The mean loss stays within 1e-3 in fp32, and within about
# five bf16 roundings (2^-8 each) in bf16.
ADAM_DRIFT = 2 * sum(SCHEDULE(i) for i in range(STEPS))
COMPILED_TOLERANCE = {"fp32": (1e-3, ADAM_DRIFT), "bf16": (2e-2, ADAM_DRIFT)}
COMPARISONS = (  # (run, against, tolerances)
    ("graph-eager", "eager", TOLERANCE),
    ("graph", "compile", TOLERANCE),
    ("graph", "eager", COMPILED_TOLERANCE),
)


def run(base, mode, precision, data, schedule):
    gc.collect()  # the last run's step, captured graph and its memory pool
    step = build_step(base, LayerSync([(4, 8)]), "cuda", mode, precision)
    inner = getattr(step, "step", step)
    losses = []
    for i, (x, y) in enumerate(data):
        set_lr(inner.optimizer, schedule(i))
        losses.append(step(x, y)["loss"].item())
    return losses, [p.detach().clone() for p in inner.model.parameters()]


def max_abs_diff(params, others) -> float:
    return max((a - b).abs().max().item() for a, b in zip(params, others))


def main() -> int:
    if not torch.cuda.is_available():
        print("graph_check needs a CUDA device", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    base = build_sit((4, 32, 32), NUM_CLASSES, "B/2")
    g = torch.Generator().manual_seed(3)
    data = [(torch.randn(BATCH, 4, 32, 32, generator=g).cuda(),
             torch.randint(0, NUM_CLASSES, (BATCH,), generator=g).cuda()) for _ in range(STEPS)]
    rows = []
    for name, precision in (("fp32", None), ("bf16", torch.bfloat16)):
        runs = {mode: run(base, mode, precision, data, SCHEDULE)
                for mode in ("eager", "compile", "graph-eager", "graph")}
        # eager against itself: the run-to-run noise of the kernels, to read a failure against
        noise = max_abs_diff(runs["eager"][1], run(base, "eager", precision, data, SCHEDULE)[1])
        replays = [data[0]] * (CAPTURE_WARMUP + 3)  # warm-up, then 3 replays (the capture call replays once)
        fresh = {mode: len(set(run(base, mode, precision, replays, lambda i: 0.0)[0][CAPTURE_WARMUP:]))
                 for mode in CAPTURED}
        for mode, against, tolerances in COMPARISONS:
            (losses, params), (their_losses, their_params) = runs[mode], runs[against]
            loss_rel = max(abs(a - b) / abs(b) for a, b in zip(losses, their_losses))
            param_abs = max_abs_diff(params, their_params)
            rel_tol, abs_tol = tolerances[name]
            passed = loss_rel <= rel_tol and param_abs <= abs_tol and fresh[mode] == 3
            rows.append({"precision": name, "run": mode, "against": against, "max_loss_rel_diff": loss_rel,
                         "max_param_abs_diff": param_abs, "tolerance": f"{rel_tol:g}, {abs_tol:.2g}",
                         "eager_rerun_param_abs_diff": noise, "distinct_losses_of_3_replays": fresh[mode],
                         "verdict": "PASS" if passed else "FAIL"})
    ok = all(r["verdict"] == "PASS" for r in rows)
    markdown = (table(rows, list(rows[0])) + f"\n\nSiT-B/2 batch {BATCH}; lr: warm-up {SCHEDULE.warmup_steps} steps "
                f"to {SCHEDULE.lr:g}, then cosine to 0 at step {STEPS}; tolerance: loss rel, param abs (the "
                f"compiled kernels' against eager: {ADAM_DRIFT:.2g} = twice the summed lr, AdamW's drift)")
    verdict = target("graph_replay", "graph (compiled) and graph-eager replays equal their uncaptured steps "
                     "(fp32, bf16; lr schedule; fresh noise)",
                     ", ".join(f"{r['precision']} {r['run']} vs {r['against']} {r['verdict']}" for r in rows), ok)
    print(markdown)
    _, path = publish("graph_check", "cuda", rows, markdown, targets=[verdict])
    print(f"report: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
