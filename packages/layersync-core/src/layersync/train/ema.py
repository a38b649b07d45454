"""Exponential moving average of a model's weights (foreach ops, no host syncs)."""

from __future__ import annotations

import copy

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float = 0.9999):
        self.decay = decay
        self.model = copy.deepcopy(getattr(model, "module", model)).eval().requires_grad_(False)
        source = getattr(model, "module", model)
        self._src = [p for p in source.parameters()]
        self._dst = [p for p in self.model.parameters()]
        self._src_buffers = list(source.buffers())
        self._dst_buffers = list(self.model.buffers())

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self._dst, self._src, 1.0 - self.decay)
        for dst, src in zip(self._dst_buffers, self._src_buffers):
            dst.copy_(src)

    def state_dict(self):
        return self.model.state_dict()

    def load_state_dict(self, state):
        self.model.load_state_dict(state)
