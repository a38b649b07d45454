"""A DiT/SiT transformer trunk with adaLN-Zero conditioning and layer taps.

Module names follow DiT/SiT (``blocks.N.attn.qkv``, ``adaLN_modulation``,
``final_layer``) so their checkpoints map onto ours key for key.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.layers import Mlp
from timm.models.vision_transformer import Attention
from torch.utils.checkpoint import checkpoint

# name -> (depth, hidden, heads): the DiT/SiT paper sizes, MDM's, and tiny CPU ones.
SIZES = {
    "T": (6, 128, 4),
    "XS": (8, 256, 4),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
    "MDM": (8, 512, 4),  # MDM's transformer (Tevet et al., 2023)
}


def parse_sit_size(size: str, kind: str, patches: tuple[int, ...] | str) -> tuple[int, int, int, int]:
    """'XL/2' -> (depth, hidden, heads, patch) for a ``kind`` of SiT ("SiT-1D", ...); ``patches`` are
    the allowed patches, or the unit of any positive patch ("frames")."""
    name, _, patch = size.partition("/")
    listed = isinstance(patches, tuple)
    if name not in SIZES or not patch.isdigit() or not (int(patch) in patches if listed else int(patch) >= 1):
        allowed = f"in {', '.join(map(str, patches))}" if listed else f"a positive number of {patches}"
        raise ValueError(f"unknown {kind} size '{size}' (expected NAME/PATCH with NAME in {', '.join(SIZES)} "
                         f"and PATCH {allowed})")
    return (*SIZES[name], int(patch))


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def gelu_tanh():
    return nn.GELU(approximate="tanh")


class TimestepEmbedder(nn.Module):
    """Scalar t -> sinusoidal features -> MLP."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    @staticmethod
    def frequencies(t, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t):
        return self.mlp(self.frequencies(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels -> vectors; index ``num_classes`` is the null label for CFG."""

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def drop(self, labels, mask):
        return torch.where(mask, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels):
        return self.embedding_table(labels)


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block modulated by the condition (adaLN-Zero)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        # qk_norm: LayerNorm on queries and keys, as REPA's SiT (timm needs the norm named)
        self.attn = Attention(dim, num_heads=heads, qkv_bias=True, qk_norm=qk_norm, norm_layer=nn.LayerNorm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=gelu_tanh)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c, attn_mask=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1), attn_mask=attn_mask)
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class Trunk(nn.Module):
    """Blocks plus final layer; a modality backbone adds embedders around it.

    ``run_blocks(tokens, c, capture, mask)`` returns the final layer's output and
    ``{k: output of block k}`` for every 1-based ``k`` in ``capture``. ``mask`` (B, tokens),
    true on valid tokens, keeps attention off the padding. The first ``checkpoint_blocks``
    blocks keep no activations: the backward pass runs them again (``model.checkpoint_blocks``).
    """

    def __init__(self, hidden: int, depth: int, heads: int, out_dim: int, mlp_ratio: float = 4.0, qk_norm=False):
        super().__init__()
        self.hidden, self.depth = hidden, depth
        self.checkpoint_blocks = 0
        self.blocks = nn.ModuleList(AdaLNBlock(hidden, heads, mlp_ratio, qk_norm) for _ in range(depth))
        self.final_layer = FinalLayer(hidden, out_dim)

    def run_blocks(self, x, c, capture=(), mask=None):
        for k in capture:
            if not 1 <= k <= self.depth:
                raise ValueError(f"cannot capture block {k}: the model has blocks 1..{self.depth}")
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, heads, queries, keys): keys only
        hidden = {}
        for k in range(1, self.depth + 1):
            x = self.run_block(k, x, c, attn_mask)
            if k in capture:
                hidden[k] = x
        return self.final_layer(x, c), hidden

    def run_block(self, k: int, x, c, attn_mask=None):
        """Block ``k`` (1-based); among the first ``checkpoint_blocks`` its activations are recomputed
        in the backward pass instead of kept."""
        block = self.blocks[k - 1]
        if k > self.checkpoint_blocks or not torch.is_grad_enabled():
            return block(x, c, attn_mask)
        # the blocks draw no random numbers: no RNG state to save (and none read during a CUDA graph capture)
        return checkpoint(block, x, c, attn_mask, use_reentrant=False, preserve_rng_state=False)

    def init_weights(self):
        """DiT's initialisation: xavier linears, zeroed modulation and output."""

        def xavier(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(xavier)
        for module in self.modules():
            if isinstance(module, TimestepEmbedder):
                nn.init.normal_(module.mlp[0].weight, std=0.02)
                nn.init.normal_(module.mlp[2].weight, std=0.02)
            elif isinstance(module, LabelEmbedder):
                nn.init.normal_(module.embedding_table.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)


def sincos_pos_embed(dim: int, grid: tuple[int, ...]) -> torch.Tensor:
    """Fixed sin-cos position embedding for a 1-D, 2-D or 3-D token grid, (T, dim)."""
    axes = len(grid)
    per_axis = dim // axes // 2 * 2
    coords = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in grid], indexing="ij")
    parts = []
    for coord in reversed(coords):  # x first, as in MAE/DiT for 2-D grids
        omega = 1.0 / 10000 ** (torch.arange(per_axis // 2, dtype=torch.float64) / (per_axis / 2))
        out = coord.reshape(-1, 1) * omega[None]
        parts += [torch.sin(out), torch.cos(out)]
    emb = torch.cat(parts, dim=1)
    if emb.shape[1] < dim:
        emb = torch.cat([emb, torch.zeros(emb.shape[0], dim - emb.shape[1], dtype=emb.dtype)], dim=1)
    return emb.float()
