"""Interpolant paths x_t = alpha_t * x_data + sigma_t * noise, t in [0, 1].

SiT's convention: t = 0 is pure noise, t = 1 is data. Each path gives
alpha, sigma and their time derivatives; the conversions between velocity,
noise and score predictions follow from them.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

PathName = Literal["linear", "gvp", "vp"]  # the names of PATHS


def expand_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against x."""
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1)))


class Path:
    name = ""

    def alpha(self, t):
        """(alpha_t, d alpha_t / dt)."""
        raise NotImplementedError

    def sigma(self, t):
        """(sigma_t, d sigma_t / dt)."""
        raise NotImplementedError

    def interpolate(self, x1, x0, t):
        """x_t and the velocity target d x_t / dt for data x1 and noise x0."""
        t = expand_like(t, x1)
        a, da = self.alpha(t)
        s, ds = self.sigma(t)
        return a * x1 + s * x0, da * x1 + ds * x0

    def drift_terms(self, x, t):
        """(mean, var) with velocity = mean + var * score (probability-flow ODE)."""
        t = expand_like(t, x)
        a, da = self.alpha(t)
        s, ds = self.sigma(t)
        ratio = da / a
        return ratio * x, ratio * s**2 - s * ds

    def velocity_from_score(self, score, x, t):
        mean, var = self.drift_terms(x, t)
        return mean + var * score

    def score_from_noise(self, noise, x, t):
        return -noise / self.sigma(expand_like(t, x))[0]

    def score_from_velocity(self, velocity, x, t):
        # Written with alpha / alpha' so that it stays finite at t = 0.
        t = expand_like(t, x)
        a, da = self.alpha(t)
        s, ds = self.sigma(t)
        r = a / da
        return (r * velocity - x) / (s**2 - r * ds * s)


class LinearPath(Path):
    name = "linear"

    def alpha(self, t):
        return t, torch.ones_like(t)

    def sigma(self, t):
        return 1 - t, -torch.ones_like(t)


class GVPPath(Path):
    """Generalised variance preserving: alpha^2 + sigma^2 = 1."""

    name = "gvp"

    def alpha(self, t):
        return torch.sin(t * math.pi / 2), math.pi / 2 * torch.cos(t * math.pi / 2)

    def sigma(self, t):
        return torch.cos(t * math.pi / 2), -math.pi / 2 * torch.sin(t * math.pi / 2)


class VPPath(Path):
    """The DDPM/SBDM variance-preserving path (beta from 0.1 to 20)."""

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_max = beta_min, beta_max

    def _log_mean(self, t):
        u = 1 - t
        value = -0.25 * u**2 * (self.beta_max - self.beta_min) - 0.5 * u * self.beta_min
        slope = 0.5 * u * (self.beta_max - self.beta_min) + 0.5 * self.beta_min
        return value, slope

    def alpha(self, t):
        value, slope = self._log_mean(t)
        a = torch.exp(value)
        return a, a * slope

    def sigma(self, t):
        a, da = self.alpha(t)
        s = torch.sqrt(1 - a**2)
        return s, -a * da / s


PATHS = {p.name: p for p in (LinearPath, GVPPath, VPPath)}


def make_path(name: str) -> Path:
    if name not in PATHS:
        raise ValueError(f"unknown transport path '{name}' (expected one of: {', '.join(PATHS)})")
    return PATHS[name]()
