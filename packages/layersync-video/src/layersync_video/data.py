"""Video data: a folder of videos (decord) and the generated moving digits.

Items are ``(clip float32 (channels, frames, height, width) in [-1, 1], label)``.
Video files are read with decord (``decord.VideoReader``, random access with
``get_batch``), installed from ``eva-decord``: decord 0.6.0 rebuilt, the same ``decord``
module, with wheels for x86-64 Linux and Windows and (Python <= 3.11) macOS. A file that
decord cannot decode but PyAV can (decord fails on frames 8, 16, 24 or 48 pixels wide,
among others) is read with PyAV, from its start.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from layersync.data import SkipsBadItems
from layersync.errors import ConfigError, DataError


VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv")
VFR_TOLERANCE = 0.25  # a frame interval this far (relative) from the median one marks a variable frame rate
LUMA = (0.299, 0.587, 0.114)


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"data.{name} must be a positive integer, got {value!r}")
    return value


def video_files(folder: Path) -> list[Path]:
    """The video files under ``folder``, recursively, sorted; DataError when there are none."""
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in VIDEO_EXTENSIONS and f.is_file())
    if not files:
        raise DataError(f"{folder} holds no video files ({', '.join(VIDEO_EXTENSIONS)})")
    return files


def _reader(path: Path):
    import decord

    try:
        return decord.VideoReader(str(path), num_threads=1)  # one decoding thread: DataLoader workers scale
    except Exception as exc:  # decord raises RuntimeError or DECORDError
        raise DataError(f"cannot open video file {path}: {str(exc).splitlines()[0][:200]}") from None


def decord_frames(path: Path, indices: list[int]) -> np.ndarray:
    """Frames ``indices`` of ``path`` as (T, H, W, 3) uint8 RGB, read with decord."""
    return _reader(path).get_batch(indices).asnumpy()


def pyav_frames(path: Path, indices: list[int]) -> np.ndarray:
    """Frames ``indices`` (ascending) of ``path`` as (T, H, W, 3) uint8 RGB, decoded with PyAV from the start."""
    import av

    wanted, frames = set(indices), {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")
            if i >= indices[-1]:
                break
    if len(frames) < len(wanted):
        raise DataError(f"video file {path} ends before frame {min(wanted - frames.keys())}")
    return np.stack([frames[i] for i in indices])


def _decoder(vr, path: Path, n: int) -> Callable:
    """``decord_frames``, or ``pyav_frames`` where decord cannot decode ``path``'s last frame; an error where
    neither can (a truncated file whose index survived fails here)."""
    try:
        vr.get_batch([n - 1])
        return decord_frames
    except Exception:  # decord raises DECORDError, e.g. "DECORDArrayCopyFromTo: The size must exactly match"
        pyav_frames(path, [n - 1])
        return pyav_frames


def probe(path: Path, need: int) -> tuple[int, float, Callable]:
    """Open ``path`` and check it: frames, at least ``need`` of them, a decodable last frame, a constant
    frame rate (from the frame timestamps). Returns (frames, fps, the function that decodes its frames:
    ``decord_frames`` or ``pyav_frames``); DataError naming the file otherwise."""
    vr = _reader(path)
    n = len(vr)
    if n == 0:
        raise DataError(f"video file {path} holds no frames")
    if n < need:
        raise DataError(f"video file {path} is too short: {n} frames; the clip needs {need} (frames x stride)")
    try:
        starts = vr.get_frame_timestamp(range(n))[:, 0]
        decode = _decoder(vr, path, n)
    except Exception as exc:
        raise DataError(f"video file {path} is truncated or corrupt: {str(exc).splitlines()[0][:200]}") from None
    steps = np.diff(starts)
    if len(steps):
        median = float(np.median(steps))
        if median <= 0 or np.abs(steps - median).max() > VFR_TOLERANCE * median:
            raise DataError(f"video file {path} has a variable frame rate (frame intervals "
                            f"{steps.min():.4f} to {steps.max():.4f} s); re-encode it at a constant rate")
        return n, 1.0 / median, decode
    return n, float(vr.get_avg_fps()), decode


def resize_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """(T, C, H, W) float -> short side resized to ``size`` (bilinear, antialiased), centre-cropped to size x size."""
    h, w = x.shape[-2:]
    if min(h, w) != size:
        scale = size / min(h, w)
        x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bilinear",
                          antialias=True, align_corners=False)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


class _Clips(Dataset):
    """What writing samples of a clip data set needs: its frame rate."""

    @property
    def sample_info(self) -> dict:
        return {"fps": float(self.fps)}


class VideoFolderDataset(SkipsBadItems, _Clips):
    """Clips of the videos under ``path`` (mp4, avi, webm, mkv, recursively).

    ``layout``: ``folder`` (unconditional, e.g. CLEVRER) or ``classes`` (UCF-101 style
    ``root/<class>/<video>``, labels by sorted folder name). A clip is ``frames`` frames
    ``stride`` apart from a random start (torch's global RNG, so DataLoader worker
    seeding applies), the short side resized to ``size`` and centre-cropped to
    size x size; ``channels`` 3 (RGB) or 1 (luma). ``fps`` is the clips' frame rate:
    the files' most common rate divided by ``stride``.

    Every file is checked up front (see :func:`probe`): unreadable, empty, truncated,
    too short or variable-frame-rate files are DataErrors naming the file, or with
    ``on_error: skip`` are left out with a logged count; a file that fails to decode
    later is then replaced by the next good item.
    """

    def __init__(self, path: str | None, frames: int = 16, stride: int = 1, size: int = 64, channels: Literal[1, 3] = 3,
                 layout: Literal["folder", "classes"] = "folder", on_error: Literal["fail", "skip"] = "fail"):
        self.frames, self.stride, self.size = _positive("frames", frames), _positive("stride", stride), \
            _positive("size", size)
        self.channels, self.on_error = channels, on_error
        if path is None:
            raise ConfigError("data.path must name a folder of videos")
        self.root = Path(path)
        if not self.root.is_dir():
            raise DataError(f"data path {self.root} is not a folder")
        if layout == "classes":
            self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
            if not self.classes:
                raise DataError(f"data path {self.root} has no class folders (expected root/<class>/<videos>; "
                                "layout: folder reads a tree without classes)")
            items = [(f, label) for label, name in enumerate(self.classes) for f in video_files(self.root / name)]
        else:
            self.classes, items = None, [(f, 0) for f in video_files(self.root)]
        self.num_classes = len(self.classes) if self.classes else 0
        self.items = self._checked(items)
        rates = [round(fps, 3) for _, _, _, fps, _ in self.items]
        self.fps = max(set(rates), key=rates.count) / stride
        self.sample_shape = (channels, frames, size, size)

    def _checked(self, items) -> list[tuple[Path, int, int, float, Callable]]:
        good, bad = [], []
        for path, label in items:
            try:
                good.append((path, label, *probe(path, (self.frames - 1) * self.stride + 1)))
            except DataError as exc:
                bad.append(str(exc))
        return self.usable(good, bad, len(items), "video")

    def load(self, i):
        return self._clip(i), self.items[i][1]

    def _clip(self, i: int) -> torch.Tensor:
        path, _, n, _, decode = self.items[i]
        span = (self.frames - 1) * self.stride + 1
        start = int(torch.randint(n - span + 1, ()))
        try:
            frames = decode(path, list(range(start, start + span, self.stride)))
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"cannot decode video file {path}: {str(exc).splitlines()[0][:200]}") from None
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (T, 3, H, W) in 0..255
        if self.channels == 1:
            x = (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = resize_crop(x, self.size)
        return (x / 127.5 - 1).clamp(-1, 1).permute(1, 0, 2, 3).contiguous()


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


class MovingDigits(_Clips):
    """Deterministic moving digits from scikit-learn's bundled 8x8 digits (1797 images).

    Item ``i`` draws, from a generator seeded by ``(seed, i)``, ``digits`` digit images
    (resized to ``digit_size``), start positions and velocities (1 to 2 px per frame on
    each axis, either sign), and renders ``frames`` frames of a ``size`` x ``size``
    canvas with the digits bouncing off the walls (overlaps: the brighter pixel).
    One channel in [-1, 1]; the label is the (first) digit's class; fps 8.
    """

    fps = 8

    def __init__(self, frames: int = 8, size: int = 16, digits: int = 1, seed: int = 0, length: int = 2048,
                 digit_size: int = 8):
        self.frames, self.size, self.digits = _positive("frames", frames), _positive("size", size), \
            _positive("digits", digits)
        self.length, self.digit_size = _positive("length", length), _positive("digit_size", digit_size)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"data.seed must be a non-negative integer, got {seed!r}")
        if digit_size > size:
            raise ConfigError(f"data.digit_size ({digit_size}) must not exceed data.size ({size})")
        self.seed = seed
        self.sample_shape = (1, frames, size, size)
        self.num_classes, self.classes = 10, [str(d) for d in range(10)]

    def sources(self) -> tuple[Path, list[Path]]:
        """scikit-learn's digits file (the options, seed included, are part of the config)."""
        import sklearn.datasets

        root = Path(sklearn.datasets.__file__).parent / "data"
        return root, [root / "digits.csv.gz"]

    def __len__(self):
        return self.length

    def trajectory(self, rng: np.random.Generator) -> np.ndarray:
        """(frames, 2) integer top-left positions bouncing within [0, size - digit_size]."""
        room = self.size - self.digit_size
        pos = rng.uniform(0, room, 2)
        vel = rng.uniform(1, 2, 2) * rng.choice([-1, 1], 2)
        out = np.empty((self.frames, 2))
        for t in range(self.frames):
            out[t] = pos
            pos = pos + vel
            for a in range(2):  # reflect off the walls
                if pos[a] < 0 or pos[a] > room:
                    pos[a] = -pos[a] if pos[a] < 0 else 2 * room - pos[a]
                    vel[a] = -vel[a]
                    pos[a] = min(max(pos[a], 0), room)
        return np.rint(out).astype(int)

    def __getitem__(self, i):
        if not 0 <= i < self.length:
            raise IndexError(i)
        images, targets = _digits()
        rng = np.random.default_rng([self.seed, i])
        canvas = np.zeros((self.frames, self.size, self.size), np.float32)
        label, d = None, self.digit_size
        for _ in range(self.digits):
            k = int(rng.integers(len(images)))
            label = int(targets[k]) if label is None else label
            digit = torch.from_numpy(images[k])[None, None]
            if d != 8:
                digit = F.interpolate(digit, size=(d, d), mode="bilinear", align_corners=False).clamp(0, 1)
            digit = digit[0, 0].numpy()
            for t, (y, x) in enumerate(self.trajectory(rng)):
                np.maximum(canvas[t, y : y + d, x : x + d], digit, out=canvas[t, y : y + d, x : x + d])
        return torch.from_numpy(canvas * 2 - 1)[None], label
