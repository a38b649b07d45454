"""Latents of an image folder computed once: the ``layersync-cache`` command and the data set reading them.

A cache folder holds ``meta.json`` and shards ``shard_00000.safetensors``, ... Each shard
stores, for up to ``shard_size`` consecutive images of the data set (ImageFolder or parquet order),
the SD-VAE posterior ``mean`` and ``std`` (unscaled, float32, shape (N, 2, C, h, w):
index 0 the centre-cropped image, 1 its horizontal flip) and the class ``label``.
Training then draws z = scale * (mean + std * eps), exactly what encoding online does.
``meta.json`` carries a fingerprint of the inputs (the image files, the VAE, the
preprocessing, the shard size); a cache is only ever completed with the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from layersync.cli.common import Parser, entry_point
from layersync.errors import ConfigError, DataError
from layersync.files import atomic, write_json
from layersync.train import distributed
from layersync_image.data import ImageFolderDataset, ParquetImageDataset, build_images
from layersync_image.vae import SD_SCALE, SDVAETokenizer, load_vae, vae_fingerprint

log = logging.getLogger("layersync")

FORMAT = 1
META = "meta.json"
CROP = "adm-center"  # layersync_image.data.center_crop
PARTS = {"data": "the images", "vae": "the VAE", "preprocessing": "the preprocessing", "layout": "the shard size"}


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def source_files(dataset: ImageFolderDataset | ParquetImageDataset) -> tuple[Path, list[Path]]:
    """The folder and the files the items come from (images, or parquet shards)."""
    if isinstance(dataset, ParquetImageDataset):
        return dataset.files[0].parent, list(dataset.files)
    return dataset.root, [path for path, _ in dataset.items]


def data_fingerprint(dataset: ImageFolderDataset | ParquetImageDataset) -> dict:
    """The item count, and hashes of the sorted relative source paths, alone and with sizes and mtimes."""
    root, files = source_files(dataset)
    names, stats = hashlib.sha256(), hashlib.sha256()
    for path in files:
        relative = path.relative_to(root).as_posix()
        info = path.stat()
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


def read_meta(path: Path) -> dict:
    file = path / META
    if not file.is_file():
        raise DataError(f"{path} is not a latent cache: {file} is missing (make one with layersync-cache)")
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {file}: {exc}") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{file} has cache format {meta.get('format')!r}, this version reads format {FORMAT}")
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


def _encode_shards(dataset, tokenizer, meta, out: Path, env, batch: int, workers: int) -> int:
    """Encode this rank's missing shards (i % world == rank); returns how many it wrote."""
    pending = [i for i in range(meta["num_shards"]) if i % env.world == env.rank and not (out / shard_name(i)).exists()]
    batches = []  # index lists that never cross a shard boundary
    for i in pending:
        rows = _shard_range(i, meta)
        batches += [list(rows[s : s + batch]) for s in range(0, len(rows), batch)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=env.device.type == "cuda")
    log.info("rank %d: %d of %d shards to encode (%d images)", env.rank, len(pending), meta["num_shards"],
             sum(map(len, batches)))
    bar = tqdm(total=sum(map(len, batches)), unit="img", disable=not env.main, dynamic_ncols=True,
               desc=f"encoding (rank 0 of {env.world})" if env.world > 1 else "encoding")
    means, stds, labels = [], [], []
    for rows, (x, y) in zip(batches, loader):
        x = x.to(env.device, non_blocking=True)
        mean, std = tokenizer.moments(torch.cat([x, x.flip(-1)]))  # the image and its horizontal flip
        n = len(x)
        means.append(torch.stack([mean[:n], mean[n:]], 1).cpu())
        stds.append(torch.stack([std[:n], std[n:]], 1).cpu())
        labels.append(y.long())
        shard = rows[0] // meta["shard_size"]
        if rows[-1] == _shard_range(shard, meta)[-1]:  # the shard's last batch
            tensors = {"mean": torch.cat(means), "std": torch.cat(stds), "label": torch.cat(labels)}
            with atomic(out / shard_name(shard)) as tmp:
                save_file(tensors, str(tmp))
            means, stds, labels = [], [], []
        bar.update(n)
    bar.close()
    return len(pending)


def write_cache(data: str, out: str, vae: str | None = None, variant: str = "ema", image_size: int = 256,
                batch: int = 64, shard_size: int = 1024, device: str = "auto", workers: int = 0) -> dict:
    """Encode ``data`` (an ImageFolder tree or parquet shards) into the cache folder ``out``.

    Resumes where it stopped; shards are shared out across ranks under torchrun.
    """
    if batch < 1 or shard_size < 1 or image_size < 1:
        raise ConfigError(
            f"--batch, --shard-size and --image-size must be positive, got {batch}, {shard_size}, {image_size}"
        )
    env = distributed.setup(device)
    try:
        dataset = build_images(data, image_size, channels=3, hflip=False)
        model = load_vae(vae, variant)
        fingerprint = {
            "data": data_fingerprint(dataset),
            "vae": vae_fingerprint(model),
            "preprocessing": {"image_size": image_size, "crop": CROP, "flips": True, "scale": SD_SCALE},
            "layout": {"shard_size": shard_size},
        }
        tokenizer = SDVAETokenizer(model, SD_SCALE, env.device)
        out_dir = Path(out)
        existing = _check_existing(out_dir, fingerprint)
        distributed.barrier(env)  # every rank has checked before rank 0 writes
        if env.main and not existing:
            out_dir.mkdir(parents=True, exist_ok=True)
            meta = {
                "format": FORMAT,
                "fingerprint": fingerprint,
                "num_items": len(dataset),
                "shard_size": shard_size,
                "num_shards": math.ceil(len(dataset) / shard_size),
                "latent_shape": list(tokenizer.latent_shape(dataset.sample_shape)),
                "classes": dataset.classes,  # names; None for parquet without Hugging Face metadata
                "num_classes": dataset.num_classes,
                "source": str(Path(data).resolve()),
            }
            write_json(out_dir / META, meta)
        distributed.barrier(env)
        meta = read_meta(out_dir)
        written = _encode_shards(dataset, tokenizer, meta, out_dir, env, batch, workers)
        distributed.barrier(env)
        if env.main:
            log.info("latent cache %s: %d images in %d shards (%d written by rank 0)", out_dir, meta["num_items"],
                     meta["num_shards"], written)
        return meta
    finally:
        distributed.teardown(env)


@entry_point("layersync-cache")
def main(argv=None):
    parser = Parser(prog="layersync-cache",
                    description="Precompute SD-VAE latents (image and flip) of an ImageFolder or parquet data set.")
    parser.add_argument("--plugin", default="image", choices=["image"], help="the modality (image)")
    parser.add_argument("--data", required=True, help="ImageFolder root (root/<class>/<image>), or Hugging Face parquet shards")
    parser.add_argument("--out", required=True, help="the cache folder (created, or resumed)")
    parser.add_argument("--vae", default=None,
                        help="local AutoencoderKL folder (default: $LAYERSYNC_WEIGHTS_DIR/sd-vae-ft-<variant>)")
    parser.add_argument("--variant", default="ema", choices=["ema", "mse"],
                        help="SD-VAE variant for the default folder")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64,
                        help="images per encoder batch (each is encoded with its flip)")
    parser.add_argument("--shard-size", type=int, default=1024, help="images per shard file")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--workers", type=int, default=4, help="data loader processes")
    args = parser.parse_args(argv)
    write_cache(args.data, args.out, args.vae, args.variant, args.image_size, args.batch, args.shard_size,
                args.device, args.workers)


# ---- reading ------------------------------------------------------------------------------------


class LatentCacheDataset(Dataset):
    """``(z, label)`` from a latent cache, z = scale * (mean + std * eps) of the image or its flip.

    The flip and eps are drawn from torch's global RNG (seeded per DataLoader
    worker). Labels are read up front; latent moments are read per item from
    the memory-mapped shards, so a cache larger than memory works.
    ``expect``: fingerprint parts the cache must have, e.g.
    ``{"preprocessing": {"image_size": 256}}``; a difference is a DataError.
    """

    encoded = True

    def __init__(self, path: str, expect: dict | None = None):
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
        self.shard_size, self.scale = meta["shard_size"], meta["fingerprint"]["preprocessing"]["scale"]
        self.sample_shape = tuple(meta["latent_shape"])
        self.classes, self.num_classes = meta["classes"], meta["num_classes"]
        self.labels = torch.cat([self._read_labels(i, meta) for i in range(meta["num_shards"])])
        self._shards = {}  # index -> open safetensors file, per process

    def _read_labels(self, index: int, meta: dict) -> torch.Tensor:
        file = self.path / shard_name(index)
        rows = len(_shard_range(index, meta))
        try:
            with safe_open(str(file), "pt") as f:
                labels, shape = f.get_tensor("label"), f.get_slice("mean").get_shape()
        except (SafetensorError, OSError, KeyError) as exc:
            raise DataError(f"cannot read shard {file}: {exc}") from None
        if len(labels) != rows or shape != [rows, 2, *meta["latent_shape"]]:
            raise DataError(f"shard {file} holds {len(labels)} rows of latents {shape[1:]}, expected {rows} rows of "
                            f"[2, {', '.join(map(str, meta['latent_shape']))}]")
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
        flip = int(torch.randint(2, (1,)))
        mean, std = file.get_slice("mean")[row, flip], file.get_slice("std")[row, flip]
        return (mean + std * torch.randn_like(mean)) * self.scale, int(self.labels[i])


def latent_cache(path: str, expect: dict | None = None) -> LatentCacheDataset:
    """Dataset factory (registry name ``latent-cache``)."""
    return LatentCacheDataset(path, expect)
    return 0


if __name__ == "__main__":
    main()
