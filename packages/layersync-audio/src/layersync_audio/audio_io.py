"""Reading and writing audio files (soundfile: WAV, FLAC, MP3, OGG/Vorbis/Opus), checked.

Every function here names the file in its errors. Waveforms are float32
(channels, samples) in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from layersync.errors import DataError
from layersync.files import atomic

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus")


@dataclass
class Clips:
    """A batch of waveforms at one sample rate; lengths and channel counts may differ."""

    waveforms: list[torch.Tensor]  # each float32 (channels, samples)
    sample_rate: int

    def __len__(self) -> int:
        return len(self.waveforms)


def check_extension(path: Path) -> None:
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        raise DataError(f"{path}: unsupported audio extension '{path.suffix}' (expected {', '.join(AUDIO_EXTENSIONS)})")


class AudioInfo(NamedTuple):
    frames: int
    sample_rate: int
    channels: int


def audio_info(path: str | Path) -> AudioInfo:
    """The header only, nothing decoded; DataError for a bad extension, a missing, empty or unreadable file."""
    import soundfile

    path = Path(path)
    check_extension(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"cannot read audio file {path}: {exc.strerror}") from None
    if size == 0:
        raise DataError(f"audio file {path} is empty (0 bytes)")
    try:
        info = soundfile.info(str(path))
    except Exception as exc:  # as in read_audio
        raise DataError(f"cannot read audio file {path}: {exc}") from None
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))


def read_audio(path: str | Path, start: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
    """``(waveform float32 (channels, samples), sample_rate)``; DataError for unreadable, empty or non-finite audio.

    ``start``, ``frames``: decode only that window (in samples; -1: to the end).
    """
    import soundfile

    path = Path(path)
    check_extension(path)
    try:
        data, rate = soundfile.read(str(path), frames=frames, start=start, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError or TypeError by format
        raise DataError(f"cannot decode audio file {path}: {exc}") from None
    if data.size == 0:
        raise DataError(f"audio file {path} holds no samples")
    if not np.isfinite(data).all():
        raise DataError(f"audio file {path} holds NaN or infinite samples")
    return np.ascontiguousarray(data.T), int(rate)


def write_wav(path: str | Path, waveform, sample_rate: int) -> Path:
    """Float (channels, samples) or (samples,) in [-1, 1] -> 16-bit PCM WAV, written atomically."""
    import soundfile

    x = torch.as_tensor(waveform).detach().float().cpu()
    x = x[None] if x.ndim == 1 else x
    if not torch.isfinite(x).all():
        raise DataError(f"refusing to write {path}: the waveform holds NaN or infinite samples")
    path = Path(path)
    with atomic(path) as tmp:
        soundfile.write(str(tmp), x.clamp(-1, 1).T.numpy(), int(sample_rate), subtype="PCM_16", format="WAV")
    return path
