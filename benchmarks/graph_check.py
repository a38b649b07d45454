"""GPU correctness: the captured CUDA-graph step replays what the eager step computes.

SiT-B/2 on 4x32x32 latents: 20 steps eager and 20 steps as graph replays
from the same weights and generator seed, in fp32 (TF32 off) and in bf16
autocast, under a warm-up + cosine learning-rate schedule written into the
optimizer before every step (a schedule ignored by the captured graph makes
the runs differ); compares the losses of every step and the parameters after
the last, and checks that replays draw fresh noise (losses differ at lr 0).
A second eager run gives the kernels' own run-to-run noise for comparison.
Writes graph_check-*.json/.md under the results folder. Needs CUDA.
"""

from __future__ import annotations

import sys

import torch

from benchmarks.common import publish, table, target
from benchmarks.overhead import build_step
from layersync import LayerSync
from layersync.train.optim import LRSchedule, set_lr
from layersync_image.sit import build_sit

STEPS = 20
SCHEDULE = LRSchedule(1e-4, "cosine", warmup_steps=5, total_steps=STEPS)
TOLERANCE = {"fp32": (1e-4, 1e-4), "bf16": (2e-2, 2e-3)}  # (loss rel, param abs)


def run(base, mode, precision, data, schedule):
    step = build_step(base, LayerSync([(4, 8)]), "cuda", mode, precision)
    inner = getattr(step, "step", step)
    losses = []
    for i, (x, y) in enumerate(data):
        set_lr(inner.optimizer, schedule(i))
        losses.append(step(x, y)["loss"].item())
    return losses, [p.detach().clone() for p in inner.model.parameters()]


def main() -> int:
    if not torch.cuda.is_available():
        print("graph_check needs a CUDA device", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    base = build_sit((4, 32, 32), 1000, "B/2")
    g = torch.Generator().manual_seed(3)
    data = [(torch.randn(32, 4, 32, 32, generator=g).cuda(), torch.randint(0, 1000, (32,), generator=g).cuda())
            for _ in range(STEPS)]
    rows = []
    for name, precision in (("fp32", None), ("bf16", torch.bfloat16)):
        eager_losses, eager_params = run(base, "eager", precision, data, SCHEDULE)
        graph_losses, graph_params = run(base, "graph", precision, data, SCHEDULE)
        # eager against itself: the run-to-run noise of the kernels, to read a failure against
        rerun_params = run(base, "eager", precision, data, SCHEDULE)[1]
        noise = max((a - b).abs().max().item() for a, b in zip(eager_params, rerun_params))
        loss_rel = max(abs(a - b) / abs(a) for a, b in zip(eager_losses, graph_losses))
        param_abs = max((a - b).abs().max().item() for a, b in zip(eager_params, graph_params))
        fresh = len(set(run(base, "graph", precision, [data[0]] * 6, lambda i: 0.0)[0][3:]))  # replays only
        rel_tol, abs_tol = TOLERANCE[name]
        passed = loss_rel <= rel_tol and param_abs <= abs_tol and fresh == 3
        rows.append({"precision": name, "max_loss_rel_diff": loss_rel, "max_param_abs_diff": param_abs,
                     "eager_rerun_param_abs_diff": noise,
                     "distinct_losses_of_3_replays": fresh, "verdict": "PASS" if passed else "FAIL"})
    ok = all(r["verdict"] == "PASS" for r in rows)
    markdown = (table(rows, list(rows[0])) + f"\n\nlr: warm-up {SCHEDULE.warmup_steps} steps to {SCHEDULE.lr:g}, "
                f"then cosine to 0 at step {STEPS}; tolerances (loss rel, param abs): {TOLERANCE}")
    verdict = target("graph_replay", "graph replay equals eager (fp32, bf16; lr schedule; fresh noise)",
                     ", ".join(f"{r['precision']} {r['verdict']}" for r in rows), ok)
    print(markdown)
    _, path = publish("graph_check", "cuda", rows, markdown, targets=[verdict])
    print(f"report: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
