"""Checkpoints that hold everything shaping a run, written atomically."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from layersync.files import atomic

PATTERN = re.compile(r"step_(\d+)\.pt$")


def save(state: dict, directory: Path, step: int, keep: int = 0) -> Path:
    """Write ``step_NNNNNNN.pt`` through a temporary name, then rename."""
    path = directory / f"step_{step:07d}.pt"
    with atomic(path) as tmp:
        torch.save(state, tmp)
    if keep > 0:
        for old in list_checkpoints(directory)[:-keep]:
            old.unlink()
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    found = [p for p in Path(directory).glob("step_*.pt") if PATTERN.search(p.name)]
    return sorted(found, key=lambda p: int(PATTERN.search(p.name).group(1)))


def latest(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load(path: Path, map_location="cpu") -> dict:
    """Load with ``weights_only=True``: a checkpoint never runs code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None
