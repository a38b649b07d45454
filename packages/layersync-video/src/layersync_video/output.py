"""Video samples as files: an animated GIF grid to look at, MP4s (PyAV) to play or score."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from layersync.files import atomic
from layersync.interfaces import Preview

GRID_MAX = 16  # clips in a preview grid
MIN_CELL = 64  # small cells are enlarged (nearest neighbour) to at least this many pixels
GAP = 2


def to_uint8(x) -> np.ndarray:
    """(N, C, T, H, W) in [-1, 1] (tensor or array), C 1 or 3 -> uint8 (N, T, H, W, 3)."""
    x = torch.as_tensor(x).detach().float().cpu()
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1, -1)
    return x.permute(0, 2, 3, 4, 1).contiguous().numpy()


def video_grid(x) -> np.ndarray:
    """Up to GRID_MAX clips -> uint8 (T, H, W, 3) frames of a grid, cells enlarged to >= MIN_CELL px."""
    clips = to_uint8(x[:GRID_MAX])
    n, t, h, w, _ = clips.shape
    k = max(1, math.ceil(MIN_CELL / min(h, w)))
    clips = clips.repeat(k, axis=2).repeat(k, axis=3)
    h, w = h * k, w * k
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    grid = np.zeros((t, (h + GAP) * rows + GAP, (w + GAP) * cols + GAP, 3), np.uint8)
    for i, clip in enumerate(clips):
        r, c = divmod(i, cols)
        grid[:, GAP + r * (h + GAP) : GAP + r * (h + GAP) + h, GAP + c * (w + GAP) : GAP + c * (w + GAP) + w] = clip
    return grid


def write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """uint8 (T, H, W, 3) -> an H.264 MP4 (MPEG-4 Part 2 if PyAV lacks libx264), sides padded to even; atomic."""
    import av

    t, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with atomic(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as out:
            stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "18"}
            for frame in frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            out.mux(stream.encode())


def save_video(x, stem: Path, info: dict) -> Preview:
    """Samples (N, C, T, H, W) in [-1, 1] -> ``stem.gif`` (a grid of up to 16 clips, looping) and ``stem.mp4``
    (the same grid) at ``info['fps']`` (default 8). Returns the GIF's preview. (The GIF writer merges identical
    consecutive frames into one longer frame.)"""
    stem, fps = Path(stem), float(info.get("fps", 8))
    grid = video_grid(x)
    write_mp4(stem.with_suffix(".mp4"), grid, fps)
    path = stem.with_suffix(".gif")
    images = [Image.fromarray(frame) for frame in grid]
    with atomic(path) as tmp:
        images[0].save(tmp, format="gif", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                       loop=0)
    return Preview("video", path, fps)


def save_clips(array, start: int, folder: Path, info: dict) -> None:
    """One MP4 per sample of a sample set, at its own size: ``folder/mp4/000123.mp4`` (the sample's index)."""
    fps = float(info.get("fps", 8))
    for i, clip in enumerate(to_uint8(array), start=start):
        write_mp4(Path(folder) / "mp4" / f"{i:06d}.mp4", clip, fps)
