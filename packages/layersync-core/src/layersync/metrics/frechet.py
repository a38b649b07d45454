"""Streaming Gaussian statistics of features, the Fréchet distance between them, and the
evaluator every modality's FID-like metric (FAD, FVD, motion FID) is made of.

Sums are kept in float64 and can be merged across ranks, so the statistics
do not depend on how the features were chunked or sharded.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from layersync.errors import DataError


class GaussianStats:
    """Running count, sum and sum of outer products of (N, D) feature batches."""

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, features: torch.Tensor) -> None:
        f = features.detach().reshape(features.shape[0], -1).to("cpu", torch.float64)
        if f.shape[1] != self.dim:
            raise ValueError(f"features have dimension {f.shape[1]}, these statistics {self.dim}")
        self.count += f.shape[0]
        self.total += f.sum(0)
        self.outer += f.T @ f

    def merge(self, other: "GaussianStats") -> "GaussianStats":
        self.count += other.count
        self.total += other.total
        self.outer += other.outer
        return self

    def summed(self) -> "GaussianStats":
        """A copy holding the sums of every rank (these statistics stay as they are)."""
        return GaussianStats(self.dim).merge(self).all_reduce()

    def all_reduce(self) -> "GaussianStats":
        """Sum the statistics of every rank (no-op outside torch.distributed)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            packed = torch.cat([torch.tensor([float(self.count)], dtype=torch.float64), self.total, self.outer.flatten()])
            packed = packed.to(device)
            dist.all_reduce(packed)
            packed = packed.cpu()
            self.count = int(round(packed[0].item()))
            self.total = packed[1 : 1 + self.dim].clone()
            self.outer = packed[1 + self.dim :].reshape(self.dim, self.dim).clone()
        return self

    @property
    def mean(self) -> np.ndarray:
        return (self.total / self.count).numpy()

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (divides by N - 1, like numpy.cov)."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
        mu = self.total / self.count
        cov = (self.outer - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return cov.numpy()

    @classmethod
    def of(cls, features) -> "GaussianStats":
        features = torch.as_tensor(features)
        stats = cls(features.reshape(features.shape[0], -1).shape[1])
        stats.update(features)
        return stats


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues clamped at 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), in float64.

    The symmetric form needs only eigendecompositions of symmetric matrices,
    which stay real and stable where sqrtm of the non-symmetric S1 S2 does not.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"statistics of different dimensions: {mu1.shape} vs {mu2.shape}")
    root1 = _sqrt_psd(s1)
    middle = root1 @ s2 @ root1
    # tr sqrt(M) = sum of sqrt(eigenvalues of M): eigenvalues only, no reconstruction
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_root)


def stored_gaussian(stats: dict, tag: str, dim: int, what: str):
    """``(mu, sigma)`` from stored reference statistics: ``mu_<tag>``/``sigma_<tag>``, else plain
    ``mu``/``sigma``; None when neither pair is there. Shapes (dim,) and (dim, dim) and finite
    values are checked, with a DataError naming the key (``what`` names the features)."""
    for mu_key, sigma_key in ((f"mu_{tag}", f"sigma_{tag}"), ("mu", "sigma")):
        if mu_key in stats or sigma_key in stats:
            break
    else:
        return None
    if mu_key not in stats or sigma_key not in stats:
        raise DataError(f"reference statistics need both {mu_key} and {sigma_key}, "
                        f"got only {mu_key if mu_key in stats else sigma_key}")
    mu, sigma = np.asarray(stats[mu_key], np.float64), np.asarray(stats[sigma_key], np.float64)
    for key, value, shape in ((mu_key, mu, (dim,)), (sigma_key, sigma, (dim, dim))):
        if value.shape != shape:
            raise DataError(f"reference statistics: {key} has shape {value.shape}, expected {shape} for the {what}")
        if not np.isfinite(value).all():
            raise DataError(f"reference statistics: {key} holds NaN or infinite values")
    return mu, sigma


class FrechetEvaluator:
    """Streams batches of generated and real sets through a feature network; ``compute()`` gives
    ``{metric: Fréchet distance}`` between the two Gaussians, then what ``report`` adds.

    A modality supplies its feature network as ``features(batch)``, (N, dim) feature batches of a
    batch that ``check`` validated (or feeds ``stats[real]`` from its own ``update``), and names for
    its messages: ``name`` (the metric), ``items`` (what the features of the generated and the real
    side count) and ``reference_items`` (what real data is called). Precomputed ``mu_<tag>``/
    ``sigma_<tag>`` (or plain ``mu``/``sigma``) replace the real side.
    """

    metric, name = "fid", "FID"
    items = ("samples", "reference")
    reference_items = "reference data"

    def __init__(self, dim: int, tag: str, what: str):
        self.dim, self.tag, self.what = dim, tag, what  # what: the features, in reference-statistics errors
        self.stats = {side: GaussianStats(dim) for side in (False, True)}
        self.reference = None  # precomputed (mu, sigma) replacing the real side

    def check(self, batch):
        return batch

    def features(self, batch):
        raise NotImplementedError(f"{type(self).__name__} supplies no feature network")

    @torch.no_grad()
    def update(self, batch, real: bool = False) -> None:
        batch = self.check(batch)
        if real and self.reference is not None:  # precomputed statistics replace the real side
            return
        for features in self.features(batch):
            self.stats[bool(real)].update(features)

    def use_reference_statistics(self, stats: dict) -> None:
        """Our stored statistics replace the real side (other tags are ignored; without ours nothing
        changes); real batches fed afterwards are not featurised."""
        stored = stored_gaussian(stats, self.tag, self.dim, self.what)
        if stored is not None:
            self.reference = stored

    def _gaussian(self, stats: GaussianStats, real: bool):
        if stats.count < 2:
            raise DataError(f"{self.name} needs at least 2 {self.items[real]}, got {stats.count}")
        return stats.mean, stats.cov

    def reference_statistics(self) -> dict:
        """``{"mu_<tag>", "sigma_<tag>"}`` of the real side, for an ``.npz`` to reuse."""
        mu, sigma = self.reference or self._gaussian(self.stats[True].summed(), True)
        return {f"mu_{self.tag}": mu, f"sigma_{self.tag}": sigma}

    def compute(self) -> dict:
        fake, real = self.stats[False].summed(), self.stats[True].summed()
        if self.reference is None and real.count == 0:
            raise DataError(f"{self.name} has no reference: no {self.reference_items} and no "
                            f"mu_{self.tag}/sigma_{self.tag} statistics")
        reference = self.reference or self._gaussian(real, True)
        return {self.metric: frechet_distance(*self._gaussian(fake, False), *reference), **self.report(fake, real)}

    def report(self, fake: GaussianStats, real: GaussianStats) -> dict:
        """What the modality reports beside the distance (counts, protocol), from the summed statistics."""
        return {}
