"""Audio samples in the forms people use: WAV files to listen to, a spectrogram grid to look at."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from layersync.errors import ConfigError
from layersync.files import atomic
from layersync.interfaces import Preview
from layersync_audio.audio_io import write_wav

GAP_SECONDS = 0.25  # silence between the samples of a preview WAV
CELL = (96, 128)  # (height, width) of one spectrogram in the grid
DB_RANGE = 80.0


def _rate(info: dict) -> int:
    if "sample_rate" not in info:
        raise ConfigError("writing audio needs the tokenizer's sample rate (tokenizer.sample_info has no sample_rate)")
    return int(info["sample_rate"])


def log_spectrogram(waveform: torch.Tensor, n_fft: int = 512) -> torch.Tensor:
    """(channels, samples) -> dB magnitude of the channel mean, (freq, frames), clipped to DB_RANGE below 0 dB."""
    mono = waveform.float().mean(0)
    if len(mono) < n_fft:
        mono = torch.nn.functional.pad(mono, (0, n_fft - len(mono)))
    spec = torch.stft(mono, n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft), return_complex=True).abs()
    db = 20 * torch.log10(spec.clamp_min(1e-5) / (n_fft / 4))
    return db.clamp(-DB_RANGE, 0)


def spectrogram_grid(x: torch.Tensor) -> np.ndarray:
    """(N, channels, samples) -> uint8 RGB grid of spectrograms (low frequencies at the bottom, magma colours)."""
    from matplotlib import colormaps

    n = len(x)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    h, w = CELL
    grid = np.zeros(((h + 2) * rows + 2, (w + 2) * cols + 2))
    for i, waveform in enumerate(x):
        db = log_spectrogram(waveform).flip(0)[None, None]
        cell = torch.nn.functional.interpolate(db, size=CELL, mode="bilinear", align_corners=False)[0, 0]
        r, c = divmod(i, cols)
        grid[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + c * (w + 2): 2 + c * (w + 2) + w] = cell.numpy() / DB_RANGE + 1
    return (colormaps["magma"](grid)[..., :3] * 255).astype(np.uint8)


def save_audio(x: torch.Tensor, stem: Path, info: dict) -> Preview:
    """Decoded waveforms (N, channels, samples) -> ``stem.png`` (spectrogram grid) and ``stem.wav``
    (the samples one after another, in grid order, a short silence apart). Returns the WAV's preview."""
    rate = _rate(info)
    stem = Path(stem)
    gap = torch.zeros(x.shape[1], int(GAP_SECONDS * rate))
    wav = write_wav(stem.with_suffix(".wav"), torch.cat([part for clip in x for part in (clip, gap)], dim=1), rate)
    with atomic(stem.with_suffix(".png")) as tmp:
        Image.fromarray(spectrogram_grid(x)).save(tmp, format="png")
    return Preview("audio", wav, rate)


def save_wavs(array: np.ndarray, start: int, folder: Path, info: dict) -> None:
    """One WAV per sample of a sample set: ``folder/wav/000123.wav`` (the sample's index)."""
    rate = _rate(info)
    for i, waveform in enumerate(array, start=start):
        write_wav(Path(folder) / "wav" / f"{i:06d}.wav", waveform, rate)
