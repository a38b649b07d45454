"""Tokenizer outputs computed once: the latent cache that ``layersync-cache`` writes and training reads.

A cache folder holds ``meta.json`` and shards ``shard_00000.safetensors``, ... Each shard
stores, for up to ``shard_size`` consecutive items of the data set (in its order), the
tokenizer's output for each of the modality's views of the item (images: the item and its
horizontal flip), shape (N, views, *latent shape), and the class ``label``. A tokenizer
that encodes to a distribution (``moments`` and ``scale``, e.g. a VAE) has its unscaled
posterior ``mean`` and ``std`` stored, and training draws z = scale * (mean + std * eps),
exactly what encoding online does; any other tokenizer has its output stored as ``mean``.
``meta.json`` carries a fingerprint of the inputs (the data files, the tokenizer, the
preprocessing, the shard size); a cache is only ever completed with the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import signal
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from layersync.errors import ConfigError, DataError, Interrupted
from layersync.files import atomic, discard_unfinished, write_json
from layersync import distributed

log = logging.getLogger("layersync")

FORMAT = 2
META = "meta.json"
PARTS = {"data": "the data", "tokenizer": "the tokenizer", "preprocessing": "the preprocessing",
         "layout": "the shard size"}

Views = Callable[[torch.Tensor], list[torch.Tensor]]


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def data_fingerprint(dataset) -> dict:
    """The item count, and hashes of the sorted relative source paths, alone and with sizes and mtimes."""
    if not hasattr(dataset, "sources"):
        raise ConfigError(f"{type(dataset).__name__} cannot be cached: it does not say which files it reads "
                          "(a data set needs sources() -> (root, files))")
    root, files = dataset.sources()
    names, stats = hashlib.sha256(), hashlib.sha256()
    for path in files:
        relative = Path(path).relative_to(root).as_posix()
        info = Path(path).stat()
        names.update(f"{relative}\n".encode())
        stats.update(f"{relative}\t{info.st_size}\t{info.st_mtime_ns}\n".encode())
    return {"files": len(dataset), "names_sha256": names.hexdigest(), "stats_sha256": stats.hexdigest()}


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def differences(found: dict, wanted: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """``(dotted key, value in found, value in wanted)`` for each key of ``wanted`` that ``found`` does not match."""
    out = []
    for key, value in wanted.items():
        have = found.get(key) if isinstance(found, dict) else None
        if isinstance(value, dict) and isinstance(have, dict):
            out += differences(have, value, f"{prefix}{key}.")
        elif have != value:
            out.append((prefix + key, have, value))
    return out


def mismatch_message(path: Path, diffs: list, wanted: str) -> str:
    changed = ", ".join(dict.fromkeys(PARTS.get(key.split(".")[0], key) for key, _, _ in diffs))
    details = "; ".join(f"{key}: {_short(have)} in the cache, {_short(value)} {wanted}" for key, have, value in diffs)
    return f"latent cache {path} was made from other inputs: {changed} changed ({details})"


def tokenizer_fingerprint(tokenizer) -> dict:
    """The parts of a cache's fingerprint that ``tokenizer`` decides: its own fingerprint and the latent scale."""
    scale = float(tokenizer.scale) if hasattr(tokenizer, "moments") else 1.0
    return {"tokenizer": json.loads(json.dumps(tokenizer.fingerprint())), "preprocessing": {"scale": scale}}


def read_meta(path: Path) -> dict:
    file = path / META
    if not file.is_file():
        raise DataError(f"{path} is not a latent cache: {file} is missing (make one with layersync-cache)")
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {file}: {exc}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{file} holds a JSON {type(meta).__name__}, not a cache's meta (make the cache again "
                        "with layersync-cache)")
    if meta.get("format") != FORMAT:
        raise DataError(f"{file} has cache format {meta.get('format')!r}, this version reads format {FORMAT} "
                        "(make the cache again with layersync-cache)")
    return meta


# ---- writing ------------------------------------------------------------------------------------


def _shard_range(index: int, meta: dict) -> range:
    start = index * meta["shard_size"]
    return range(start, min(start + meta["shard_size"], meta["num_items"]))


def _check_existing(out: Path, fingerprint: dict) -> bool:
    """True if ``out`` already holds a cache of these inputs; an error if it holds anything else."""
    if (out / META).exists():
        diffs = differences(read_meta(out)["fingerprint"], fingerprint)
        if diffs:
            raise DataError(mismatch_message(out, diffs, "now") + f"; write to a new --out or delete {out}")
        return True
    if out.is_dir() and any(out.glob("shard_*")):
        raise DataError(f"{out} holds shards but no {META}: not a cache this command wrote; choose a new --out")
    return False


def _encode_shards(dataset, tokenizer, views: Views, meta, out: Path, env, batch: int, workers: int) -> int:
    """Encode this rank's missing shards (i % world == rank); returns how many it wrote."""
    pending = [i for i in range(meta["num_shards"]) if i % env.world == env.rank and not (out / shard_name(i)).exists()]
    batches = []  # index lists that never cross a shard boundary
    for i in pending:
        rows = _shard_range(i, meta)
        batches += [list(rows[s : s + batch]) for s in range(0, len(rows), batch)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=env.device.type == "cuda")
    log.info("rank %d: %d of %d shards to encode (%d items)", env.rank, len(pending), meta["num_shards"],
             sum(map(len, batches)))
    bar = tqdm(total=sum(map(len, batches)), unit="item", disable=not env.main, dynamic_ncols=True,
               desc=f"encoding (rank 0 of {env.world})" if env.world > 1 else "encoding")
    # x -> (mean, std or None), float32 on the input's device
    encode = tokenizer.moments if hasattr(tokenizer, "moments") else lambda x: (tokenizer.encode(x).float(), None)
    stored: dict[str, list] = {"mean": [], "std": [], "label": []}
    with torch.no_grad(), bar:  # the bar ends its line before an error is printed
        for rows, (x, y) in zip(batches, loader):
            x = x.to(env.device, non_blocking=True)
            n = len(x)
            mean, std = encode(torch.cat(views(x)))  # all views of the batch in one pass
            stored["mean"].append(torch.stack(mean.split(n), 1).cpu())
            if std is not None:
                stored["std"].append(torch.stack(std.split(n), 1).cpu())
            stored["label"].append(torch.as_tensor(y).long())
            shard = rows[0] // meta["shard_size"]
            if rows[-1] == _shard_range(shard, meta)[-1]:  # the shard's last batch
                tensors = {key: torch.cat(parts).contiguous() for key, parts in stored.items() if parts}
                with atomic(out / shard_name(shard)) as tmp:
                    save_file(tensors, str(tmp))
                stored = {key: [] for key in stored}
            bar.update(n)
    return len(pending)


def write_cache(dataset, tokenizer, out: str | Path, *, preprocessing: dict, views: Views | None = None,
                batch: int = 64, shard_size: int = 1024, device: str = "auto", workers: int = 0) -> dict:
    """Encode every item of ``dataset`` (and its ``views``) with ``tokenizer`` into the cache folder ``out``.

    ``preprocessing``: what else decides the latents (the data options), recorded in the
    fingerprint. Resumes where it stopped; shards are shared out across ranks under torchrun.
    """
    if batch < 1 or shard_size < 1:
        raise ConfigError(f"--batch and --shard-size must be positive, got {batch} and {shard_size}")
    if not hasattr(tokenizer, "fingerprint"):
        raise ConfigError(f"tokenizer {type(tokenizer).__name__} cannot be cached: it has no fingerprint() "
                          "(an identity tokenizer has nothing to cache)")
    views = views or (lambda x: [x])
    env = distributed.setup(device)
    held = ExitStack()
    try:
        held.enter_context(_stopped_by_signals(Path(out)))
        stochastic = hasattr(tokenizer, "moments")
        made_by = tokenizer_fingerprint(tokenizer)
        fingerprint = {
            "data": data_fingerprint(dataset),
            "tokenizer": made_by["tokenizer"],
            "preprocessing": {**json.loads(json.dumps(preprocessing)), **made_by["preprocessing"]},
            "layout": {"shard_size": shard_size},
        }
        out_dir = Path(out)
        held.enter_context(distributed.writer_lock(out_dir, "latent cache", env))
        existing = _check_existing(out_dir, fingerprint)
        distributed.barrier(env)  # every rank has checked before rank 0 writes
        if env.main:
            discard_unfinished(out_dir)
        if env.main and not existing:
            num_views = len(views(torch.zeros(1, *dataset.sample_shape)))
            meta = {
                "format": FORMAT,
                "fingerprint": fingerprint,
                "num_items": len(dataset),
                "shard_size": shard_size,
                "num_shards": math.ceil(len(dataset) / shard_size),
                "views": num_views,
                "stochastic": stochastic,
                "latent_shape": list(tokenizer.latent_shape(tuple(dataset.sample_shape))),
                "classes": getattr(dataset, "classes", None),
                "num_classes": int(getattr(dataset, "num_classes", 0)),
            }
            write_json(out_dir / META, meta)
        distributed.barrier(env)
        meta = read_meta(out_dir)
        written = _encode_shards(dataset, tokenizer, views, meta, out_dir, env, batch, workers)
        distributed.barrier(env)
        if env.main:
            log.info("latent cache %s: %d items in %d shards (%d written by rank 0)", out_dir, meta["num_items"],
                     meta["num_shards"], written)
        return meta
    finally:
        held.close()
        distributed.teardown(env)


@contextmanager
def _stopped_by_signals(out: Path) -> Iterator[None]:
    """SIGINT and SIGTERM raise an ``Interrupted`` that says what the cache keeps (the CLI prints it and exits
    130 or 143); raised at once, so the DataLoader's workers are ended on the way out."""
    def stop(signum, frame):
        kept = len(list(out.glob("shard_*.safetensors")))
        raise Interrupted(f"stopped by {signal.Signals(signum).name}: latent cache {out} keeps the shards written so "
                          f"far ({kept}); run layersync-cache again with the same arguments to resume", signum)

    handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


# ---- reading ------------------------------------------------------------------------------------


class LatentCacheDataset(Dataset):
    """``(z, label)`` from a latent cache: a random view, z = scale * (mean + std * eps) (or the stored output).

    The view and eps are drawn from torch's global RNG (seeded per DataLoader worker).
    Labels are read up front; latents per item from the memory-mapped shards, so a
    cache larger than memory works. ``expect``: fingerprint parts the cache must have,
    e.g. ``{"preprocessing": {"data": {"image_size": 256}}}``; a difference is a DataError.
    """

    encoded = True

    def __init__(self, path: str, expect: dict | None = None):
        if path is None:
            raise ConfigError("data.path must name a latent cache folder (made with layersync-cache); set --data")
        self.path = Path(path)
        meta = read_meta(self.path)
        diffs = differences(meta["fingerprint"], expect or {})
        if diffs:
            raise DataError(mismatch_message(self.path, diffs, "expected") + " (the expectation is data.expect in the config)")
        missing = [shard_name(i) for i in range(meta["num_shards"]) if not (self.path / shard_name(i)).is_file()]
        if missing:
            raise DataError(
                f"latent cache {self.path} is incomplete: {len(missing)} of {meta['num_shards']} shards missing "
                f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); run layersync-cache again with "
                "the same arguments to complete it"
            )
        self.fingerprint = meta["fingerprint"]
        self.shard_size, self.scale = meta["shard_size"], self.fingerprint["preprocessing"]["scale"]
        self.views, self.stochastic = meta["views"], meta["stochastic"]
        self.sample_shape = tuple(meta["latent_shape"])
        self.classes, self.num_classes = meta["classes"], meta["num_classes"]
        self.labels = torch.cat([self._read_labels(i, meta) for i in range(meta["num_shards"])])
        self._shards = {}  # index -> open safetensors file, per process

    def check_tokenizer(self, tokenizer) -> None:
        """The run's tokenizer (which names the latents' shape and decodes samples) must be the one that made
        the cache: a ConfigError naming both."""
        made = self.fingerprint["tokenizer"]
        if not hasattr(tokenizer, "fingerprint"):
            raise ConfigError(f"latent cache {self.path} holds latents of tokenizer {made.get('name')!r}, but the "
                              f"run's tokenizer is {type(tokenizer).__name__}, which did not make them: set tokenizer "
                              "to the one that made the cache")
        diffs = differences(self.fingerprint, tokenizer_fingerprint(tokenizer))
        if diffs:
            names = [diff for diff in diffs if diff[0] == "tokenizer.name"]  # another kind: the rest says little
            raise ConfigError(mismatch_message(self.path, names or diffs, "in the run's tokenizer")
                              + "; set tokenizer to the one that made the cache")

    def _read_labels(self, index: int, meta: dict) -> torch.Tensor:
        file = self.path / shard_name(index)
        rows = len(_shard_range(index, meta))
        try:
            with safe_open(str(file), "pt") as f:
                labels, shape = f.get_tensor("label"), f.get_slice("mean").get_shape()
                has_std = "std" in f.keys()
        except (SafetensorError, OSError, KeyError) as exc:
            raise DataError(f"cannot read shard {file}: {exc}") from None
        expected = [rows, meta["views"], *meta["latent_shape"]]
        if len(labels) != rows or shape != expected or has_std != meta["stochastic"]:
            raise DataError(f"shard {file} holds {len(labels)} rows of latents {shape[1:]}"
                            f"{' with' if has_std else ' without'} std, expected {rows} rows of {expected[1:]}"
                            f"{' with' if meta['stochastic'] else ' without'} std")
        return labels

    def __getstate__(self):  # open files stay behind when the data set is sent to a worker
        return {**self.__dict__, "_shards": {}}

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        if not 0 <= i < len(self.labels):
            raise IndexError(f"index {i} out of range for a cache of {len(self.labels)} items")
        shard, row = divmod(int(i), self.shard_size)
        if shard not in self._shards:
            self._shards[shard] = safe_open(str(self.path / shard_name(shard)), "pt")
        file = self._shards[shard]
        view = int(torch.randint(self.views, (1,)))
        z = file.get_slice("mean")[row, view]
        if self.stochastic:
            z = z + file.get_slice("std")[row, view] * torch.randn_like(z)
        return z * self.scale, int(self.labels[i])


def latent_cache(path: str | None = None, expect: dict | None = None) -> LatentCacheDataset:
    """Dataset factory (registry name ``latent-cache``)."""
    return LatentCacheDataset(path, expect)
