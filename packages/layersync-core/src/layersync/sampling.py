"""Samplers: probability-flow ODE (torchdiffeq) and reverse SDE, with CFG.

Time runs from t0 (noise) to t1 (data), SiT's convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from layersync import trees
from layersync.config import setting
from layersync.errors import ConfigError
from layersync.objective import FlowObjective
from layersync.paths import expand_like

Method = Literal["ode", "sde"]
Solver = Literal["euler", "heun", "dopri5"]  # an SDE: euler or heun
DiffusionForm = Literal["constant", "sbdm", "sigma", "linear", "decreasing", "increasing-decreasing"]
LastStep = Literal["mean", "euler", "tweedie", "none"]
ODE_SOLVERS = dict(zip(get_args(Solver), ("euler", "heun2", "dopri5")))  # torchdiffeq's names
SDE_SOLVERS, LAST_STEPS, DIFFUSION_FORMS = ("euler", "heun"), get_args(LastStep), get_args(DiffusionForm)


def ode_solve(velocity, x, t0: float, t1: float, solver="heun", steps=50, atol=1e-6, rtol=1e-3):
    """Integrate dx/dt = velocity(x, t) from t0 to t1; t is passed as a (B,) tensor.

    euler and heun take ``steps`` fixed steps; dopri5 is adaptive (atol, rtol).
    """
    from torchdiffeq import odeint  # here, not at the top: it imports scipy, which listing plugins does not need

    if solver not in ODE_SOLVERS:
        raise ValueError(f"unknown ODE solver '{solver}' (expected one of: {', '.join(ODE_SOLVERS)})")
    n = 2 if solver == "dopri5" else steps + 1
    ts = torch.linspace(t0, t1, n, device=x.device, dtype=torch.float64).to(x.dtype)

    def field(t, x):
        return velocity(x, t.expand(x.shape[0]))

    return odeint(field, x, ts, method=ODE_SOLVERS[solver], atol=atol, rtol=rtol)[-1]


def diffusion_coefficient(objective: FlowObjective, x, t, form="sigma", norm=1.0):
    """w(t) of the reverse SDE dx = [v + w * score] dt + sqrt(2 w) dW (SiT's forms)."""
    t = expand_like(t, x)
    if form == "constant":
        return torch.full_like(t, norm)
    if form == "sbdm":
        return norm * objective.path.drift_terms(x, t.flatten())[1]
    if form == "sigma":
        return norm * objective.path.sigma(t)[0]
    if form == "linear":
        return norm * (1 - t)
    if form == "decreasing":
        return 0.25 * (norm * torch.cos(math.pi * t) + 1) ** 2
    if form == "increasing-decreasing":
        return norm * torch.sin(math.pi * t) ** 2
    raise ValueError(f"unknown diffusion form '{form}' (expected one of: {', '.join(DIFFUSION_FORMS)})")


def gaussian(like: torch.Tensor, generator=None) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, on its device. ``generator`` may be one
    generator, or a list of generators, one per row, so that row i depends on its own
    generator only. Noise is drawn on each generator's own device, then moved: a CPU
    generator drives sampling on a GPU."""
    if generator is None:
        return torch.randn(like.shape, device=like.device, dtype=like.dtype)
    if isinstance(generator, (list, tuple)):
        rows = [torch.randn(like.shape[1:], generator=g, device=g.device, dtype=like.dtype) for g in generator]
        return torch.stack(rows).to(like.device)
    return torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def sde_solve(fields, diffusion, x, t0: float, t1: float, steps=250, solver="euler", last_step="mean",
              last_step_size=0.04, generator=None, tweedie=None):
    """Reverse SDE from t0 to t1 in ``steps - 1`` stochastic steps plus a last step.

    fields(x, t) -> (velocity, score); diffusion(x, t) -> w; ``generator``: see ``gaussian``. The last step
    goes from t1 to t1 + last_step_size without noise: ``mean`` follows the SDE drift, ``euler`` the ODE
    drift, ``tweedie`` jumps to E[x_data | x], ``none`` stops at t1.
    """
    if solver not in SDE_SOLVERS:
        raise ValueError(f"unknown SDE solver '{solver}' (expected one of: {', '.join(SDE_SOLVERS)})")
    if last_step not in LAST_STEPS:
        raise ValueError(f"unknown last step '{last_step}' (expected one of: {', '.join(LAST_STEPS)})")
    ts = torch.linspace(t0, t1, steps, dtype=torch.float64).tolist()
    dt = ts[1] - ts[0]
    batch = x.shape[0]

    def time(value):
        return torch.full((batch,), value, device=x.device, dtype=x.dtype)

    def drift(x, t):
        v, score = fields(x, t)
        return v + diffusion(x, t) * score

    for t in ts[:-1]:
        tt = time(t)
        dw = gaussian(x, generator) * math.sqrt(dt)
        if solver == "euler":
            x = x + drift(x, tt) * dt + torch.sqrt(2 * diffusion(x, tt)) * dw
        else:  # stochastic Heun: noise first, then a Heun step on the drift
            x = x + torch.sqrt(2 * diffusion(x, tt)) * dw
            k1 = drift(x, tt)
            k2 = drift(x + dt * k1, time(t + dt))
            x = x + 0.5 * dt * (k1 + k2)
    tt = time(ts[-1])
    if last_step == "mean":
        x = x + drift(x, tt) * last_step_size
    elif last_step == "euler":
        x = x + fields(x, tt)[0] * last_step_size
    elif last_step == "tweedie":
        x = tweedie(x, tt)
    return x


@dataclass
class SamplerConfig:
    """The ``sample`` section of a config."""

    method: Method = setting("ode", "probability-flow ODE or reverse SDE")
    solver: Solver = setting("heun", "ode: euler, heun or dopri5; sde: euler or heun")
    steps: int = setting(50, "solver steps (an SDE: time grid points, at least 2)", low=1)
    atol: float = setting(1e-6, "dopri5's absolute tolerance", low=0, open_low=True)
    rtol: float = setting(1e-3, "dopri5's relative tolerance", low=0, open_low=True)
    cfg_scale: float = setting(1.0, "classifier-free guidance scale; 1: no guidance")
    guidance_interval: tuple[float, float] = setting([0.0, 1.0], "[lo, hi] of t where guidance applies", low=0,
                                                     high=1, rule=lambda lo_hi: lo_hi[0] <= lo_hi[1],
                                                     text="{} with lo <= hi")
    cfg_channels: int | None = setting(None, "guide the first N channels only (SiT/DiT: 3); null: all", low=1)
    diffusion_form: DiffusionForm = setting("sigma", "the SDE's diffusion coefficient")
    diffusion_norm: float = setting(1.0, "the scale of the SDE's diffusion", low=0)
    last_step: LastStep = setting("mean", "the SDE's last, noise-free step")
    last_step_size: float = setting(0.04, "the length in t of the SDE's last step", low=0, high=1, open_high=True)
    num: int = setting(64, "preview samples", low=1)

    def __post_init__(self):
        k = self.cfg_channels
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"cfg_channels must be a positive integer or null (all channels), got {k!r}")

    def check(self) -> None:
        if self.method == "sde" and self.solver not in SDE_SOLVERS:
            raise ConfigError(f"sample.solver={self.solver}: expected one of {', '.join(SDE_SOLVERS)} with "
                              "sample.method=sde")
        if self.method == "sde" and self.steps < 2:
            raise ConfigError(f"sample.steps={self.steps}: expected an integer >= 2 with sample.method=sde "
                              "(time grid points)")


class Sampler:
    """Draws samples from a backbone trained with a FlowObjective.

    With ``cfg_scale != 1`` the conditional and null-condition outputs are
    mixed as ``uncond + scale * (cond - uncond)``, only for t inside
    ``guidance_interval`` (outside it the conditional output is used).
    """

    def __init__(self, objective: FlowObjective, config: SamplerConfig):
        self.objective, self.config = objective, config
        if config.method not in ("ode", "sde"):
            raise ValueError(f"unknown sampling method '{config.method}' (expected ode or sde)")

    def predict(self, model, x, t, cond, mask=None):
        """The model output, guided on the first ``cfg_channels`` channels; the rest stay conditional.

        ``cond`` is a tensor or a dict of tensors; ``mask`` (B, positions) marks valid positions.
        """
        cfg = self.config
        lo, hi = cfg.guidance_interval
        now = min(max(float(t[0]), 0.0), 1.0)  # dopri5 probes past t = 1, then interpolates back
        guided = cfg.cfg_scale != 1.0 and lo <= now <= hi
        if not guided:
            return model(x, t, cond, **({} if mask is None else {"mask": mask}))[0]
        null = model.drop_cond(cond, torch.ones(x.shape[0], dtype=torch.bool, device=x.device))
        masked = {} if mask is None else {"mask": torch.cat([mask, mask])}
        out = model(torch.cat([x, x]), torch.cat([t, t]), trees.cat([cond, null]), **masked)[0]
        c, u = out.chunk(2)
        mixed = u + cfg.cfg_scale * (c - u)
        k = cfg.cfg_channels
        return mixed if k is None else torch.cat([mixed[:, :k], c[:, k:]], dim=1)

    def evaluations(self) -> int | None:
        """Model evaluations per batch (one model call each: the doubled batch under CFG); None for
        dopri5, whose steps adapt."""
        cfg = self.config
        per_step = 2 if cfg.solver == "heun" else 1
        if cfg.method == "ode":
            return None if cfg.solver == "dopri5" else per_step * cfg.steps
        return per_step * (cfg.steps - 1) + (cfg.last_step != "none")

    @torch.no_grad()
    def __call__(self, model, noise, cond, generator=None, mask=None, progress=None):
        """Samples from ``noise``; ``progress()``, if given, is called after every model evaluation."""
        cfg, obj = self.config, self.objective

        def predict(x, t):
            out = self.predict(model, x, t, cond, mask)
            if progress is not None:
                progress()
            return out

        def velocity(x, t):
            return obj.velocity(predict(x, t), x, t)

        if cfg.method == "ode":
            t0, t1 = obj.interval(sampling=True)
            return ode_solve(velocity, noise, t0, t1, cfg.solver, cfg.steps, cfg.atol, cfg.rtol)

        last = 0.0 if cfg.last_step == "none" else cfg.last_step_size
        t0, t1 = obj.interval(sde=True, sampling=True, last_step_size=last)
        if cfg.diffusion_form.lower() == "sbdm":
            t0 = max(t0, obj.sample_eps)

        def fields(x, t):
            pred = predict(x, t)
            return obj.velocity(pred, x, t), obj.score(pred, x, t)

        def diffusion(x, t):
            return diffusion_coefficient(obj, x, t, cfg.diffusion_form.lower(), cfg.diffusion_norm)

        def tweedie(x, t):
            a = obj.path.alpha(expand_like(t, x))[0]
            s = obj.path.sigma(expand_like(t, x))[0]
            return (x + s**2 * fields(x, t)[1]) / a

        return sde_solve(fields, diffusion, noise, t0, t1, cfg.steps, cfg.solver, cfg.last_step, cfg.last_step_size,
                         generator, tweedie)


class CompiledModel:
    """A backbone's forward for the fixed-step samplers, through torch.compile with static shapes:
    one graph per input shape (under CFG, the doubled batch). Mode "reduce-overhead" also records
    each graph as a CUDA graph on a GPU (on a CPU it is plain compile): torch copies the inputs into
    the graph's static buffers and replays it. Torch's recording rather than one by hand (as
    train/modes.py's CapturedStep): it warms up, records a new shape when one comes (a smaller last
    batch, steps outside the guidance interval) and keeps one memory pool for all of them.
    Called like the backbone (no block captures), it returns a fresh output: a replay's own lives
    in that pool only until the next replay. Noise and the solver's arithmetic stay outside, eager.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.compiled = torch.compile(self.forward, dynamic=False, mode="reduce-overhead")

    def forward(self, x, t, cond, mask=None):
        return self.model(x, t, cond, **({} if mask is None else {"mask": mask}))[0]

    def __call__(self, x, t, cond, mask=None):
        return self.compiled(x, t, cond, mask).clone(), {}

    def drop_cond(self, cond, drop):
        return self.model.drop_cond(cond, drop)


def derive_seed(*entropy: int) -> int:
    """A 64-bit seed from a few integers (independent streams per sample)."""
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


@torch.no_grad()
def seeded_samples(sampler: Sampler, model, shape, cond, seed: int, start: int = 0, mask=None,
                   progress=None) -> torch.Tensor:
    """Samples ``start .. start + B - 1`` of the set ``seed``, in model space (B: the conditions' batch);
    ``progress``: see ``Sampler.__call__``.

    Sample i starts from noise drawn from its own CPU generator seeded by (seed, i), and
    an SDE draws its noise along the way from another, (seed, i, 1): a sample does not
    depend on the batch it is drawn in, on the number of ranks or on the device.
    """
    indices = range(start, start + trees.batch_size(cond))
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(derive_seed(seed, i)))
                         for i in indices]).to(trees.leaves(cond)[0].device)
    along = [torch.Generator().manual_seed(derive_seed(seed, i, 1)) for i in indices]
    return sampler(model, noise, cond, generator=along, mask=mask, progress=progress)
