"""SiT over a sequence of frames: patches along time, a 1-D sin-cos position embedding.

Inputs are (B, channels, frames), e.g. log-mel spectrograms (mel bands as channels)
or audio VAE latents; any modality whose samples are a 1-D sequence of feature
vectors can use it. Blocks, adaLN-Zero and block capture come from the core trunk.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from layersync.nn.trunk import LabelEmbedder, TimestepEmbedder, Trunk, parse_sit_size, sincos_pos_embed


def parse_size_1d(size: str) -> tuple[int, int, int, int]:
    """'B/4' -> (depth, hidden, heads, patch): a DiT size and the frames per token."""
    return parse_sit_size(size, "SiT-1D", "frames")


class VectorEmbedder(nn.Module):
    """Vector conditions ``{name: (B, dim)}`` (e.g. CLIP text embeddings) -> (B, hidden); zeros are the null condition."""

    def __init__(self, dims: dict[str, int], hidden: int):
        super().__init__()
        self.proj = nn.ModuleDict({name: nn.Linear(dim, hidden) for name, dim in dims.items()})

    def check(self, cond) -> None:
        """``cond`` must be a dict holding every key of ``cond_dims`` (types and keys only: graph-safe)."""
        if not isinstance(cond, dict):
            got = f"a tensor of shape {tuple(cond.shape)}" if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise TypeError(f"SiT-1D with cond_dims takes a dict condition {self.expected()}, got {got} (class labels "
                            "need a model without cond_dims)")
        missing = sorted(set(self.proj) - set(cond))
        if missing:
            raise ValueError(f"the condition lacks {', '.join(missing)} (it has "
                             f"{', '.join(map(str, cond)) or 'nothing'}; cond_dims expects {self.expected()})")

    def expected(self) -> str:
        return "{" + ", ".join(f"{name}: (B, {layer.in_features})" for name, layer in self.proj.items()) + "}"

    def forward(self, cond: dict) -> torch.Tensor:
        self.check(cond)
        return sum(layer(cond[name].to(layer.weight.dtype)) for name, layer in self.proj.items())

    def drop(self, cond: dict, drop: torch.Tensor) -> dict:
        self.check(cond)
        return {name: torch.where(drop[:, None], torch.zeros_like(v), v) for name, v in cond.items()}


class SiT1D(Trunk):
    """Patchify along time -> adaLN-Zero blocks -> unpatchify.

    Conditioned on class labels (``num_classes``), on vectors (``cond_dims``, e.g.
    ``{"text": 512}``: the condition is then a dict of (B, dim) tensors), or on nothing.
    ``forward(x, t, cond, capture, mask)`` returns the prediction (same shape as x) and
    the outputs of the captured blocks, (B, frames / patch, hidden) each; ``mask``
    (B, frames), true on valid frames, keeps attention off the padding.
    """

    def __init__(self, channels: int, frames: int, patch_size: int = 2, hidden: int = 768, depth: int = 12,
                 heads: int = 12, mlp_ratio: float = 4.0, num_classes: int = 0, qk_norm: bool = False,
                 cond_dims: dict[str, int] | None = None):
        if frames % patch_size:
            raise ValueError(f"{frames} frames are not divisible by the patch size {patch_size}")
        super().__init__(hidden, depth, heads, patch_size * channels, mlp_ratio, qk_norm)
        self.channels, self.frames, self.patch_size = channels, frames, patch_size
        self.x_embedder = nn.Conv1d(channels, hidden, kernel_size=patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(num_classes, hidden) if num_classes else None
        self.v_embedder = VectorEmbedder(cond_dims, hidden) if cond_dims else None
        if num_classes and cond_dims:
            raise ValueError("SiT-1D takes labels or vector conditions, not both")
        self.register_buffer("pos_embed", sincos_pos_embed(hidden, (frames // patch_size,))[None])
        self.init_weights()
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, tokens, patch * channels) -> (B, channels, tokens * patch)."""
        b, tokens, _ = x.shape
        return x.reshape(b, tokens, self.patch_size, self.channels).permute(0, 3, 1, 2).reshape(b, self.channels, -1)

    def token_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, frames) -> (B, tokens): a token is valid if any of its frames is."""
        return mask.unflatten(-1, (-1, self.patch_size)).any(-1)

    def forward(self, x, t, cond=None, capture=(), mask=None):
        if x.shape[-1] != self.frames:
            raise ValueError(f"input of {x.shape[-1]} frames: this model takes {self.frames} frames")
        # tokens-major once here: a transposed stream would cost a copy in every block
        tokens = self.x_embedder(x).transpose(1, 2).contiguous() + self.pos_embed
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            c = c + self.y_embedder(cond)
        elif self.v_embedder is not None:
            c = c + self.v_embedder(cond)
        out, hidden = self.run_blocks(tokens, c, capture, None if mask is None else self.token_mask(mask))
        return self.unpatchify(out), hidden

    def drop_cond(self, cond, drop):
        if self.y_embedder is not None:
            return self.y_embedder.drop(cond, drop)
        return self.v_embedder.drop(cond, drop) if self.v_embedder is not None else cond


def build_sit1d(input_shape, num_classes, size="B/2", qk_norm=False, mlp_ratio=4.0, cond_dims=None) -> SiT1D:
    """Backbone factory: ``model: {name: sit1d, size: B/2}`` for (channels, frames) inputs;
    ``cond_dims: {text: 512}`` for vector conditions instead of labels."""
    if len(input_shape) != 2:
        raise ValueError(f"SiT-1D takes (channels, frames) inputs, got shape {tuple(input_shape)}")
    channels, frames = input_shape
    depth, hidden, heads, patch = parse_size_1d(size)
    return SiT1D(channels, frames, patch, hidden, depth, heads, mlp_ratio, 0 if cond_dims else num_classes, qk_norm,
                 cond_dims)
