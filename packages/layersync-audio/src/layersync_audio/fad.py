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
from layersync.metrics import FrechetEvaluator, GaussianStats
from layersync_audio.audio_io import Clips


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


class FADEvaluator(FrechetEvaluator):
    """Streams clips through an embedder; ``compute()`` gives ``fad_<tag>`` against the reference."""

    items = ("windows of samples", "windows of reference clips")
    reference_items = "reference clips"

    def __init__(self, embedder, batch: int = 64, device="cpu"):
        if batch < 1:
            raise ConfigError(f"FAD batch must be at least 1, got {batch}")
        tag, dim = embedder.tag, embedder.dim
        super().__init__(dim, tag, f"{dim}-d {tag} embeddings")
        self.metric, self.name = f"fad_{tag}", f"FAD ({tag})"
        self.embedder, self.batch = embedder.to(device), batch
        self.weights_path = getattr(embedder, "weights_path", None)
        self.clips = {False: 0, True: 0}

    def check(self, clips: Clips) -> Clips:
        if not isinstance(clips, Clips):
            raise DataError(f"FAD takes layersync_audio Clips, got {type(clips).__name__}")
        if clips.sample_rate <= 0:
            raise DataError(f"clips have sample rate {clips.sample_rate}, expected a positive number of Hz")
        return clips

    def features(self, clips: Clips):
        """Embeddings of batches of at most ``batch`` windows, taken across the clips."""
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
                    yield self.embedder.embed(torch.cat(pending))
                    pending, held = [], 0
        if pending:
            yield self.embedder.embed(torch.cat(pending))

    def update(self, clips: Clips, real: bool = False) -> None:
        """Reference clips fed after precomputed statistics are counted, not embedded."""
        super().update(clips, real)
        self.clips[bool(real)] += len(clips)

    def report(self, fake: GaussianStats, real: GaussianStats) -> dict:
        tag = self.tag
        num_samples, num_ref = _summed_counts(self.clips[False], self.clips[True])
        return {
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
