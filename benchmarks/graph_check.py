"""GPU correctness: the captured CUDA-graph step replays what the eager step computes.

SiT-B/2 on 4x32x32 latents: 20 steps eager and 20 steps as graph replays
from the same weights and generator seed, in fp32 (TF32 off) and in bf16
autocast; compares the losses of every step and the parameters after the
last, and checks that replays draw fresh noise (losses differ at lr 0).
Writes graph_check-*.json/.md under the results folder. Needs CUDA.
"""

from __future__ import annotations

import sys

import torch

from benchmarks.common import publish, table
from benchmarks.overhead import build_step
from layersync import LayerSync
from layersync_image.sit import build_sit

TOLERANCE = {"fp32": (1e-4, 1e-4), "bf16": (2e-2, 2e-3)}  # (loss rel, param abs)


def run(base, mode, precision, data, lr=1e-4):
    step = build_step(base, LayerSync([(4, 8)]), "cuda", mode, precision)
    inner = getattr(step, "step", step)
    for group in inner.optimizer.param_groups:
        group["lr"] = lr
    losses = [step(x, y)["loss"].item() for x, y in data]
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
            for _ in range(20)]
    rows, ok = [], True
    for name, precision in (("fp32", None), ("bf16", torch.bfloat16)):
        eager_losses, eager_params = run(base, "eager", precision, data)
        graph_losses, graph_params = run(base, "graph", precision, data)
        loss_rel = max(abs(a - b) / abs(a) for a, b in zip(eager_losses, graph_losses))
        param_abs = max((a - b).abs().max().item() for a, b in zip(eager_params, graph_params))
        fresh = len(set(run(base, "graph", precision, [data[0]] * 6, lr=0.0)[0][3:]))  # replays only
        rel_tol, abs_tol = TOLERANCE[name]
        passed = loss_rel <= rel_tol and param_abs <= abs_tol and fresh == 3
        ok &= passed
        rows.append({"precision": name, "max_loss_rel_diff": loss_rel, "max_param_abs_diff": param_abs,
                     "distinct_losses_of_3_replays": fresh, "verdict": "PASS" if passed else "FAIL"})
    markdown = table(rows, list(rows[0])) + f"\n\ntolerances (loss rel, param abs): {TOLERANCE}"
    _, path = publish("graph_check", "cuda", rows, markdown)
    print(f"report: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
