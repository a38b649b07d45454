"""A Fréchet distance between the spectra of two sets of signals (the FID/FAD recipe, minus the network)."""

from __future__ import annotations

import torch

from layersync.errors import DataError
from layersync.metrics.frechet import GaussianStats, frechet_distance


class SpectrumFD:
    """Streaming evaluator: ``update(signals, real=...)`` with (N, channels, length) batches,
    then ``compute() -> {"fd_spectrum": ...}`` (0 for sets with the same statistics).

    Features: ``log(1 + |FFT|)`` of the first ``bins`` frequencies of each channel. The factory
    takes ``weights``, ``batch`` and ``device`` like every evaluator's; with no feature network,
    ``weights`` and ``batch`` are unused.
    """

    def __init__(self, weights=None, batch: int = 50, device="cpu", bins: int = 16):
        self.bins, self.device = bins, torch.device(device)
        self.stats: dict[bool, GaussianStats] = {}

    def features(self, signals) -> torch.Tensor:
        x = torch.as_tensor(signals, dtype=torch.float32).to(self.device)
        if x.ndim == 2:
            x = x[:, None]
        if x.ndim != 3:
            raise DataError(f"expected signals of shape (N, channels, length), got {tuple(x.shape)}")
        spectrum = torch.fft.rfft(x, dim=-1).abs()[..., : self.bins]
        return torch.log1p(spectrum).flatten(1)

    def update(self, samples, real: bool = False) -> None:
        features = self.features(samples)
        self.stats.setdefault(real, GaussianStats(features.shape[1])).update(features)

    def compute(self) -> dict[str, float]:
        for real, what in ((True, "reference"), (False, "samples")):
            if real not in self.stats or self.stats[real].count < 2:
                raise DataError(f"the spectrum FD needs at least 2 {what} signals")
        fake, ref = self.stats[False], self.stats[True]
        if fake.dim != ref.dim:
            raise DataError(f"samples give {fake.dim} features, the reference {ref.dim}: other channels or bins")
        return {"fd_spectrum": frechet_distance(fake.mean, fake.cov, ref.mean, ref.cov)}
