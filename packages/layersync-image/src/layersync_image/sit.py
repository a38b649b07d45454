"""SiT: a latent/pixel diffusion transformer on image patches (Ma et al., 2024)."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import PatchEmbed

from layersync.nn import LabelEmbedder, TimestepEmbedder, Trunk, parse_sit_size, sincos_pos_embed

PATCHES = (1, 2, 4, 8)


def parse_size(size: str) -> tuple[int, int, int, int]:
    """'XL/2' -> (depth, hidden, heads, patch)."""
    return parse_sit_size(size, "SiT", PATCHES)


class SiT(Trunk):
    """Patchify -> adaLN-Zero blocks -> unpatchify; class-conditional or not.

    ``forward(x, t, y, capture)`` returns the prediction (same shape as x)
    and the outputs of the captured blocks, (B, tokens, hidden) each.
    """

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden: int = 1152,
        depth: int = 28,
        heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        learn_sigma: bool = False,
        qk_norm: bool = False,
    ):
        out_channels = in_channels * (2 if learn_sigma else 1)
        super().__init__(hidden, depth, heads, patch_size * patch_size * out_channels, mlp_ratio, qk_norm)
        if input_size % patch_size:
            raise ValueError(f"image size {input_size} is not divisible by patch size {patch_size}")
        self.in_channels, self.patch_size, self.learn_sigma = in_channels, patch_size, learn_sigma
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden, bias=True)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(num_classes, hidden) if num_classes else None
        grid = input_size // patch_size
        self.register_buffer("pos_embed", sincos_pos_embed(hidden, (grid, grid))[None])
        self.init_weights()
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)

    def unpatchify(self, x):
        p, c = self.patch_size, x.shape[-1] // self.patch_size**2
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x, t, y=None, capture=()):
        # PatchEmbed hands out a transposed view: tokens-major once here, not a copy in every block
        tokens = self.x_embedder(x).contiguous() + self.pos_embed
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            c = c + self.y_embedder(y)
        out, hidden = self.run_blocks(tokens, c, capture)
        out = self.unpatchify(out)
        if self.learn_sigma:
            out = out[:, : self.in_channels]
        return out, hidden

    def drop_cond(self, y, drop):
        return self.y_embedder.drop(y, drop) if self.y_embedder is not None else y


def build_sit(input_shape, num_classes, size="B/2", learn_sigma=False, qk_norm=False, mlp_ratio=4.0) -> SiT:
    """Backbone factory: ``model: {name: sit, size: XL/2}`` in a config."""
    channels, height, width = input_shape
    if height != width:
        raise ValueError(f"SiT needs square inputs, got {height}x{width}")
    depth, hidden, heads, patch = parse_size(size)
    return SiT(height, patch, channels, hidden, depth, heads, mlp_ratio, num_classes, learn_sigma, qk_norm)
