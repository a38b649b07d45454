"""One training step as a single function over fixed-shape tensors.

Nothing inside reads a value back to the host, so on a CUDA device the whole
call can be captured as a graph; on CPU it runs eagerly. Noise, timesteps
and label dropout are drawn for the *global* batch from one generator and
each rank keeps its own slice, so a run gives the same numbers whatever
the number of processes.

Every step also records, on the device, whether the flow loss, the LayerSync
loss or the gradients went non-finite (NaN or inf): ``TrainStep.health``, a
small tensor updated with torch ops only, which the trainer reads back at its
log and checkpoint steps (``read_health``). With ``skip_nonfinite`` a step with
non-finite gradients changes nothing: AdamW's moments, step count and the
weights stay as they were (the fused optimizer's ``found_inf``, as torch.amp's
GradScaler uses it, else a snapshot put back with ``torch.where``), and the EMA
does not move either.
"""

from __future__ import annotations

import torch

from layersync import trees
from layersync.interfaces import check_forward
from layersync.objective import FlowObjective, LayerSync

# What the health tensor holds: three 0/1 flags (which term went non-finite since the last
# read), the number of skipped steps, the first bad step (1-based, counted since the last
# read; 0 if none) and the number of steps since the last read.
NONFINITE_TERMS = ("flow loss", "LayerSync loss", "gradients")
FLOW, SYNC, GRADS, SKIPPED, FIRST, SEEN = range(6)


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
        skip_nonfinite: bool = False,
        grad_accum: int = 1,
    ):
        self.model, self.objective, self.layersync = model, objective, layersync
        self.optimizer, self.ema, self.grad_clip = optimizer, ema, grad_clip
        self.autocast_dtype, self.cfg_dropout = autocast_dtype, cfg_dropout
        self.generator, self.rank, self.world = generator, rank, world
        self.backbone = getattr(model, "module", model)  # unwrap DDP
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.capture = layersync.capture if layersync is not None else ()
        self.skip_nonfinite, self.grad_accum = skip_nonfinite, grad_accum
        # gradients start each step as None (no zeroing pass; the first backward writes them) except
        # under DDP, whose gradients are views of its buckets
        self.grads_to_none = self.backbone is model
        # a fused AdamW applies the clipping factor itself (as GradScaler's unscale): no pass over the
        # gradients to scale them; FSDP's sharded parameters keep the separate clip
        self.clip_in_optimizer = (getattr(optimizer, "_step_supports_amp_scaling", False)
                                  and not any(hasattr(p, "to_local") for p in self.params))  # no DTensor
        # allocated once, before any capture: the graph updates it in place at every replay
        self.health = torch.zeros(6, device=self.params[0].device if self.params else "cpu")

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

        Pure tensor code with no RNG: the part the compile and graph step modes compile. ``cond`` is a
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
        self.optimizer.zero_grad(set_to_none=self.grads_to_none)
        flow, sync = self.accumulate_gradients(x1, *self.draw(x1), cond, mask)
        out = {"loss": flow + sync, "flow_loss": flow, "layersync_loss": sync}
        grad_scale = None
        if self.grad_clip > 0:  # the norm comes free with clipping; without it, it is not logged
            grads = [p.grad for p in self.params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads, foreach=True)
            out["grad_norm"] = whole(norm).detach()
            grads_bad = ~torch.isfinite(out["grad_norm"])  # NaN or inf in any gradient makes the norm so
            if self.clip_in_optimizer:  # 1 / clip_grad_norm_'s factor: the fused kernel divides by it
                grad_scale = ((out["grad_norm"] + 1e-6) / self.grad_clip).clamp_min(1.0)
            else:
                torch.nn.utils.clip_grads_with_norm_(self.params, self.grad_clip, norm, foreach=True)
        else:
            grads_bad = self.nonfinite_grads()
        skip = self.record_health(flow, sync, grads_bad)
        self.optimizer_step(grad_scale, skip if self.skip_nonfinite else None)
        if self.ema is not None:
            self.ema.update(skip=skip if self.skip_nonfinite else None)
        return out

    def accumulate_gradients(self, x1, x0, t, drop, cond, mask=None):
        """Forward and backward over ``grad_accum`` equal micro-batches; (flow, layersync) of the whole batch.

        Each micro-batch's losses are weighted by its share of the batch (of its valid tokens, for a
        masked LayerSync term), so losses and gradients equal the unsplit batch's up to rounding.
        """
        n = self.grad_accum
        if n == 1:
            _, flow, sync = self.forward_losses(x1, x0, t, drop, cond, mask)
            (flow + sync).backward()
            return flow.detach(), sync.detach()
        sync_shares = [1 / n] * n
        if mask is not None and self.layersync is not None:
            valid = self.backbone.token_mask(mask).flatten(1).sum(1).float()
            sync_shares = [part.sum() / valid.sum().clamp_min(1) for part in valid.chunk(n)]
        flow = sync = 0.0
        for i, sync_share in enumerate(sync_shares):
            rows = slice(i * len(x1) // n, (i + 1) * len(x1) // n)
            micro = [trees.rows(part, rows) if part is not None else None for part in (x1, x0, t, drop, cond, mask)]
            _, micro_flow, micro_sync = self.forward_losses(*micro)
            micro_flow, micro_sync = micro_flow / n, micro_sync * sync_share
            (micro_flow + micro_sync).backward()
            flow, sync = flow + micro_flow.detach(), sync + micro_sync.detach()
        return flow, sync

    # ---- non-finite values: device-side only, nothing here reads a value to the host ----------
    def nonfinite_grads(self) -> torch.Tensor:
        """A 0-d bool: does any gradient hold NaN or inf (a per-tensor norm overflows then too).

        Under DDP the gradients are already all-reduced here, so every rank gets the same answer; under
        FSDP the norms of the shards are reduced over the ranks."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return torch.zeros((), dtype=torch.bool, device=self.health.device)
        return whole(~torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())

    @torch.no_grad()
    def record_health(self, flow, sync, grads_bad) -> torch.Tensor:
        """Fold this step's flags into ``health`` (torch ops only); return the 0-d float skip flag:
        1.0 when the gradients are non-finite (the one flag every DDP rank agrees on)."""
        h = self.health
        bad = torch.stack([~torch.isfinite(flow), ~torch.isfinite(sync), grads_bad.reshape(())]).to(h.dtype)
        h[SEEN].add_(1)
        h[FIRST].copy_(torch.where((h[FIRST] == 0) & (bad.amax() > 0), h[SEEN], h[FIRST]))
        h[:SKIPPED].copy_(torch.maximum(h[:SKIPPED], bad))
        skip = bad[GRADS]
        if self.skip_nonfinite:
            h[SKIPPED].add_(skip)
        return skip

    @torch.no_grad()
    def optimizer_step(self, grad_scale: torch.Tensor | None, skip: torch.Tensor | None) -> None:
        """``optimizer.step()``, the gradients divided by ``grad_scale`` (fused AdamW only), leaving weights
        and optimizer state untouched where ``skip`` is 1.

        A fused optimizer takes both as torch.amp's GradScaler hands them over (``grad_scale``,
        ``found_inf``): with ``found_inf`` its kernel does nothing and the step count is put back,
        all on the device. Any other optimizer steps, then every tensor it touched is put back from
        a snapshot with ``torch.where`` (state first created by this step goes back to zeros, AdamW's start).
        """
        opt = self.optimizer
        if getattr(opt, "_step_supports_amp_scaling", False):
            opt.grad_scale, opt.found_inf = grad_scale, skip
            try:
                opt.step()
            finally:
                del opt.grad_scale, opt.found_inf
            return
        if skip is None:
            opt.step()
            return
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        saved = [(p.detach().clone(), {k: v.clone() for k, v in opt.state.get(p, {}).items()
                                       if isinstance(v, torch.Tensor)}) for p in params]
        opt.step()
        keep = skip > 0
        for p, (old, state) in zip(params, saved):
            p.copy_(torch.where(keep, old, p))
            for key, value in opt.state.get(p, {}).items():
                if isinstance(value, torch.Tensor):
                    before = state.get(key, torch.zeros_like(value))
                    value.copy_(torch.where(keep.to(value.device), before, value))

    def read_health(self) -> torch.Tensor:
        """The health tensor as it stands (the caller syncs), then zeroed for the next interval."""
        current = self.health.clone()
        self.health.zero_()
        return current


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A value computed from FSDP's sharded gradients (a DTensor) as a plain tensor, the same on every rank."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
