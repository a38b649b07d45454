"""Image samples: a PNG grid to look at, uint8 arrays for the evaluators."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from layersync.files import atomic
from layersync.interfaces import Preview

MIN_CELL = 64  # small images are enlarged (nearest) so the grid can be looked at


def save_grid(x: torch.Tensor, stem: Path, info: dict | None = None) -> Preview:
    """Samples in [-1, 1], (N, C, H, W) -> ``stem.png``, a near-square grid."""
    if x.shape[-1] < MIN_CELL:
        x = F.interpolate(x, scale_factor=math.ceil(MIN_CELL / x.shape[-1]), mode="nearest")
    from torchvision.utils import save_image  # torchvision only when writing: listing plugins imports this module

    path = Path(stem).with_suffix(".png")
    nrow = max(1, math.ceil(math.sqrt(x.shape[0])))
    with atomic(path) as tmp:
        save_image(x.clamp(-1, 1), tmp, format="png", nrow=nrow, normalize=True, value_range=(-1, 1), padding=1)
    return Preview("image", path)


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """Samples in [-1, 1], (N, C, H, W) -> uint8 (N, H, W, C), rounded as ADM's sampling scripts do."""
    pixels = ((x.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()
