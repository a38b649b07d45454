"""Checkpoints that hold everything shaping a run, written atomically.

Two forms: ``step_N.pt``, one file written by process 0 (DDP, one process), and ``step_N/``, a
folder of ``torch.distributed.checkpoint`` (DCP) shards that every process writes its part of
(``train.parallel=fsdp``), with ``meta.pt``: everything but the sharded tensors. DCP reshards on
load, so a folder loads at any number of processes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from layersync.errors import ConfigError, DataError, WriteError
from layersync.files import _fsync, atomic

log = logging.getLogger("layersync")
PATTERN = re.compile(r"step_(\d+)(\.pt)?$")
META = "meta.pt"  # in a folder: the non-sharded part, read with weights_only=True
SHARDED = "sharded"  # meta's list of the entries held as DCP shards


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
    prune(directory, step, keep, keep_every)
    return path


def prune(directory: Path, step: int, keep: int, keep_every: int) -> None:
    if keep > 0:
        for old in list_checkpoints(directory)[:-keep]:
            if not (keep_every > 0 and step_of(old) % keep_every == 0):
                shutil.rmtree(old) if old.is_dir() else old.unlink()


def _main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_sharded(tensors: dict, meta: dict, directory: Path, step: int, keep: int = 0, keep_every: int = 0) -> Path:
    """A collective: write ``step_NNNNNNN/`` through ``step_NNNNNNN.tmp/``. ``tensors`` (nested dicts of
    DTensors or tensors: each process writes its shards) through DCP, ``meta`` (``SHARDED`` names the
    entries of ``tensors``) by process 0, which then renames the folder and prunes as ``save`` does."""
    from torch.distributed.checkpoint import save as dcp_save

    path = Path(directory) / f"step_{step:07d}"
    tmp = path.with_name(path.name + ".tmp")
    try:
        if _main():
            shutil.rmtree(tmp, ignore_errors=True)  # left by a crash
            tmp.mkdir(parents=True)
        _barrier()
        dcp_save(tensors, checkpoint_id=tmp)  # fsyncs its files
        if _main():
            with open(tmp / META, "wb") as f:
                torch.save({**meta, SHARDED: sorted(tensors)}, f)
                f.flush()
                os.fsync(f.fileno())
            if path.exists():  # saved again at this step (a stop right after a checkpoint)
                shutil.rmtree(path)
            os.replace(tmp, path)
            _fsync(path.parent, folder=True)
    except OSError as exc:
        raise WriteError(path, exc) from None
    if _main():
        prune(directory, step, keep, keep_every)
    _barrier()
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
    """``step_N.pt`` files and ``step_N/`` folders, oldest first."""
    found = [p for p in Path(directory).glob("step_*") if PATTERN.search(p.name) and p.is_dir() != p.name.endswith(".pt")]
    return sorted(found, key=step_of)


def latest(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load(path: Path, map_location="cpu", keys=(), whole: bool = True) -> dict:
    """Load with ``weights_only=True``: a checkpoint never runs code. ValueError if it cannot be
    read or lacks one of ``keys``. A folder: its ``meta.pt``, and with ``whole`` its sharded
    ``model`` and ``ema`` read whole (without: the caller reads the shards, ``load_sharded``)."""
    path = Path(path)
    if path.is_dir():
        state = load(path / META, map_location, [key for key in keys if key not in ("model", "ema", "optimizer")])
        missing = [key for key in keys if key not in state and key not in state.get(SHARDED, ())]
        if missing or not (path / ".metadata").is_file():
            raise ValueError(f"checkpoint {path} lacks {', '.join(missing) or 'its DCP .metadata'}")
        if whole:
            entries = [key for key in ("model", "ema") if key in state[SHARDED]]
            state.update(load_sharded(path, whole_tensors(path, entries, map_location)))
        return state
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


def layout(path: Path, entry: str) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """The whole shape and dtype of each tensor under ``entry`` of a DCP folder, from its metadata."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    items = FileSystemReader(path).read_metadata().state_dict_metadata.items()
    return {key[len(entry) + 1:]: (item.size, item.properties.dtype) for key, item in items
            if key.startswith(entry + ".") and isinstance(item, TensorStorageMetadata)}


def whole_tensors(path: Path, entries, map_location="cpu") -> dict:
    """Empty whole tensors for the ``entries`` of a DCP folder."""
    return {entry: {name: torch.empty(size, dtype=dtype, device=map_location)
                    for name, (size, dtype) in layout(path, entry).items()} for entry in entries}


def load_sharded(path: Path, tensors: dict) -> dict:
    """Read a DCP folder into ``tensors`` (nested dicts of DTensors or tensors, each process its shards:
    DCP reshards), in place; a collective where a process group is set up. ValueError if it cannot."""
    from torch.distributed.checkpoint import load as dcp_load

    try:
        dcp_load(tensors, checkpoint_id=path)
    except Exception as exc:
        raise ValueError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None
    return tensors


def load_latest(directory: Path, keys=(), map_location="cpu", move_aside: bool = True, then=None,
                whole: bool = True) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads and holds ``keys``, as (path, state); None if there are none.
    ``then(path, state)``, if given, finishes loading (a ValueError from it counts as unreadable, a ConfigError
    is raised as it is).
    A bad one is renamed ``*.corrupt`` (with ``move_aside``; one process of a run does it) and the one
    before it tried; DataError if none is left."""
    found = list_checkpoints(directory)
    for path in reversed(found):
        try:
            state = load(path, map_location, keys, whole)
            if then is not None:
                then(path, state)
            return path, state
        except FileNotFoundError:  # moved aside by another process meanwhile
            continue
        except ConfigError:
            raise
        except ValueError as exc:
            if move_aside:
                path.replace(path.with_name(path.name + ".corrupt"))
                log.warning("%s; moved aside to %s.corrupt, trying the checkpoint before it", exc, path.name)
    if found:
        raise DataError(f"no checkpoint in {directory} can be read (each was moved aside as *.corrupt): nothing "
                        "to resume from; put a good checkpoint back, or start over with --restart")
    return None
