"""How ``layersync-eval --plugin video`` reads samples and references.

A folder of videos (the first ``FRAMES`` frames of each, RGB at its own size, decoded with
PyAV; the evaluator resizes), or a sample set's ``samples.npz`` (``arr_0``: float clips (N, C, T, H, W) in [-1, 1],
as ``layersync-sample`` writes them; a preview's ``.npz`` holds the same as ``samples``), or an ``.npz`` of stored
statistics (``mu_i3d``, ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from layersync.errors import DataError
from layersync.interfaces import SAMPLE_KEYS, samples_key

FRAMES = 16  # StyleGAN-V's fvd2048_16f
EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv")


class VideoFiles:
    """Videos under a folder (recursive, sorted): uint8 clips (N, 3, 16, H, W) of their first 16 frames."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.files = sorted(f for f in self.path.rglob("*") if f.is_file() and f.suffix.lower() in EXTENSIONS)
        if not self.files:
            raise DataError(f"folder {self.path} holds no videos ({', '.join(EXTENSIONS)})")

    def __len__(self):
        return len(self.files)

    def _clip(self, file: Path) -> torch.Tensor:
        """The first 16 frames, RGB, decoded with PyAV (sequential reading: no random access needed)."""
        import av

        frames = []
        try:
            with av.open(str(file)) as container:
                for frame in container.decode(video=0):
                    frames.append(frame.to_ndarray(format="rgb24"))
                    if len(frames) == FRAMES:
                        break
        except Exception as exc:  # PyAV raises its own error classes per container and codec
            raise DataError(f"cannot decode video {file}: {exc}") from None
        if len(frames) < FRAMES:
            raise DataError(f"video {file} has {len(frames)} frames; FVD takes clips of {FRAMES}")
        return torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2)  # (3, T, H, W)

    def batches(self, size: int):
        for start in range(0, len(self.files), size):
            clips = [self._clip(f) for f in self.files[start : start + size]]
            shapes = {tuple(c.shape) for c in clips}
            if len(shapes) > 1:
                raise DataError(f"videos in {self.path} have different sizes ({sorted(shapes)}); expected one size")
            yield torch.stack(clips)

    def statistics(self) -> dict:
        return {}


class ClipArchive:
    """A sample set's or a preview's float clips, or stored statistics only."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with np.load(self.path, allow_pickle=False) as archive:
                self.stats = {k: archive[k] for k in archive.files if k.startswith(("mu", "sigma"))}
                key = samples_key(archive.files)
                clips = archive[key] if key else None
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.path} is not a readable .npz ({exc})") from None
        if clips is None and not self.stats:
            raise DataError(f"{self.path} holds no clips ({' or '.join(SAMPLE_KEYS)}) and no mu/sigma statistics")
        if clips is not None and (clips.ndim != 5 or clips.dtype.kind not in "fu"):
            raise DataError(f"{self.path}: {key} is {clips.dtype} of shape {clips.shape}; expected clips "
                            "(N, C, T, H, W), float in [-1, 1] or uint8")
        self.clips = clips if clips is not None else np.zeros((0, 3, FRAMES, 1, 1), np.float32)

    def __len__(self):
        return len(self.clips)

    def batches(self, size: int):
        for start in range(0, len(self.clips), size):
            yield torch.from_numpy(np.ascontiguousarray(self.clips[start : start + size]))

    def statistics(self) -> dict:
        return dict(self.stats)


def read_samples(path: Path):
    """The ``read_samples`` of the video modality."""
    return VideoFiles(path) if Path(path).is_dir() else ClipArchive(path)
