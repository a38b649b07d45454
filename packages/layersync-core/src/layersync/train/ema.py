"""Exponential moving average of a model's weights (foreach ops, no host syncs)."""

from __future__ import annotations

import copy

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float = 0.9999):
        self.decay = decay
        self.model = copy.deepcopy(getattr(model, "module", model)).eval().requires_grad_(False)
        self.track(model)

    def track(self, model: torch.nn.Module) -> None:
        """Follow ``model``'s parameters and buffers (again after FSDP sharded it and the copy alike:
        sharding replaces them). Frozen parameters (a LoRA's base model) are left out: they never change."""
        source = getattr(model, "module", model)
        copies = dict(self.model.named_parameters())
        pairs = [(p, copies[name]) for name, p in source.named_parameters() if p.requires_grad]
        self._src = [src for src, _ in pairs]
        self._dst = [dst for _, dst in pairs]
        self._src_buffers = list(source.buffers())
        self._dst_buffers = list(self.model.buffers())

    @torch.no_grad()
    def update(self, skip: torch.Tensor | None = None) -> None:
        """One EMA step; ``skip``, a 0-d 0/1 tensor on the device (a skipped training step), makes it
        a no-op without reading it to the host."""
        if skip is None:
            torch._foreach_lerp_(self._dst, self._src, 1.0 - self.decay)
        else:
            delta = torch._foreach_sub(self._src, self._dst)
            torch._foreach_mul_(delta, (1.0 - self.decay) * (1.0 - skip))
            torch._foreach_add_(self._dst, delta)
        for dst, src in zip(self._dst_buffers, self._src_buffers):
            dst.copy_(src)

    def state_dict(self):
        return self.model.state_dict()

    def load_state_dict(self, state):
        self.model.load_state_dict(state)
