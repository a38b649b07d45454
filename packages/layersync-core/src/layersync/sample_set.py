"""Writing samples as ``layersync-sample`` does (its help describes the files): a preview (OUT.png, OUT.npz),
or a sample set (manifest.json, parts/ as batches finish across ranks, the modality's own files, samples.npz)."""

from __future__ import annotations

import itertools
import json
import logging
import re
import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from layersync import config as configuration
from layersync import distributed
from layersync.errors import ConfigError, DataError
from layersync.files import atomic, discard_unfinished, write_json
from layersync.interfaces import save_samples

log = logging.getLogger("layersync")

PREVIEW = 64  # samples in one preview grid; more than this makes a sample set
PART = re.compile(r"part_(\d+)_(\d+)\.npz$")


def as_array(modality, x: torch.Tensor) -> np.ndarray:
    """Decoded samples in the modality's array format (float as decoded if it names none)."""
    return modality.to_array(x) if modality.to_array is not None else x.numpy()


def draw(pipe, labels: np.ndarray, start: int, seed: int, bar: tqdm) -> tuple[torch.Tensor, dict]:
    """Samples start .. start+len(labels)-1, decoded, and their info. ``bar`` (counting samples) moves as the
    model evaluations go, in whole samples; for dopri5, whose evaluations are not known ahead, at the end."""
    cond = pipe.conditions(labels)
    n, evaluations = len(labels), pipe.sampler.evaluations()
    done = itertools.count(1)

    def progress():
        k = next(done)
        bar.update(n * k // evaluations - n * (k - 1) // evaluations)

    z = pipe.sample(cond, seed=seed, start=start, progress=None if evaluations is None else progress)
    if evaluations is None:
        bar.update(n)
    return pipe.decode(z, cond, start)


def preview(pipe, out: Path, labels: np.ndarray, seed: int, batch: int) -> None:
    """OUT.png (``save_samples``) and OUT.npz: float ``samples``, ``cond`` (the labels) and the sample info."""
    with tqdm(total=len(labels), unit="sample", desc="sampling") as bar:
        x = torch.cat([draw(pipe, labels[s:s + batch], s, seed, bar)[0] for s in range(0, len(labels), batch)])
    info = pipe.sample_info(pipe.conditions(labels))
    picture = save_samples(pipe.modality, x, out, info).path
    with atomic(out.with_suffix(".npz")) as tmp, open(tmp, "wb") as f:
        np.savez(f, samples=x.numpy(), cond=labels, **info)
    log.info("%d samples from %s (step %d): %s, %s", len(x), pipe.checkpoint, pipe.step, picture,
             out.with_suffix(".npz"))


def manifest(pipe, *, weights: str, seed: int, cond, batch: int) -> dict:
    """What a sample set records of how it was sampled (as JSON reads it back)."""
    sample = pipe.config["sample"]
    to_array = pipe.modality.to_array
    batch_dependent = sample["method"] == "ode" and sample["solver"] == "dopri5"  # adaptive steps per batch
    return json.loads(json.dumps({
        "checkpoint": str(pipe.checkpoint.resolve()),
        "step": pipe.step,
        "weights": weights,
        "seed": seed,
        "cond": cond or None,
        "sample": sample,
        "array": f"{to_array.__module__}.{to_array.__qualname__}" if to_array else "float32",
        "sample_info": pipe.info,
        "batch": batch if batch_dependent else None,
    }))


def check_manifest(folder: Path, manifest: dict) -> bool:
    """True if ``folder`` already holds this run's manifest; ConfigError if it holds another's."""
    path = folder / "manifest.json"
    if not path.exists():
        return False
    try:
        there = json.loads(path.read_text())
    except ValueError as exc:  # not JSON, or not UTF-8
        raise DataError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(there, dict):
        raise DataError(f"{path} holds a JSON {type(there).__name__}, not the mapping layersync-sample writes; "
                        "use another --out or delete that folder")
    if there != manifest:
        flat_here, flat_there = configuration.flatten(manifest), configuration.flatten(there)
        diff = [f"{k}: {configuration.show(flat_here.get(k))} here vs {configuration.show(flat_there.get(k))} there"
                for k in sorted(set(flat_here) | set(flat_there)) if flat_here.get(k) != flat_there.get(k)]
        raise ConfigError(f"{folder} holds samples of another run ({'; '.join(diff)}); "
                          "use another --out or delete that folder")
    return True


def list_parts(folder: Path) -> list[tuple[int, int, Path]]:
    found = [(PART.match(p.name), p) for p in folder.glob("part_*.npz")]
    return sorted((int(m.group(1)), int(m.group(2)), p) for m, p in found if m)


def batches(n: int, done: list[tuple[int, int, Path]], size: int) -> list[tuple[int, int]]:
    """The index ranges still to sample: each gap between finished parts, cut into batches."""
    out, i = [], 0  # i: where the next gap may begin
    for start, end in [(a, b) for a, b, _ in done if b > a] + [(n, n)]:
        stop = min(start, n)
        out += [(s, min(s + size, stop)) for s in range(i, stop, size)]
        i = max(i, end)
    return out


def write_part(folder: Path, start: int, end: int, arrays: dict) -> Path:
    path = folder / f"part_{start:08d}_{end:08d}.npz"
    with atomic(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return path


def write_batch(modality, out: Path, start: int, labels: np.ndarray, x: torch.Tensor, info: dict) -> None:
    """Decoded samples start .. start+len(x)-1 of the set in ``out``: the modality's own files, then the part
    that marks them done."""
    array = as_array(modality, x)
    if modality.save_items:  # one file per sample (audio: WAV)
        modality.save_items(array, start, out, info)
    write_part(out / "parts", start, start + len(x), {
        "index": np.arange(start, start + len(x)), "label": labels, "array": array,
        "preview": x[: max(0, PREVIEW - start)].numpy(),
    })


def write(pipe, out: Path, manifest: dict, labels: np.ndarray, seed: int, batch: int, env: distributed.Dist) -> None:
    """The sample set of these labels in ``out``, resuming what is there, its batches shared out across ranks."""
    final = out / "samples.npz"
    resuming = check_manifest(out, manifest)  # every rank reads it before rank 0 may write it
    if final.exists():
        if not resuming:
            raise ConfigError(f"{final} exists but {out / 'manifest.json'} does not; use another --out")
        if env.main:
            log.info("%s is already complete", final)
        return
    if env.main:
        (out / "parts").mkdir(parents=True, exist_ok=True)
        if not resuming:
            write_json(out / "manifest.json", manifest)
    distributed.barrier(env)

    done = list_parts(out / "parts")
    mine = batches(len(labels), done, batch)[env.rank::env.world]
    if env.main and done:
        log.info("resuming: %d of %d samples are done", sum(e - s for s, e, _ in done), len(labels))
    desc = "sampling" if env.world == 1 else f"sampling (rank 0 of {env.world})"
    with tqdm(total=sum(e - s for s, e in mine), unit="sample", desc=desc, disable=not env.main) as bar:
        for start, end in mine:
            write_batch(pipe.modality, out, start, labels[start:end], *draw(pipe, labels[start:end], start, seed, bar))
    distributed.barrier(env)
    if env.main:
        picture = assemble(out, labels, pipe.modality, pipe.sample_info(pipe.conditions(labels)),
                           pipe.sample_info(pipe.conditions(labels[:PREVIEW])), labelled=pipe.num_classes > 0)
        log.info("%d samples from %s (step %d): %s, %s", len(labels), pipe.checkpoint, pipe.step, final, picture)


def check_coverage(parts: list[tuple[int, int, Path]], n: int, folder: Path) -> None:
    """The sorted parts must hold samples 0..n-1, each exactly once."""
    expected = 0
    for start, end, path in parts:
        if start != expected:
            what = f"samples {expected}..{start - 1} are missing" if start > expected else f"{path.name} overlaps"
            raise DataError(f"cannot assemble the samples in {folder}: {what}")
        expected = end
    if expected < n:
        raise DataError(f"cannot assemble the samples in {folder}: samples {expected}..{n - 1} are missing")
    if expected > n:
        raise DataError(f"cannot assemble the samples in {folder}: {parts[-1][2].name} goes past sample {n - 1}")


def assemble(out: Path, labels: np.ndarray, modality, info: dict, preview_info: dict, labelled: bool) -> Path:
    """Check the parts in ``out`` cover 0..N-1 once each, stream them into ``samples.npz`` in index order (with
    ``arr_1``, the labels, if ``labelled``, and ``info``), write ``samples.png`` of the first samples (their
    info: ``preview_info``), and remove the parts; returns the picture."""
    parts_dir, final = out / "parts", out / "samples.npz"
    parts = list_parts(parts_dir)
    check_coverage(parts, len(labels), parts_dir)
    shown = []
    with atomic(final) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                for k, (start, end, path) in enumerate(parts):
                    with np.load(path) as part:
                        array, index, label = part["array"], part["index"], part["label"]
                        shown.append(torch.from_numpy(part["preview"]))
                    if not (np.array_equal(index, np.arange(start, end)) and np.array_equal(label, labels[start:end])):
                        raise DataError(f"{path} does not hold samples {start}..{end - 1} of this run")
                    if k == 0:
                        item = (array.dtype, array.shape[1:])
                        header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False,
                                  "shape": (len(labels), *array.shape[1:])}
                        np.lib.format.write_array_header_1_0(f, header)
                    if (array.dtype, array.shape[1:]) != item or len(array) != end - start:
                        raise DataError(f"{path} holds {array.dtype} {array.shape}, unlike the other parts")
                    f.write(np.ascontiguousarray(array).data)
            if labelled:  # ADM writes labels for class-conditional models only
                with zf.open("arr_1.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, labels)
            for key, value in info.items():  # what reading the samples needs, e.g. the sample rate
                with zf.open(f"{key}.npy", "w") as f:
                    np.lib.format.write_array(f, np.asarray(value))
        picture = save_samples(modality, torch.cat(shown), final.with_suffix(""), preview_info).path
    for _, _, path in parts:
        path.unlink()
    discard_unfinished(parts_dir)  # from batches a killed run had begun
    parts_dir.rmdir()
    return picture
