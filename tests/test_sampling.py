"""Samplers carry a Gaussian to a known Gaussian (analytic velocity and score)."""

import pytest
import torch

from layersync import FlowObjective, Sampler, SamplerConfig
from layersync.sampling import ode_solve, sde_solve

MU, S = 2.0, 0.5  # target N(MU, S^2)


def marginal(t):
    """Mean and std of x_t = t x1 + (1 - t) x0, x1 ~ N(MU, S^2), x0 ~ N(0, 1)."""
    return t * MU, torch.sqrt(t**2 * S**2 + (1 - t) ** 2)


class GaussianVelocity(torch.nn.Module):
    """The exact marginal velocity field, posing as a backbone."""

    depth = 1

    def forward(self, x, t, cond=None, capture=()):
        t = t.reshape(-1, *([1] * (x.dim() - 1))).double()
        m, s = marginal(t)
        ds = (t * S**2 - (1 - t)) / s
        return (MU + ds / s * (x - m)).to(x.dtype), {}

    def drop_cond(self, cond, drop):
        return cond


@pytest.mark.parametrize("solver,steps,tol", [("euler", 200, 2e-2), ("heun", 40, 1e-3), ("dopri5", 0, 1e-4)])
def test_ode_maps_gaussian_to_target(solver, steps, tol):
    x0 = torch.randn(4000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = GaussianVelocity()
    out = ode_solve(lambda x, t: model(x, t)[0], x0, 0.0, 1.0, solver, steps, atol=1e-8, rtol=1e-8)
    # the exact flow map is x -> MU + S * x0: check pathwise, then the moments
    assert (out - (MU + S * x0)).abs().max() < tol
    assert out.mean().item() == pytest.approx(MU, abs=0.05)
    assert out.var().item() == pytest.approx(S**2, rel=0.05)


def test_ode_sampler_with_noise_prediction_converts_to_velocity():
    """A noise-predicting model of the same Gaussian, sampled through the Sampler."""

    class GaussianNoise(GaussianVelocity):
        def forward(self, x, t, cond=None, capture=()):
            tt = t.reshape(-1, 1).double()
            m, s = marginal(tt)
            score = -(x - m) / s**2
            return (-score * (1 - tt)).to(x.dtype), {}  # noise = -sigma_t * score

    sampler = Sampler(FlowObjective("linear", "noise"), SamplerConfig(solver="dopri5", atol=1e-8, rtol=1e-8))
    x0 = torch.randn(4000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = sampler(GaussianNoise(), x0, None)
    assert out.mean().item() == pytest.approx(MU, abs=0.05)
    assert out.std().item() == pytest.approx(S, rel=0.05)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_sde_sampler_reaches_target_moments(solver):
    config = SamplerConfig(method="sde", solver=solver, steps=250, last_step="mean", last_step_size=0.04)
    sampler = Sampler(FlowObjective("linear", "velocity"), config)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(20000, 1, dtype=torch.float64, generator=g)
    out = sampler(GaussianVelocity(), x0, None, generator=g)
    assert out.mean().item() == pytest.approx(MU, abs=0.03)
    assert out.std().item() == pytest.approx(S, rel=0.06)


def test_cfg_mixes_conditional_and_null_outputs_inside_interval_only():
    class Echo(torch.nn.Module):
        depth = 1

        def forward(self, x, t, cond, capture=()):
            return x * 0 + cond.reshape(-1, 1).to(x.dtype), {}

        def drop_cond(self, cond, drop):
            return torch.where(drop, torch.zeros_like(cond), cond)

    cfg = SamplerConfig(cfg_scale=3.0, guidance_interval=(0.5, 1.0))
    sampler = Sampler(FlowObjective(), cfg)
    x, cond = torch.zeros(2, 1), torch.tensor([1.0, 2.0])
    inside = sampler.predict(Echo(), x, torch.full((2,), 0.7), cond)
    outside = sampler.predict(Echo(), x, torch.full((2,), 0.2), cond)
    assert inside.flatten().tolist() == [3.0, 6.0]  # 0 + 3 * (c - 0)
    assert outside.flatten().tolist() == [1.0, 2.0]


def test_unknown_solver_is_an_error():
    with pytest.raises(ValueError, match="solver"):
        ode_solve(lambda x, t: x, torch.zeros(1), 0.0, 1.0, "rk45")


@pytest.mark.parametrize("per_sample", [False, True])
def test_sde_noise_comes_from_the_generators_device(monkeypatch, per_sample):
    """On CUDA, torch.randn refuses a generator of another device; a preview with a CPU
    generator then crashed at the first SDE step. Noise is drawn on each generator's own
    device and moved to the sample's ("meta" stands in for the GPU here)."""
    real = torch.randn

    def strict(*shape, generator=None, device=None, **kwargs):
        if generator is not None and torch.device(device or "cpu").type != generator.device.type:
            raise RuntimeError(f"Expected a '{device}' device type for generator but found '{generator.device.type}'")
        return real(*shape, generator=generator, device=device, **kwargs)

    monkeypatch.setattr(torch, "randn", strict)
    x = torch.empty(3, 2, device="meta")
    generator = [torch.Generator() for _ in range(3)] if per_sample else torch.Generator()
    out = sde_solve(lambda x, t: (torch.zeros_like(x), torch.zeros_like(x)), lambda x, t: torch.ones_like(x),
                    x, 0.0, 0.96, steps=3, generator=generator)
    assert out.device.type == "meta" and out.shape == (3, 2)
