"""SiT over a sequence of frames: patches along time, a 1-D sin-cos position embedding.

Inputs are (B, channels, frames), e.g. log-mel spectrograms (mel bands as channels)
or audio VAE latents; any modality whose samples are a 1-D sequence of feature
vectors can use it. Blocks, adaLN-Zero and block capture come from the core trunk.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from layersync.nn.trunk import SIZES, LabelEmbedder, TimestepEmbedder, Trunk, sincos_pos_embed


def parse_size_1d(size: str) -> tuple[int, int, int, int]:
    """'B/4' -> (depth, hidden, heads, patch): a DiT size and the frames per token."""
    name, _, patch = size.partition("/")
    if name not in SIZES or not patch.isdigit() or int(patch) < 1:
        raise ValueError(f"unknown SiT-1D size '{size}' (expected NAME/PATCH with NAME in {', '.join(SIZES)} "
                         "and PATCH a positive number of frames)")
    return (*SIZES[name], int(patch))


class SiT1D(Trunk):
    """Patchify along time -> adaLN-Zero blocks -> unpatchify; class-conditional or not.

    ``forward(x, t, y, capture)`` returns the prediction (same shape as x) and the
    outputs of the captured blocks, (B, frames / patch, hidden) each.
    """

    def __init__(self, channels: int, frames: int, patch_size: int = 2, hidden: int = 768, depth: int = 12,
                 heads: int = 12, mlp_ratio: float = 4.0, num_classes: int = 0, qk_norm: bool = False):
        if frames % patch_size:
            raise ValueError(f"{frames} frames are not divisible by the patch size {patch_size}")
        super().__init__(hidden, depth, heads, patch_size * channels, mlp_ratio, qk_norm)
        self.channels, self.frames, self.patch_size = channels, frames, patch_size
        self.x_embedder = nn.Conv1d(channels, hidden, kernel_size=patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(num_classes, hidden) if num_classes else None
        self.register_buffer("pos_embed", sincos_pos_embed(hidden, (frames // patch_size,))[None])
        self.init_weights()
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, tokens, patch * channels) -> (B, channels, tokens * patch)."""
        b, tokens, _ = x.shape
        return x.reshape(b, tokens, self.patch_size, self.channels).permute(0, 3, 1, 2).reshape(b, self.channels, -1)

    def forward(self, x, t, y=None, capture=()):
        if x.shape[-1] != self.frames:
            raise ValueError(f"input of {x.shape[-1]} frames: this model takes {self.frames} frames")
        tokens = self.x_embedder(x).transpose(1, 2) + self.pos_embed
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            c = c + self.y_embedder(y)
        out, hidden = self.run_blocks(tokens, c, capture)
        return self.unpatchify(out), hidden

    def drop_cond(self, y, drop):
        return self.y_embedder.drop(y, drop) if self.y_embedder is not None else y


def build_sit1d(input_shape, num_classes, size="B/2", qk_norm=False, mlp_ratio=4.0) -> SiT1D:
    """Backbone factory: ``model: {name: sit1d, size: B/2}`` for (channels, frames) inputs."""
    if len(input_shape) != 2:
        raise ValueError(f"SiT-1D takes (channels, frames) inputs, got shape {tuple(input_shape)}")
    channels, frames = input_shape
    depth, hidden, heads, patch = parse_size_1d(size)
    return SiT1D(channels, frames, patch, hidden, depth, heads, mlp_ratio, num_classes, qk_norm)
