"""The contracts a modality plugin fills in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    import numpy as np


@runtime_checkable
class Backbone(Protocol):
    """A transformer that can hand out the hidden states of its own blocks.

    ``forward(x, t, cond, capture=(k, ...))`` returns ``(out, {k: h_k})``
    where ``h_k`` is the output of block ``k`` (1-based), shape (B, T, D).
    ``drop_cond(cond, drop)`` replaces the condition of the rows where the
    boolean mask ``drop`` is true by the null condition (label dropout, CFG).
    """

    depth: int

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, cond, capture: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]: ...

    def drop_cond(self, cond, drop: torch.Tensor): ...


@runtime_checkable
class Tokenizer(Protocol):
    """Maps data to the space the backbone models and back."""

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    def latent_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]: ...


class IdentityTokenizer:
    """For data already in model space (pixels of small images, features)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def latent_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sample_shape)


@runtime_checkable
class Evaluator(Protocol):
    """Streaming metric: feed batches, then read the numbers."""

    def update(self, samples: torch.Tensor, real: bool = False) -> None: ...

    def compute(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class Modality:
    """What a plugin offers under ``layersync-train --plugin NAME``.

    recipe: the default config file (YAML).
    save_samples: ``save_samples(x, path_stem) -> Path`` writes decoded
        samples in the form people look at (PNG grid, WAV, MP4, ...).
    to_array: ``to_array(x) -> ndarray`` turns decoded samples into the array
        format the field's evaluation tools read (images: uint8 NHWC, as in
        ADM's sample files); None keeps the float samples as they are.
    """

    name: str
    description: str
    recipe: Path
    save_samples: Callable[[torch.Tensor, Path], Path]
    to_array: Callable[[torch.Tensor], np.ndarray] | None = None
