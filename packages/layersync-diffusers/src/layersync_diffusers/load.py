"""A diffusers transformer from a local folder, its block list, and LoRA through peft."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from layersync.errors import ConfigError

# Where diffusers transformers keep their blocks; several present are one list in this order
# (Flux: the double-stream blocks, then the single-stream ones, numbered on).
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "blocks", "layers")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def model_folder(path) -> Path:
    """The folder holding the transformer's ``config.json``: ``path`` itself, or its ``transformer/``
    (a whole pipeline downloaded with ``hf download``)."""
    if path is None:
        raise ConfigError("model.path is not set: give the local folder of the transformer (or of its pipeline) "
                          "with --set model.path=FOLDER")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"model.path={path}: no such folder (download the model once with `hf download ...`)")
    if not (folder / "config.json").is_file() and (folder / "transformer" / "config.json").is_file():
        folder = folder / "transformer"
    return folder


def load_transformer(path, dtype: str = "fp32") -> torch.nn.Module:
    """``from_pretrained`` on a local folder only; ConfigError naming what the folder holds otherwise."""
    import diffusers

    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype={dtype}: expected one of {', '.join(DTYPES)}")
    folder = model_folder(path)
    try:
        config = json.loads((folder / "config.json").read_text())
        name = config["_class_name"]
    except (OSError, ValueError, KeyError, TypeError):
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        raise ConfigError(f"model.path={path} is not a diffusers model folder: expected a config.json naming its "
                          f"_class_name (and the weights), found {found}") from None
    cls = getattr(diffusers, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise ConfigError(f"model.path={path}: config.json names _class_name {name!r}, which is not a model class of "
                          f"diffusers {diffusers.__version__}")
    try:
        return cls.from_pretrained(folder, torch_dtype=DTYPES[dtype], local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"model.path={path}: {name} cannot be loaded ({type(exc).__name__}: {exc})") from None


def find_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks, in the order the forward pass runs them (see ``BLOCK_LISTS``)."""
    blocks = [block for attr in BLOCK_LISTS if isinstance(getattr(model, attr, None), torch.nn.ModuleList)
              for block in getattr(model, attr)]
    if not blocks:
        children = ", ".join(name for name, _ in model.named_children()) or "none"
        raise ConfigError(f"{type(model).__name__} has no recognisable block list (looked for "
                          f"{', '.join(BLOCK_LISTS)}; it has {children})")
    return blocks


def add_lora(model: torch.nn.Module, rank: int = 16, alpha: float | None = None, target_modules=("to_q", "to_k",
             "to_v", "to_out.0"), dropout: float = 0.0) -> None:
    """Freeze ``model`` and add trainable LoRA adapters (peft) to ``target_modules``."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank),
                        target_modules=targets, lora_dropout=float(dropout))
    model.requires_grad_(False)
    try:
        inject_adapter_in_model(config, model)
    except ValueError as exc:
        if "not found" not in str(exc) and "Target module" not in str(exc):
            raise ConfigError(f"model.lora: {exc}") from None
        linear = sorted({name.split(".")[-1] if not name[-1:].isdigit() else ".".join(name.split(".")[-2:])
                         for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"model.lora.target_modules={targets} match no layer of {type(model).__name__}; its "
                          f"linear layers are named {', '.join(linear)}") from None
    for name, module in model.named_modules():
        if name.endswith((".lora_A", ".lora_B")):
            module.float()  # peft gives the adapters the base's dtype; they train in fp32
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
