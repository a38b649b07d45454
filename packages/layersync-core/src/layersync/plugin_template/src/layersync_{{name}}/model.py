"""A small transformer over 1-D signals, built from ``layersync.nn`` pieces.

The contract LayerSync trains against (``layersync.interfaces.Backbone``):
``forward(x, t, cond, capture)`` returns the prediction, shaped like ``x``, and
``{k: output of block k}`` for every 1-based ``k`` in ``capture``, each (B, tokens, hidden);
``drop_cond(cond, drop)`` swaps in the null condition where ``drop`` is true (CFG);
``depth`` tells LayerSync which block pairs exist.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from layersync.nn import LabelEmbedder, TimestepEmbedder, Trunk, sincos_pos_embed


class SignalTransformer(Trunk):
    """Patches of ``patch`` points -> adaLN-Zero blocks (the core trunk) -> patches -> signal."""

    def __init__(self, channels: int, length: int, num_classes: int, patch: int = 8, hidden: int = 64,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0):
        if length % patch:
            raise ValueError(f"signals of {length} points do not divide into patches of {patch}")
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        # 1. the trunk: blocks and a final layer that maps each token back to one patch
        super().__init__(hidden, depth, heads, patch * channels, mlp_ratio)
        self.channels, self.length, self.patch = channels, length, patch
        # 2. the embedders of this modality: patches, time, class labels (index num_classes: no label)
        self.x_embedder = nn.Linear(patch * channels, hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(num_classes, hidden) if num_classes else None
        self.register_buffer("pos_embed", sincos_pos_embed(hidden, (length // patch,))[None])
        # 3. once every module exists: xavier linears, then adaLN-Zero's zeroed modulation and output
        self.init_weights()

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, channels, length) -> (B, length / patch, patch * channels)."""
        b = x.shape[0]
        x = x.reshape(b, self.channels, -1, self.patch).permute(0, 2, 3, 1)
        return x.reshape(b, -1, self.patch * self.channels)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, length / patch, patch * channels) -> (B, channels, length)."""
        b, tokens, _ = x.shape
        return x.reshape(b, tokens, self.patch, self.channels).permute(0, 3, 1, 2).reshape(b, self.channels, -1)

    def forward(self, x, t, cond=None, capture=()):
        if tuple(x.shape[1:]) != (self.channels, self.length):
            raise ValueError(f"input of shape {tuple(x.shape[1:])}: this model takes ({self.channels}, {self.length})")
        tokens = self.x_embedder(self.patchify(x)) + self.pos_embed
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            c = c + self.y_embedder(cond)
        out, hidden = self.run_blocks(tokens, c, capture)
        return self.unpatchify(out), hidden

    def drop_cond(self, cond, drop):
        return self.y_embedder.drop(cond, drop) if self.y_embedder is not None else cond


def build_signal_transformer(input_shape, num_classes, patch=8, hidden=64, depth=4, heads=4,
                             mlp_ratio=4.0) -> SignalTransformer:
    """Backbone factory: the data set's ``sample_shape`` and ``num_classes``, then the recipe's
    ``model`` options (``model: {name: {{name}}-transformer, depth: 4, ...}``)."""
    if len(input_shape) != 2:
        raise ValueError(f"the signal transformer takes (channels, length) inputs, got shape {tuple(input_shape)}")
    channels, length = input_shape
    return SignalTransformer(channels, length, num_classes, patch, hidden, depth, heads, mlp_ratio)
