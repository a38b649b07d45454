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
from layersync.sampling import derive_seed
from layersync.train.optim import load_optimizer_state

log = logging.getLogger("layersync")
PATTERN = re.compile(r"step_(\d+)(\.pt)?$")
META = "meta.pt"  # in a folder: the non-sharded part, read with weights_only=True
SHARDED = "sharded"  # meta's list of the entries held as DCP shards
TENSORS = ("model", "ema", "optimizer")  # the entries a training checkpoint's folder holds as DCP shards
# What a training checkpoint must hold to be resumed from (``restore_training``); one without is set aside as corrupt.
RESTORE_KEYS = ("step", "config", "model", "ema", "optimizer", "step_generator", "torch_rng")


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


def save_sharded(tensors: dict, meta: dict, directory: Path, step: int, keep: int = 0, keep_every: int = 0) -> Path:
    """A collective: write ``step_NNNNNNN/`` through ``step_NNNNNNN.tmp/``. ``tensors`` (nested dicts of
    DTensors or tensors: each process writes its shards) through DCP, ``meta`` (``SHARDED`` names the
    entries of ``tensors``) by process 0, which then renames the folder and prunes as ``save`` does."""
    from torch.distributed.checkpoint import save as dcp_save

    path = Path(directory) / f"step_{step:07d}"
    tmp = path.with_name(path.name + ".tmp")
    main = not dist.is_initialized() or dist.get_rank() == 0
    barrier = dist.barrier if dist.is_initialized() else lambda: None
    try:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)  # left by a crash
            tmp.mkdir(parents=True)
        barrier()
        dcp_save(tensors, checkpoint_id=tmp)  # fsyncs its files
        if main:
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
    if main:
        prune(directory, step, keep, keep_every)
    barrier()
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
    return next(reversed(list_checkpoints(directory)), None)


def load(path: Path, map_location="cpu", keys=(), whole: bool = True) -> dict:
    """Load with ``weights_only=True``: a checkpoint never runs code. ValueError if it cannot be
    read or lacks one of ``keys``. A folder: its ``meta.pt``, and with ``whole`` its sharded
    ``model`` and ``ema`` read whole (without: the caller reads the shards, ``load_sharded``)."""
    path = Path(path)
    if path.is_dir():
        state = load(path / META, map_location, [key for key in keys if key not in TENSORS])
        missing = [key for key in keys if key not in state and key not in state.get(SHARDED, ())]
        if missing or not (path / ".metadata").is_file():
            raise ValueError(f"checkpoint {path} lacks {', '.join(missing) or 'its DCP .metadata'}")
        if whole:  # empty whole tensors, shaped as the metadata says, to read the shards into
            state.update(load_sharded(path, {entry: {name: torch.empty(size, dtype=dtype, device=map_location)
                                                     for name, (size, dtype) in layout(path, entry).items()}
                                             for entry in ("model", "ema") if entry in state[SHARDED]}))
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


def training_state(meta: dict, model, ema, optimizer, generator: torch.Generator) -> dict:
    """What a training checkpoint holds: ``meta`` (step, config, shapes), the weights, EMA weights and optimizer
    state, and the states of the step's generator and of torch's (CUDA) generators."""
    state = {**meta, "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
             "step_generator": generator.get_state(), "step_generator_device": generator.device.type,
             "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def save_training(state: dict, directory: Path, sharded: bool, keep: int = 0, keep_every: int = 0) -> Path:
    """A ``training_state``: ``step_N.pt`` (``save``); ``sharded`` (a collective): ``step_N/``, each process's part
    of the weights, EMA weights and AdamW state (keyed by parameter index, as ``optimizer.state_dict()`` numbers
    them) as DCP shards and the rest in ``meta.pt``."""
    if not sharded:
        return save(state, directory, state["step"], keep, keep_every)
    optimizer = state["optimizer"]
    tensors = {"model": state["model"], "ema": state["ema"],
               "optimizer": {str(i): s for i, s in optimizer["state"].items()}}
    meta = {key: value for key, value in state.items() if key not in TENSORS}
    meta["optimizer_groups"] = optimizer["param_groups"]
    return save_sharded(tensors, meta, directory, state["step"], keep, keep_every)


def restore_training(state: dict, path: Path, model, ema, optimizer, generator: torch.Generator, seed: int) -> None:
    """Load a training checkpoint's ``state`` into model, EMA, optimizer and generators; a DCP folder's (at
    ``path``) holds no tensors in it: they are read here, into this run's layout (any number of processes)."""
    if SHARDED in state:
        tensors = load_sharded(path, _shards_like(path, model, ema, optimizer))
        model.load_state_dict(tensors["model"])
        ema.load_state_dict(tensors["ema"])
        saved = {int(i): s for i, s in tensors["optimizer"].items()}
        load_optimizer_state(optimizer, {"state": saved, "param_groups": state["optimizer_groups"]})
    else:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        load_optimizer_state(optimizer, state["optimizer"])
    step, saved_on = int(state["step"]), state.get("step_generator_device", "cpu")
    if saved_on == generator.device.type:
        generator.set_state(state["step_generator"].cpu())
    else:  # a CPU generator's state does not fit a CUDA one (nor the other way round)
        generator.manual_seed(derive_seed(seed, step))
        log.info("the step generator was saved on %s and this run uses %s: reseeded from (seed, step %d); "
                 "noise from here on differs from the saved run's", saved_on, generator.device.type, step)
    torch.set_rng_state(state["torch_rng"].cpu())
    cuda_rng = state.get("cuda_rng", [])
    if torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_rng])


def _shards_like(path: Path, model, ema, optimizer) -> dict:
    """Tensors to read a DCP folder's shards into: this process's weights and EMA weights, and AdamW's state
    allocated as the folder's metadata says, sharded like its parameter."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for key, (size, dtype) in layout(path, "optimizer").items():
        index, name = key.split(".")
        param = params[int(index)]
        like = torch.zeros_like(param) if name != "step" and size == param.shape else torch.zeros(size, dtype=dtype)
        state.setdefault(index, {})[name] = like
    return {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": state}
