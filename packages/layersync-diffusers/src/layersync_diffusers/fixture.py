"""What ``layersync check-plugin diffusers`` runs the ``lora.yaml`` recipe on: a tiny random SD3
transformer and a few text-latents items of its shapes, in place of a downloaded model and the user's data."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

ITEMS = 4
LATENT = (4, 8, 8)  # (C, H, W)
TEXT = (3, 16)  # (L, joint_attention_dim)
POOLED = 8  # pooled_projection_dim


def check_fixture(folder: Path) -> list[str]:
    """Writes ``folder/model`` (a 4-block SD3 transformer, random weights) and ``folder/data`` (ITEMS
    items); returns the ``--set`` assignments that point the recipe at them and keep it small."""
    import diffusers  # only here: importing diffusers is slow

    data = folder / "data"
    data.mkdir()
    with torch.random.fork_rng():  # the caller's random stream is left as it was
        torch.manual_seed(0)
        model = diffusers.SD3Transformer2DModel(
            sample_size=LATENT[1], patch_size=2, in_channels=LATENT[0], out_channels=LATENT[0], num_layers=4,
            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=TEXT[1], caption_projection_dim=16,
            pooled_projection_dim=POOLED, pos_embed_max_size=LATENT[1])
        for i in range(ITEMS):
            item = {"latent": torch.randn(LATENT), "text": torch.randn(TEXT), "pooled": torch.randn(POOLED)}
            save_file(item, str(data / f"{i:04d}.safetensors"))
    model.save_pretrained(folder / "model")
    return [f"data.path={data}", f"model.path={folder / 'model'}", "model.dtype=fp32",
            "layersync.pairs=[[2,4]]", "train.num_workers=0"]
