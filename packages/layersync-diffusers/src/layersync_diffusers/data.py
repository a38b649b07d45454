"""Cached latents with precomputed text embeddings: the data a diffusers fine-tune trains on.

A folder of ``*.safetensors`` files, one item each, holding ``latent`` (the transformer's input,
already scaled as the pipeline scales it: (C, H, W) images, (C, F, H, W) videos), ``text`` (L, D)
(the text encoders' output, padded to a fixed L) and, for models that take one, ``pooled`` (P,).
Every file must hold the same keys and shapes. Items are ``(latent, {"text": ..., "pooled": ...})``.
The files are made outside LayerSync, with the model's own VAE and text encoders.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from layersync.errors import ConfigError, DataError
from layersync.files import atomic
from layersync.interfaces import Preview

KEYS = ("latent", "text", "pooled")


def _layout(file: Path) -> dict:
    try:
        with safe_open(str(file), "pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise DataError(f"cannot read {file}: {exc}") from None


class TextLatents(torch.utils.data.Dataset):
    encoded = True  # already in model space: no tokenizer runs on it
    num_classes = 0

    def __init__(self, path: str | None = None):
        if path is None:
            raise ConfigError("data.path is not set: give the folder of cached latents with --data")
        self.path = Path(path).expanduser()
        self.files = sorted(self.path.glob("*.safetensors")) if self.path.is_dir() else []
        if not self.files:
            raise DataError(f"{self.path} holds no .safetensors files of latents and text embeddings")
        self.layout = _layout(self.files[0])
        if "latent" not in self.layout or "text" not in self.layout or not set(self.layout) <= set(KEYS):
            raise DataError(f"{self.files[0]} holds {sorted(self.layout)}; expected latent, text and "
                            "optionally pooled")
        for file in self.files[1:]:
            if (found := _layout(file)) != self.layout:
                raise DataError(f"{file} holds {found}, unlike {self.files[0].name}: {self.layout}")
        self.sample_shape = self.layout["latent"]

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        item = load_file(str(self.files[i]))
        return item["latent"].float(), {key: item[key].float() for key in self.layout if key != "latent"}

    def preview(self, n: int):
        """The text conditions of the first items, in turn, for the preview samples."""
        conds = [self[i % len(self)][1] for i in range(n)]
        return {key: torch.stack([c[key] for c in conds]) for key in conds[0]}, None


def conditions(values: list[str], config: dict, num_classes: int):
    """What ``layersync-sample`` draws from (``Modality.conditions``): the text conditions of the run's first
    ``sample.num`` items, as previews take them (prompts are encoded outside LayerSync)."""
    if values:
        raise ConfigError("--cond: the diffusers modality samples the text conditions of its data items; encode "
                          "other prompts into items with the model's own pipeline")
    data = TextLatents(**{key: value for key, value in config["data"].items() if key != "name"})
    return data.preview(min(len(data), config["sample"]["num"]))


def save_latents(x: torch.Tensor, stem: Path, info: dict | None = None) -> Preview:
    """Samples are latents: ``stem.safetensors`` (decode them with the model's own VAE)."""
    path = Path(stem).with_suffix(".safetensors")
    with atomic(path) as tmp:
        save_file({"latent": x.detach().float().cpu().contiguous()}, str(tmp))
    return Preview("file", path)
