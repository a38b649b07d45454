"""Load SiT checkpoints of the reference implementations into our SiT.

vita-epfl/LayerSync (a SiT fork) and REPA save ``{"model", "ema", "opt", "args", ...}``
with SiT's module names, which ours follow key for key; SiT's own release is a bare
(EMA) state dict. What differs, and how it is handled:

* REPA's ``projectors.*`` (MLP heads onto DINOv2 features) have no counterpart in a
  generator: they are dropped, with a log line.
* ``pos_embed`` is a frozen parameter there and a buffer here: same key, loaded as saved.
* LayerSync's SiT has ``learn_sigma=True`` (2 x C output channels, the flow loss uses the
  first C); build ours with ``learn_sigma: true`` to load it. REPA's SiT has none.
* ``y_embedder.embedding_table`` has num_classes + 1 rows (the null class) as ours,
  when the reference was trained with label dropout.

Anything else that does not fit is a DataError naming the keys and shapes.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import NamedTuple

import torch

from layersync.errors import DataError

log = logging.getLogger("layersync")

DROPPED = ("projectors.",)


class LoadedCheckpoint(NamedTuple):
    entry: str  # "ema", "model" or "state dict"
    dropped: list[str]  # keys without a counterpart in our SiT


def _few(items, n=4) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def read_state_dict(path) -> tuple[dict[str, torch.Tensor], str]:
    """The EMA weights of a reference checkpoint if present, else the raw model's."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # the saved training `args`
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read checkpoint {path}: {first}") from None
    if isinstance(ckpt, dict):
        for entry in ("ema", "model"):
            if isinstance(ckpt.get(entry), dict):
                state = ckpt[entry]
                break
        else:
            state, entry = ckpt, "state dict"
        if state and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            if all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
                state = {k.removeprefix("module."): v for k, v in state.items()}
            return state, entry
    raise DataError(f"checkpoint {path} holds neither a state dict nor 'ema'/'model' state dicts")


def _hints(model, missing, unexpected, mismatched) -> list[str]:
    hints = []
    if "final_layer.linear.weight" in mismatched:
        hints.append(f"learn_sigma must match the checkpoint (the model has learn_sigma={model.learn_sigma})")
    if any(".q_norm." in k or ".k_norm." in k for k in missing + unexpected):
        hints.append("qk_norm must match the checkpoint")
    return hints


def load_reference_checkpoint(path, model) -> LoadedCheckpoint:
    """Load a reference SiT checkpoint (EMA preferred) into our ``SiT``, strictly."""
    state, entry = read_state_dict(path)
    dropped = sorted(k for k in state if k.startswith(DROPPED))
    state = {k: v for k, v in state.items() if not k.startswith(DROPPED)}
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    mismatched = {k: v for k, v in state.items() if k in ours and v.shape != ours[k].shape}
    problems = [f"missing keys {_few(missing)}"] if missing else []
    problems += [f"unexpected keys {_few(unexpected)}"] if unexpected else []
    if mismatched:
        shapes = [f"{k} {tuple(v.shape)} vs {tuple(ours[k].shape)}" for k, v in mismatched.items()]
        problems.append(f"shape mismatch (checkpoint vs model) {_few(shapes)}")
    if problems:
        raise DataError(
            f"checkpoint {path} ({entry}) does not fit this SiT (depth {model.depth}, hidden {model.hidden}, "
            f"patch {model.patch_size}): " + "; ".join(problems + _hints(model, missing, unexpected, mismatched))
        )
    model.load_state_dict(state)
    if dropped:
        log.info("checkpoint %s: dropped %d tensors with no counterpart in SiT (%s)", path, len(dropped),
                 ", ".join(sorted({k.split(".")[0] + ".*" for k in dropped})))
    log.info("loaded the %s weights of %s", entry, path)
    return LoadedCheckpoint(entry, dropped)
