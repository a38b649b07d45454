"""Checkpoints that hold everything shaping a run, written atomically."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from layersync.errors import DataError
from layersync.files import atomic

log = logging.getLogger("layersync")
PATTERN = re.compile(r"step_(\d+)\.pt$")


def save(state: dict, directory: Path, step: int, keep: int = 0, keep_every: int = 0) -> Path:
    """Write ``step_NNNNNNN.pt`` through a temporary name, then rename. ``keep > 0``: delete all but
    the last ``keep`` checkpoints, except those of steps that are multiples of ``keep_every > 0``."""
    path = directory / f"step_{step:07d}.pt"
    with atomic(path) as tmp, open(tmp, "wb") as f:
        out = WriteRecorder(f)
        try:
            torch.save(state, out)
        except RuntimeError:  # torch reports a failed write as "unexpected pos ..."
            if out.error is None:
                raise
            raise out.error from None  # the OSError (ENOSPC, ...), which ``atomic`` reports naming the checkpoint
    if keep > 0:
        for old in list_checkpoints(directory)[:-keep]:
            if not (keep_every > 0 and step_of(old) % keep_every == 0):
                old.unlink()
    return path


class WriteRecorder:
    """A file for ``torch.save`` that keeps the OSError of a failed write."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def step_of(path: Path) -> int:
    return int(PATTERN.search(path.name).group(1))


def list_checkpoints(directory: Path) -> list[Path]:
    found = [p for p in Path(directory).glob("step_*.pt") if PATTERN.search(p.name)]
    return sorted(found, key=step_of)


def latest(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load(path: Path, map_location="cpu", keys=()) -> dict:
    """Load with ``weights_only=True``: a checkpoint never runs code. ValueError if it cannot be
    read or lacks one of ``keys``."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(missing)}")
    return state


def load_latest(directory: Path, keys=(), map_location="cpu", move_aside: bool = True) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads and holds ``keys``, as (path, state); None if there are none.
    A bad one is renamed ``*.corrupt`` (with ``move_aside``; one process of a run does it) and the one
    before it tried; DataError if none is left."""
    found = list_checkpoints(directory)
    for path in reversed(found):
        try:
            return path, load(path, map_location, keys)
        except FileNotFoundError:  # moved aside by another process meanwhile
            continue
        except ValueError as exc:
            if move_aside:
                path.replace(path.with_name(path.name + ".corrupt"))
                log.warning("%s; moved aside to %s.corrupt, trying the checkpoint before it", exc, path.name)
    if found:
        raise DataError(f"no checkpoint in {directory} can be read (each was moved aside as *.corrupt): nothing "
                        "to resume from; put a good checkpoint back, or start over with --restart")
    return None
