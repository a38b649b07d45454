"""AdamW with its learning rate held as a tensor, the learning-rate schedules, and resuming it.

The learning rate lives in a 1-element tensor on the parameters' device, so a captured
CUDA graph reads whatever value the schedule wrote before each replay (a Python float
would be baked into the graph at capture and every later change silently ignored).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch

from layersync.config import setting

log = logging.getLogger("layersync")
Schedule = Literal["constant", "cosine"]
MODE_FLAGS = ("capturable", "fused", "foreach")


@dataclass
class OptimConfig:
    """The ``optim`` section: AdamW's settings."""

    lr: float = setting(1.0e-4, "AdamW's (peak) learning rate", low=0)
    weight_decay: float = setting(0.0, "AdamW's decoupled weight decay", low=0)
    betas: tuple[float, float] = setting([0.9, 0.999], "AdamW's (beta1, beta2)", low=0, high=1, open_high=True)
    eps: float = setting(1.0e-8, "AdamW's epsilon", low=0)
    grad_clip: float = setting(0.0, "clip the gradient norm to this; 0: no clipping", low=0)


def build_optimizer(params, optim: dict, device: torch.device, capturable: bool) -> torch.optim.AdamW:
    """AdamW from the ``optim`` config section: fused on CUDA, capturable for graph mode."""
    device = torch.device(device)
    return torch.optim.AdamW(params, lr=torch.tensor(float(optim["lr"]), device=device), betas=tuple(optim["betas"]),
                             eps=optim["eps"], weight_decay=optim["weight_decay"], fused=device.type == "cuda",
                             capturable=capturable)


class LRSchedule:
    """``schedule(step)`` -> the learning rate of the 0-based ``step``.

    A linear warm-up from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps``
    steps, then ``constant`` or ``cosine`` (from ``lr`` down to 0 at ``total_steps``).
    """

    def __init__(self, lr: float, kind: Schedule = "constant", warmup_steps: int = 0, total_steps: int = 1):
        self.lr, self.kind, self.warmup_steps, self.total_steps = float(lr), kind, warmup_steps, total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.lr
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return 0.5 * self.lr * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Write the learning rate into each group's lr tensor, in place (no host sync)."""
    for group in optimizer.param_groups:
        group["lr"].fill_(value)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimizer state into an optimizer built for the current run.

    ``load_state_dict`` would bring back the saved run's ``capturable``, ``fused`` and
    ``foreach`` flags and its ``lr`` object: a checkpoint of an eager run would then
    break capture, one of a CPU run would leave the step counts on the wrong device.
    Keep the flags and the lr tensor this optimizer was built with, and put every
    ``step`` count where those flags want it (on the parameter's device for capturable
    or fused, on the CPU otherwise).
    """
    built = [({k: g[k] for k in MODE_FLAGS if k in g}, g["lr"]) for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, (flags, lr) in zip(optimizer.param_groups, built):
        saved_lr = group["lr"]
        group.update(flags)
        group["lr"] = lr
        if isinstance(lr, torch.Tensor):
            lr.fill_(float(saved_lr))
        on_device = flags.get("capturable") or flags.get("fused")
        for p in group["params"]:
            entry = optimizer.state.get(p)
            if entry and "step" in entry:
                entry["step"] = entry["step"].to(device=p.device if on_device else "cpu", dtype=torch.float32)
