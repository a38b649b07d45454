"""Fréchet Audio Distance (Kilgour et al., 2019) on VGGish or CLAP embeddings, as fadtk computes it.

Every clip is mixed to mono, resampled to the embedder's rate
(``torchaudio.functional.resample``) and cut into the embedder's windows; each
window gives one embedding, and the Gaussian of a side is that of all its windows
(float64 sums, merged across ranks). A clip shorter than one window is zero-padded
to one, as fadtk does.

An embedder has ``tag``, ``sample_rate``, ``dim``, ``to(device)``, ``windows(mono
(samples,)) -> (n, window)`` and ``embed(windows) -> (n, dim)`` (see
``vggish.VGGishEmbedder``, ``clap.ClapEmbedder``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torchaudio

from layersync.errors import ConfigError, DataError
from layersync.metrics import GaussianStats, frechet_distance, stored_gaussian
from layersync_audio.audio_io import Clips


def _summed(stats: GaussianStats) -> GaussianStats:
    return GaussianStats(stats.dim).merge(stats).all_reduce()


def _summed_counts(*counts: int) -> list[int]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        packed = torch.tensor(counts, dtype=torch.int64, device=device)
        dist.all_reduce(packed)
        return packed.tolist()
    return list(counts)


def as_mono(waveform, index: int) -> torch.Tensor:
    """float (channels, samples) or (samples,) -> float32 (samples,); DataError naming the clip otherwise."""
    x = torch.as_tensor(waveform)
    if x.ndim not in (1, 2) or not x.is_floating_point() or x.shape[-1] == 0:
        raise DataError(f"clip {index}: expected a float waveform (channels, samples), got {x.dtype} "
                        f"of shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise DataError(f"clip {index} holds NaN or infinite samples")
    return (x if x.ndim == 1 else x.mean(0)).float()


class FADEvaluator:
    """Streams clips through an embedder; ``compute()`` gives ``fad_<tag>`` against the reference."""

    def __init__(self, embedder, batch: int = 64, device="cpu"):
        if batch < 1:
            raise ConfigError(f"FAD batch must be at least 1, got {batch}")
        self.embedder, self.batch = embedder.to(device), batch
        self.weights_path = getattr(embedder, "weights_path", None)
        self.stats = {side: GaussianStats(embedder.dim) for side in (False, True)}
        self.clips = {False: 0, True: 0}
        self.reference = None  # precomputed (mu, sigma) replacing the real side

    def _windows(self, clips: Clips):
        """Batches of at most ``batch`` windows, taken across the clips."""
        pending, held = [], 0
        for index, waveform in enumerate(clips.waveforms):
            mono = as_mono(waveform, index)
            if clips.sample_rate != self.embedder.sample_rate:
                mono = torchaudio.functional.resample(mono, clips.sample_rate, self.embedder.sample_rate)
            windows = self.embedder.windows(mono)
            while len(windows):
                take = windows[: self.batch - held]
                pending.append(take)
                held += len(take)
                windows = windows[len(take):]
                if held == self.batch:
                    yield torch.cat(pending)
                    pending, held = [], 0
        if pending:
            yield torch.cat(pending)

    @torch.no_grad()
    def update(self, clips: Clips, real: bool = False) -> None:
        if not isinstance(clips, Clips):
            raise DataError(f"FAD takes layersync_audio Clips, got {type(clips).__name__}")
        if clips.sample_rate <= 0:
            raise DataError(f"clips have sample rate {clips.sample_rate}, expected a positive number of Hz")
        if real and self.reference is not None:  # precomputed statistics replace these clips
            self.clips[True] += len(clips)
            return
        for windows in self._windows(clips):
            self.stats[bool(real)].update(self.embedder.embed(windows))
        self.clips[bool(real)] += len(clips)

    def use_reference_statistics(self, stats: dict) -> None:
        """Precomputed ``mu_<tag>``/``sigma_<tag>`` (or plain ``mu``/``sigma``) replace the real side.

        Other evaluators' statistics (other tags) are ignored; without ours nothing changes. Reference
        clips fed afterwards are counted but not embedded.
        """
        tag, dim = self.embedder.tag, self.embedder.dim
        stored = stored_gaussian(stats, tag, dim, f"{dim}-d {tag} embeddings")
        if stored is not None:
            self.reference = stored

    def _gaussian(self, stats: GaussianStats, what: str):
        if stats.count < 2:
            raise DataError(f"FAD ({self.embedder.tag}) needs at least 2 windows of {what}, got {stats.count}")
        return stats.mean, stats.cov

    def reference_statistics(self) -> dict:
        """``{"mu_<tag>", "sigma_<tag>"}`` of the real side, for an ``.npz`` to reuse."""
        tag = self.embedder.tag
        mu, sigma = self.reference or self._gaussian(_summed(self.stats[True]), "reference clips")
        return {f"mu_{tag}": mu, f"sigma_{tag}": sigma}

    def compute(self) -> dict:
        tag = self.embedder.tag
        fake, real = _summed(self.stats[False]), _summed(self.stats[True])
        num_samples, num_ref = _summed_counts(self.clips[False], self.clips[True])
        if self.reference is None and real.count == 0:
            raise DataError(f"FAD ({tag}) has no reference: no reference clips and no mu_{tag}/sigma_{tag} statistics")
        mu_ref, sigma_ref = self.reference or self._gaussian(real, "reference clips")
        return {
            f"fad_{tag}": frechet_distance(*self._gaussian(fake, "samples"), mu_ref, sigma_ref),
            "num_samples": num_samples,
            "num_ref": num_ref,
            f"windows_{tag}": fake.count,
            f"windows_ref_{tag}": real.count,
            f"reference_{tag}": "precomputed" if self.reference is not None else "computed",
        }


def fad_vggish(weights=None, batch: int = 64, device="cpu") -> FADEvaluator:
    """FAD on VGGish (``weights``: the ``vggish-10086976.pth`` file; None: the weights folder)."""
    from layersync_audio.vggish import VGGishEmbedder, load_vggish

    return FADEvaluator(VGGishEmbedder(load_vggish(weights)), batch=batch, device=device)


def fad_clap(weights=None, batch: int = 16, device="cpu") -> FADEvaluator:
    """FAD on LAION-CLAP (``weights``: the checkpoint folder; None: ``larger_clap_music`` in the weights folder)."""
    from layersync_audio.clap import ClapEmbedder

    return FADEvaluator(ClapEmbedder(weights), batch=batch, device=device)
