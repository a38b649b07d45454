"""A plain single-file SiT and LayerSync training step (torch only, DiT style).

The speed baseline for our step: same model, same math, same parameter
names (``PlainSiT().load_state_dict(our_sit.state_dict())`` works
strictly), with nothing but torch in between; on CUDA the forward runs under
bf16 autocast as ours does (``autocast_dtype``) and the losses in fp32.
"""

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def pos_embed_2d(dim, n):
    """Fixed 2-D sin-cos embedding of an n x n grid, (n*n, dim): [sin x, cos x, sin y, cos y]."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    y, x = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    parts = [c.reshape(-1, 1) * omega for c in (x, y)]
    return torch.cat([f(p) for p in parts for f in (torch.sin, torch.cos)], dim=1).float()


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """adaLN-Zero transformer block."""

    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, dim, out_dim):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class TimestepEmbedder(nn.Module):
    def __init__(self, dim, freq_dim=256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t, max_period=10000):
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class LabelEmbedder(nn.Module):
    """Index ``num_classes`` is the null (dropped) label."""

    def __init__(self, num_classes, dim):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y):
        return self.embedding_table(y)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_channels, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class PlainSiT(nn.Module):
    def __init__(self, input_size, patch_size, in_channels, hidden, depth, heads, num_classes, mlp_ratio=4.0):
        super().__init__()
        self.patch_size, self.num_classes = patch_size, num_classes
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(num_classes, hidden)
        self.register_buffer("pos_embed", pos_embed_2d(hidden, input_size // patch_size)[None])
        self.blocks = nn.ModuleList(Block(hidden, heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden, patch_size * patch_size * in_channels)

    def unpatchify(self, x):
        p, c = self.patch_size, x.shape[-1] // self.patch_size**2
        h = w = int(x.shape[1] ** 0.5)
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(x.shape[0], h, w, p, p, c))
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x, t, y, capture=()):
        """-> (prediction shaped like x, {k: output of block k} for 1-based k in capture)."""
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        hidden = {}
        for k, block in enumerate(self.blocks, start=1):
            x = block(x, c)
            if k in capture:
                hidden[k] = x
        return self.unpatchify(self.final_layer(x, c)), hidden


class PlainStep:
    """Flow matching (linear path, velocity target) + LayerSync, AdamW, EMA."""

    def __init__(self, model, lr, weight_decay, pairs, weight, cfg_dropout, ema_decay, generator,
                 betas=(0.9, 0.999), eps=1e-8, autocast_dtype=None):
        self.model, self.pairs, self.weight, self.autocast_dtype = model, pairs, weight, autocast_dtype
        self.cfg_dropout, self.ema_decay, self.generator = cfg_dropout, ema_decay, generator
        self.capture = sorted({k for pair in pairs for k in pair})
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.ema = copy.deepcopy(model).requires_grad_(False)
        self.params, self.ema_params = list(model.parameters()), list(self.ema.parameters())

    def __call__(self, x1, y):
        g = self.generator
        x0 = torch.randn(x1.shape, generator=g, device=x1.device, dtype=x1.dtype)
        t = torch.rand(x1.shape[0], generator=g, device=x1.device)
        drop = torch.rand(x1.shape[0], generator=g, device=x1.device) < self.cfg_dropout
        y = torch.where(drop, self.model.num_classes, y)
        tt = t.view(-1, *[1] * (x1.dim() - 1))
        with torch.autocast(x1.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            out, hidden = self.model(tt * x1 + (1 - tt) * x0, t, y, capture=self.capture)
        loss = F.mse_loss(out.float(), x1 - x0)
        for k, kt in self.pairs:  # shallow block k follows the (stop-gradient) deeper block kt
            cos = F.cosine_similarity(hidden[k].float(), hidden[kt].detach().float(), dim=-1)
            loss = loss - self.weight * cos.mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, self.params, 1 - self.ema_decay)
        return loss.detach()
