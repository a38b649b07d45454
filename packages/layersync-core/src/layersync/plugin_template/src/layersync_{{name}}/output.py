"""Signals as a PNG of line plots, drawn with PIL (which core already needs)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from layersync.files import atomic
from layersync.interfaces import Preview

CELL = (192, 64)  # width, height of one plot in pixels
COLUMNS = 4
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]  # one per channel


def save_plots(x: torch.Tensor, stem: Path, info: dict | None = None) -> Preview:
    """Signals in [-1, 1], (N, channels, length) -> ``stem.png``: a plot per signal, ``COLUMNS`` a row.

    The Modality's ``save_samples``: training writes a preview this way, ``layersync-sample``
    too; ``info`` (the run's ``sample_info``) is not needed here. The Preview's kind tells the
    loggers how to show the file ("image", "video", "audio" or "file").
    """
    x = x.detach().float().cpu().clamp(-1, 1)
    if x.ndim == 2:
        x = x[:, None]
    n, channels, length = x.shape
    (w, h), rows = CELL, max(1, math.ceil(n / COLUMNS))
    image = Image.new("RGB", (COLUMNS * w, rows * h), "white")
    draw = ImageDraw.Draw(image)
    xs = [j * (w - 1) / max(length - 1, 1) for j in range(length)]
    for k in range(n):
        left, top = (k % COLUMNS) * w, (k // COLUMNS) * h
        draw.rectangle([left, top, left + w - 1, top + h - 1], outline=(200, 200, 200))
        draw.line([(left, top + h / 2), (left + w - 1, top + h / 2)], fill=(230, 230, 230))  # zero
        for c in range(channels):
            ys = ((1 - x[k, c]) * (h - 5) / 2 + 2).tolist()  # +1 at the top, -1 at the bottom
            draw.line([(left + a, top + b) for a, b in zip(xs, ys, strict=True)], fill=COLOURS[c % len(COLOURS)])
    path = Path(stem).with_suffix(".png")
    with atomic(path) as tmp:
        image.save(tmp, format="PNG")
    return Preview("image", path)
