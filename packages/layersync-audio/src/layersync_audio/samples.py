"""How ``layersync-eval --plugin audio`` reads samples and references.

A folder of audio files (searched recursively, sorted), a sample set's ``samples.npz``
(``arr_0`` float waveforms (N, channels, samples) or (N, samples), ``sample_rate``), a preview's
``.npz`` (the same as ``samples``), or an
``.npz`` of reference statistics only (``mu_<net>``/``sigma_<net>``, as ``--save-ref-stats``
writes them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from layersync.errors import DataError
from layersync.interfaces import SAMPLE_KEYS, samples_key
from layersync_audio.audio_io import AUDIO_EXTENSIONS, Clips, read_audio

STATISTICS = ("mu", "sigma")  # key prefixes of stored reference statistics


class AudioFolder:
    """Audio files under a folder; each batch is resampled to the first file's sample rate."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.files = sorted(f for f in self.path.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
        if not self.files:
            raise DataError(f"folder {self.path} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
        self.sample_rate = read_audio(self.files[0])[1]

    def __len__(self):
        return len(self.files)

    def _read(self, file: Path) -> torch.Tensor:
        import torchaudio.functional as AF

        waveform, rate = read_audio(file)
        x = torch.from_numpy(waveform)
        return x if rate == self.sample_rate else AF.resample(x, rate, self.sample_rate)

    def batches(self, size: int):
        for start in range(0, len(self.files), size):
            yield Clips([self._read(f) for f in self.files[start : start + size]], self.sample_rate)

    def statistics(self) -> dict:
        return {}


class AudioArchive:
    """A sample set's or a preview's ``.npz`` (waveforms and their sample rate), or stored reference statistics."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path} does not exist (expected a folder of audio files or an .npz)")
        try:
            with np.load(self.path) as archive:
                self.names = list(archive.files)
                self.stats = {k: archive[k] for k in self.names if k.startswith(STATISTICS)}
                self.key = samples_key(self.names)
                waveforms = archive[self.key] if self.key else None
                rate = archive["sample_rate"] if "sample_rate" in self.names else None
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.path} is not a readable .npz ({exc})") from None
        if waveforms is None and not self.stats:
            raise DataError(f"{self.path} holds no waveforms ({' or '.join(SAMPLE_KEYS)}) and no mu/sigma statistics "
                            f"(it holds {', '.join(self.names) or 'nothing'})")
        self.waveforms = np.zeros((0, 1, 1), np.float32) if waveforms is None else self._checked(waveforms, rate)
        self.sample_rate = int(rate) if rate is not None else 0

    def _checked(self, waveforms: np.ndarray, rate) -> np.ndarray:
        if rate is None:
            raise DataError(f"{self.path} holds {self.key} but no sample_rate (layersync-sample writes both)")
        if waveforms.dtype.kind != "f" or waveforms.ndim not in (2, 3):
            raise DataError(f"{self.path}: {self.key} is {waveforms.dtype} of shape {waveforms.shape}; expected float "
                            "waveforms (N, channels, samples) or (N, samples)")
        if not np.isfinite(waveforms).all():
            bad = int(np.flatnonzero(~np.isfinite(waveforms.reshape(len(waveforms), -1)).all(1))[0])
            raise DataError(f"{self.path}: sample {bad} of {self.key} holds NaN or infinite values")
        return waveforms[:, None] if waveforms.ndim == 2 else waveforms

    def __len__(self):
        return len(self.waveforms)

    def batches(self, size: int):
        for start in range(0, len(self), size):
            chunk = self.waveforms[start : start + size]
            yield Clips([torch.from_numpy(np.ascontiguousarray(w, np.float32)) for w in chunk], self.sample_rate)

    def statistics(self) -> dict:
        return dict(self.stats)


def read_samples(path: Path):
    """The ``read_samples`` of the audio modality."""
    return AudioFolder(path) if Path(path).is_dir() else AudioArchive(path)
