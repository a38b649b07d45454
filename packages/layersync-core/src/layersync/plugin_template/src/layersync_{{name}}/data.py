"""Toy data that needs no download: class-conditional sine waves, made on the fly."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from layersync.errors import DataError


class SineWaves(Dataset):
    """``size`` signals of ``length`` points; a signal of class ``c`` has ``c + 1`` periods.

    Item ``i`` is of class ``i % num_classes``; its phase, amplitude and noise come from a
    generator seeded with ``(seed, i)``, so it is the same in every worker and epoch.
    Items are ``(x, label)``, x of shape ``sample_shape`` = (1, length) with values in [-1, 1].
    """

    def __init__(self, length: int = 64, num_classes: int = 4, size: int = 4096, noise: float = 0.05,
                 seed: int = 0):
        if num_classes < 1 or 2 * num_classes >= length:
            raise DataError(f"data.num_classes must be in 1..{(length - 1) // 2} for signals of {length} points "
                            f"(class c has c + 1 periods), got {num_classes}")
        if size < 1 or seed < 0 or noise < 0:
            raise DataError(f"data.size must be positive, data.seed and data.noise non-negative "
                            f"(got {size}, {seed}, {noise})")
        self.length, self.size, self.noise, self.seed = length, size, noise, seed
        self.num_classes = num_classes
        self.sample_shape = (1, length)
        self.grid = np.arange(length) / length

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        if not 0 <= i < self.size:
            raise IndexError(f"item {i} of a data set of {self.size}")
        label = i % self.num_classes
        rng = np.random.default_rng((self.seed, i))
        phase, amplitude = rng.random(2)
        x = (0.5 + 0.4 * amplitude) * np.sin(2 * np.pi * ((label + 1) * self.grid + phase))
        x = np.clip(x + self.noise * rng.standard_normal(self.length), -1, 1)
        return torch.from_numpy(x.astype(np.float32))[None], label
