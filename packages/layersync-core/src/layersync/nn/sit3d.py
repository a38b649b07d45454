"""A spatio-temporal SiT for video: 3-D patches (t, h, w), a separable 3-D sin-cos position embedding.

Attention is ``full`` (every token attends to every token of the clip) or ``factorised``
(Latte's variant 1: odd blocks attend within a frame, even blocks across frames at one
position). Blocks always hand out (B, t*h*w, hidden), so block capture and LayerSync are
the same as for images.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from layersync.nn.trunk import LabelEmbedder, TimestepEmbedder, Trunk, parse_sit_size, sincos_pos_embed

ATTENTION = ("full", "factorised")


def parse_size_3d(size: str) -> tuple[int, int, int, int]:
    """'B/2' -> (depth, hidden, heads, spatial patch)."""
    return parse_sit_size(size, "SiT-3D", "pixels")


class SiT3D(Trunk):
    """Patchify (t, h, w) -> adaLN-Zero blocks -> unpatchify; class-conditional or not.

    ``forward(x, t, y, capture)`` takes (B, C, T, H, W) and returns the prediction of the
    same shape and the captured blocks' outputs, (B, tokens, hidden) each.
    """

    def __init__(self, channels: int, frames: int, size: int, patch: tuple[int, int] = (1, 2), hidden: int = 768,
                 depth: int = 12, heads: int = 12, mlp_ratio: float = 4.0, num_classes: int = 0,
                 qk_norm: bool = False, attention: str = "full"):
        pt, ps = patch
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
        if frames % pt or size % ps:
            raise ValueError(f"{frames} frames of {size}x{size} do not divide into patches of {pt}x{ps}x{ps}")
        super().__init__(hidden, depth, heads, pt * ps * ps * channels, mlp_ratio, qk_norm)
        self.channels, self.patch, self.attention = channels, (pt, ps, ps), attention
        self.grid = (frames // pt, size // ps, size // ps)
        self.x_embedder = nn.Conv3d(channels, hidden, kernel_size=self.patch, stride=self.patch)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(num_classes, hidden) if num_classes else None
        self.register_buffer("pos_embed", sincos_pos_embed(hidden, self.grid)[None])
        self.init_weights()
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)

    def run_blocks(self, x, c, capture=(), mask=None):
        if self.attention == "full":
            return super().run_blocks(x, c, capture, mask)
        for k in capture:
            if not 1 <= k <= self.depth:
                raise ValueError(f"cannot capture block {k}: the model has blocks 1..{self.depth}")
        b, d = x.shape[0], x.shape[-1]
        t, hw = self.grid[0], self.grid[1] * self.grid[2]
        hidden = {}
        for k in range(1, self.depth + 1):
            if k % 2:  # spatial: the tokens of one frame
                x = self.run_block(k, x.reshape(b * t, hw, d), c.repeat_interleave(t, 0)).reshape(b, t * hw, d)
            else:  # temporal: one position across the frames
                seq = x.reshape(b, t, hw, d).transpose(1, 2).reshape(b * hw, t, d)
                x = self.run_block(k, seq, c.repeat_interleave(hw, 0))
                x = x.reshape(b, hw, t, d).transpose(1, 2).reshape(b, t * hw, d)
            if k in capture:
                hidden[k] = x
        return self.final_layer(x, c), hidden

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, tokens, pt*ph*pw*C) -> (B, C, T, H, W)."""
        (pt, ph, pw), (t, h, w) = self.patch, self.grid
        x = x.reshape(x.shape[0], t, h, w, pt, ph, pw, self.channels)
        return torch.einsum("bthwxyzc->bctxhywz", x).reshape(x.shape[0], self.channels, t * pt, h * ph, w * pw)

    def forward(self, x, t, y=None, capture=()):
        if tuple(x.shape[2:]) != tuple(g * p for g, p in zip(self.grid, self.patch)):
            raise ValueError(f"input clips of shape {tuple(x.shape[1:])}: this model takes "
                             f"{self.channels}x{'x'.join(str(g * p) for g, p in zip(self.grid, self.patch))}")
        # tokens-major once here: a transposed stream would cost a copy in every block
        tokens = self.x_embedder(x).flatten(2).transpose(1, 2).contiguous() + self.pos_embed
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            c = c + self.y_embedder(y)
        out, hidden = self.run_blocks(tokens, c, capture)
        return self.unpatchify(out), hidden

    def drop_cond(self, y, drop):
        return self.y_embedder.drop(y, drop) if self.y_embedder is not None else y


def build_sit3d(input_shape, num_classes, size="B/2", temporal_patch=1, attention="full", qk_norm=False,
                mlp_ratio=4.0) -> SiT3D:
    """Backbone factory: ``model: {name: sit3d, size: B/2, temporal_patch: 1, attention: factorised}``
    for (channels, frames, height, width) inputs."""
    if len(input_shape) != 4 or input_shape[2] != input_shape[3]:
        raise ValueError(f"SiT-3D takes square (channels, frames, height, width) clips, got {tuple(input_shape)}")
    channels, frames, size_px, _ = input_shape
    depth, hidden, heads, patch = parse_size_3d(size)
    return SiT3D(channels, frames, size_px, (temporal_patch, patch), hidden, depth, heads, mlp_ratio, num_classes,
                 qk_norm, attention)
