"""One training step as a single function over fixed-shape tensors.

Nothing inside reads a value back to the host, so on a CUDA device the whole
call can be captured as a graph; on CPU it runs eagerly. Noise, timesteps
and label dropout are drawn for the *global* batch from one generator and
each rank keeps its own slice, so a run gives the same numbers whatever
the number of processes.
"""

from __future__ import annotations

import torch

from layersync.interfaces import check_forward
from layersync.objective import FlowObjective, LayerSync


class TrainStep:
    def __init__(
        self,
        model,
        objective: FlowObjective,
        layersync: LayerSync | None,
        optimizer: torch.optim.Optimizer,
        ema=None,
        grad_clip: float = 0.0,
        autocast_dtype: torch.dtype | None = None,
        cfg_dropout: float = 0.0,
        generator: torch.Generator | None = None,
        rank: int = 0,
        world: int = 1,
    ):
        self.model, self.objective, self.layersync = model, objective, layersync
        self.optimizer, self.ema, self.grad_clip = optimizer, ema, grad_clip
        self.autocast_dtype, self.cfg_dropout = autocast_dtype, cfg_dropout
        self.generator, self.rank, self.world = generator, rank, world
        self.backbone = getattr(model, "module", model)  # unwrap DDP
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.capture = layersync.capture if layersync is not None else ()

    def draw(self, x1):
        """Noise, t and the dropout mask for this rank's slice of the global batch."""
        local = x1.shape[0]
        shape = (local * self.world, *x1.shape[1:])
        g, dev = self.generator, x1.device
        x0 = torch.randn(shape, generator=g, device=dev, dtype=x1.dtype)
        t = self.objective.sample_t(shape[0], g, dev).to(x1.dtype)
        drop = torch.rand(shape[0], generator=g, device=dev) < self.cfg_dropout
        rows = slice(self.rank * local, (self.rank + 1) * local)
        return x0[rows], t[rows], drop[rows]

    def forward_losses(self, x1, x0, t, drop, cond, mask=None):
        """Forward pass: (total, flow, layersync) scalars with autograd graphs.

        Pure tensor code with no RNG: the part ``--step-mode compile`` compiles. ``cond`` is a
        tensor or a dict of tensors; ``mask`` (B, positions), if the data set gives one, marks
        the valid positions: attention, the flow loss and LayerSync ignore the rest.
        """
        if self.cfg_dropout > 0:
            cond = self.backbone.drop_cond(cond, drop)
        xt, _ = self.objective.path.interpolate(x1, x0, t)
        masked = {} if mask is None else {"mask": mask}  # backbones without masks keep their signature
        with torch.autocast(x1.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            pred, hidden = check_forward(self.backbone, self.model(xt, t, cond, capture=self.capture, **masked),
                                         xt, self.capture)
        flow = self.objective.loss(pred.float(), x1, x0, t, mask).mean()
        if self.layersync is None:
            sync = torch.zeros((), device=x1.device)
        else:
            sync = self.layersync(hidden, None if mask is None else self.backbone.token_mask(mask))
        return flow + sync, flow, sync

    def __call__(self, x1, cond, mask=None) -> dict[str, torch.Tensor]:
        total, flow, sync = self.forward_losses(x1, *self.draw(x1), cond, mask)
        self.optimizer.zero_grad(set_to_none=False)
        total.backward()
        out = {"loss": total.detach(), "flow_loss": flow.detach(), "layersync_loss": sync.detach()}
        if self.grad_clip > 0:  # the norm comes free with clipping; without it, it is not logged
            out["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True).detach()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        return out
