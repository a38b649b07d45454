"""layersync-sample: draw samples from a checkpoint.

A preview (``--num`` up to 64, ``--out`` a stem): OUT.png and OUT.npz (float
``samples`` and ``cond``), labels cycling through the classes.

A sample set (``--num`` above 64, or ``--out`` an existing folder or one
ending in "/"), e.g. the 50,000 samples of FID-50K, runs under torchrun too:
batches are shared out across ranks and written to DIR/parts/ as they finish,
so a run that stops resumes where it stopped. At the end DIR/samples.npz holds
``arr_0`` (the modality's array format, e.g. uint8 NHWC images, as ADM's
evaluation suite reads them), ``arr_1`` (the labels: every class equally
often, in an order shuffled with the seed) and what reading the samples needs
(audio: ``sample_rate``), and DIR/samples.png the first 64. A modality may also
write each sample as a file of its own as it goes (audio: DIR/wav/000123.wav).
DIR/manifest.json records what was sampled; resuming with other settings is
refused.

Sample i starts from noise that depends only on (seed, i), and an SDE draws its
noise along the way per sample too, so samples do not depend on --batch or on
the number of ranks. Only dopri5 adapts its steps per batch: for it --batch is
part of the manifest.

On a GPU the model runs compiled (torch.compile with static shapes, each batch
shape recorded once as a CUDA graph and replayed; under CFG one doubled batch);
--no-compile runs it eagerly, --compile compiles on a CPU too. The samples are
the eager ones up to float rounding. dopri5 adapts its steps and always runs
eagerly.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from layersync import build, trees
from layersync import config as configuration
from layersync.cli.common import Parser, choice, entry_point, seed, sit_size
from layersync.errors import ConfigError, DataError, NonFiniteError
from layersync.files import atomic, discard_unfinished, write_json
from layersync.interfaces import Modality, condition_pool, sample_info, save_samples
from layersync.plugins import registry
from layersync.sampling import DIFFUSION_FORMS, LAST_STEPS, CompiledModel, Sampler, seeded_samples
from layersync.schema import show
from layersync import checkpoint, distributed
from layersync.train.trainer import fast_defaults

log = logging.getLogger("layersync")

PREVIEW = 64  # samples in one preview grid; more than this makes a sample set
PART = re.compile(r"part_(\d+)_(\d+)\.npz$")


def count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def grid_points(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2 time grid points, got {text}")
    return value


# Flags of the reference's sample.py and sample_ddp.py (vita-epfl/LayerSync, as in SiT) -> the
# sample.* key each one sets. --num-sampling-steps, the mode argument and the flags that name one of
# ours are set up in parser().
REFERENCE_FLAGS = {
    "--sampling-method": ("solver", choice(euler="euler", heun="heun", heun2="heun", dopri5="dopri5")),
    "--atol": ("atol", float),
    "--rtol": ("rtol", float),
    "--diffusion-form": ("diffusion_form", choice(**{form: form for form in DIFFUSION_FORMS})),
    "--diffusion-norm": ("diffusion_norm", float),
    "--last-step": ("last_step", choice(**{step: step for step in LAST_STEPS})),
    "--last-step-size": ("last_step_size", float),
}

# The reference's mode argument brings its defaults for that mode (250 grid points, guidance on the
# first 3 latent channels); --set and the flags override them.
REFERENCE_MODES = {
    "ode": {"method": "ode", "solver": "dopri5", "steps": 249, "atol": 1e-6, "rtol": 1e-3, "cfg_channels": 3},
    "sde": {"method": "sde", "solver": "euler", "steps": 250, "diffusion_form": "sigma", "diffusion_norm": 1.0,
            "last_step": "mean", "last_step_size": 0.04, "cfg_channels": 3},
}


def parser() -> Parser:
    p = Parser(prog="layersync-sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a checkpoint file, or a run folder (its latest checkpoint)")
    p.add_argument("--out", required=True, help="preview: a stem (writes OUT.png, OUT.npz); sample set: a folder")
    # each of these holds one of our flags and the reference's flag for the same setting: give one
    num, batch, seeds, mode, steps = (p.add_mutually_exclusive_group() for _ in range(5))
    num.add_argument("-n", "--num", type=count, help="number of samples (sets sample.num); "
                     "under torchrun write -n: torchrun reads --num as its own")
    batch.add_argument("--batch", type=count, default=64, help="samples per batch and per part file (default 64)")
    seeds.add_argument("--seed", type=seed, default=0)
    p.add_argument("--cond", nargs="*", help="class labels to use (default: all classes), or what the modality "
                   "makes conditions of (motion: texts or action names)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    mode.add_argument("--mode", choices=("ode", "sde"), help="sets sample.method")
    steps.add_argument("--steps", type=count, help="sets sample.steps")
    p.add_argument("--cfg-scale", type=float, help="sets sample.cfg_scale")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   help="run the model compiled, as CUDA graphs on a GPU (default: on a GPU, not on a CPU, where "
                   "compiling takes longer than it saves for most runs); dopri5 always runs eagerly")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="assignments",
                   help="override a sample.* key, e.g. --set sample.guidance_interval=[0,0.7]")
    num.add_argument("--num-fid-samples", type=count, dest="num", metavar="N", help="the reference's --num")
    batch.add_argument("--per-proc-batch-size", type=count, dest="batch", metavar="N", help="the reference's --batch")
    seeds.add_argument("--global-seed", type=seed, dest="seed", metavar="S", help="the reference's --seed")
    mode.add_argument("reference_mode", nargs="?", type=choice(ode="ode", sde="sde"), metavar="ODE|SDE",
                      help="the reference's mode argument: sets sample.method and the reference's defaults for it")
    steps.add_argument("--num-sampling-steps", type=grid_points, metavar="N",
                       help="N time grid points, as in the reference: sample.steps = N - 1 for an ODE, N for an SDE")
    ref = p.add_argument_group("flags of the reference's sample.py and sample_ddp.py (vita-epfl/LayerSync, SiT)")
    for flag, (key, kind) in REFERENCE_FLAGS.items():
        ref.add_argument(flag, type=kind, metavar="V", help=f"sets sample.{key}")
    ref.add_argument("--model", type=sit_size, metavar="SiT-NAME/PATCH", help="checked against the checkpoint's model")
    return p


def find_checkpoint(path: Path) -> Path:
    if path.is_dir():
        found = checkpoint.latest(path / "checkpoints") or checkpoint.latest(path)
        if found is None:
            raise ConfigError(f"no checkpoint (step_*.pt) in {path} or {path / 'checkpoints'}")
        return found
    if not path.exists():
        raise ConfigError(f"checkpoint {path} does not exist")
    return path


def sample_config(config: dict, args) -> dict:
    """The checkpoint's config with the reference mode's defaults, then --set, then the flags."""
    size = config["model"].get("size")
    if args.model is not None and args.model != size:
        raise ConfigError(f"--model SiT-{args.model} does not match the checkpoint's model (size {size})")
    if args.reference_mode is not None:
        config["sample"].update(REFERENCE_MODES[args.reference_mode])
    for assignment in args.assignments:
        if not assignment.startswith("sample."):
            raise ConfigError(f"--set may only change sample.* keys here, got '{assignment}'")
        config = configuration.set_key(config, assignment)
    flags = {"num": args.num, "method": args.mode, "steps": args.steps, "cfg_scale": args.cfg_scale}
    flags.update({key: getattr(args, flag[2:].replace("-", "_")) for flag, (key, _) in REFERENCE_FLAGS.items()})
    sample = config["sample"]
    sample.update({key: value for key, value in flags.items() if value is not None})
    if args.num_sampling_steps is not None:  # N grid points: N - 1 ODE steps; our SDE counts grid points too
        sample["steps"] = args.num_sampling_steps - 1 if sample["method"] == "ode" else args.num_sampling_steps
    configuration.validate({"sample": sample})  # what this command changes; the rest is the checkpoint's
    return config


@dataclass
class Model:
    """Everything that turns (indices, labels) into decoded samples.

    ``pool``: for a modality that makes its own conditions (``Modality.conditions``), the
    conditions, masks and per-condition facts (e.g. captions) the labels index; None: the
    labels are class labels.
    """

    path: Path
    step: int
    config: dict
    modality: Modality
    backbone: torch.nn.Module | CompiledModel  # compiled for the fixed-step solvers unless told not to
    tokenizer: object
    sampler: Sampler
    shape: tuple[int, ...]
    num_classes: int
    device: torch.device
    info: dict
    pool: tuple | None = None

    def conditions(self, labels: np.ndarray):
        """(cond, mask or None) of these labels, on the model's device."""
        if self.pool is None:
            return torch.as_tensor(labels, dtype=torch.long, device=self.device), None
        index = torch.as_tensor(labels, dtype=torch.long)
        cond, mask, _ = self.pool
        return (trees.to_device(trees.rows(cond, index), self.device),
                None if mask is None else mask[index].to(self.device))

    def sample_info(self, labels: np.ndarray) -> dict:
        """What writing these samples needs: the run's info, their lengths where masks give them, and
        the pool's facts about their conditions."""
        mask = self.conditions(labels)[1]
        facts = {key: [values[i] for i in labels] for key, values in self.pool[2].items()} if self.pool else {}
        return {**self.info, **({} if mask is None else {"lengths": mask.sum(-1).tolist()}), **facts}

    @torch.no_grad()
    def draw(self, start: int, labels: np.ndarray, seed: int, bar: tqdm) -> torch.Tensor:
        """Samples start .. start+len(labels)-1, decoded, as float on the CPU. ``bar`` (counting
        samples) moves through the batch as the model evaluations go, in whole samples; for dopri5,
        whose evaluations are not known ahead, at the batch's end."""
        cond, mask = self.conditions(labels)
        n, evaluations = len(labels), self.sampler.evaluations()
        done = itertools.count(1)

        def progress():
            k = next(done)
            bar.update(n * k // evaluations - n * (k - 1) // evaluations)

        z = seeded_samples(self.sampler, self.backbone, self.shape, cond, seed, start, mask=mask,
                           progress=None if evaluations is None else progress)
        if evaluations is None:
            bar.update(n)
        x = self.tokenizer.decode(z).float().cpu()
        if not torch.isfinite(x).all():  # never write NaN samples and exit 0
            raise NonFiniteError(f"samples {start}..{start + len(labels) - 1} hold NaN or inf: the checkpoint's "
                                 "weights or these sampler settings give non-finite output; nothing was written "
                                 "for them")
        return x


def load_model(args, device: torch.device) -> Model:
    path = find_checkpoint(Path(args.ckpt))
    try:
        state = checkpoint.load(path, keys=("step", "config", "input_shape", "num_classes", "model", "ema"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    config = sample_config(state["config"], args)
    reg = registry()
    modality = build.modality(reg, config)
    dims = config["model"].get("cond_dims")
    if dims and modality.conditions is None:  # class labels would reach a model that takes vectors
        raise ConfigError(f"{path}: the model takes vector conditions (model.cond_dims: {', '.join(dims)}), but "
                          f"modality '{modality.name}' defines no conditions(values, config, num_classes) to make "
                          "them: layersync-sample has only class labels to give it")
    backbone = build.backbone(reg, config, state["input_shape"], state["num_classes"])
    backbone.load_state_dict(state["model" if args.raw else "ema"])
    tokenizer = build.tokenizer(reg, config)
    info = {**state.get("sample_info", {}), **sample_info(tokenizer)}
    pool = None
    if modality.conditions is not None:  # e.g. texts through a text encoder, with lengths
        pool = condition_pool(modality, args.cond or [], config, int(state["num_classes"]))
    fast_defaults(device)
    sampler = build.sampler(config, build.objective(config))
    return Model(path, int(state["step"]), config, modality, compiled_for(sampler, backbone.to(device).eval(),
                 args.compile, device), tokenizer, sampler, tuple(state["input_shape"]), int(state["num_classes"]),
                 device, info, pool)


def compiled_for(sampler: Sampler, backbone: torch.nn.Module, wanted: bool | None, device: torch.device):
    """The backbone as ``sampler`` evaluates it: compiled if ``wanted`` (None: on CUDA) and the solver
    takes fixed steps, else as it is."""
    if wanted is False or (wanted is None and device.type != "cuda"):
        log.info("sampler: eager%s", "" if wanted is False else " (--compile compiles the model on a CPU too)")
        return backbone
    if sampler.evaluations() is None:
        log.info("sampler: eager, dopri5 adapts its steps (the fixed-step solvers run compiled)")
        return backbone
    log.info("sampler: compiled%s; the first batch of each shape waits for the compilation",
             " as CUDA graphs" if device.type == "cuda" else "")
    return CompiledModel(backbone)


def classes(args, model: Model) -> np.ndarray:
    """The labels to sample: indices into the modality's pool of conditions, or class labels."""
    if model.pool is not None:
        return np.arange(trees.batch_size(model.pool[0]))
    num_classes = model.num_classes
    if not args.cond:
        return np.arange(max(num_classes, 1))
    if num_classes == 0:
        raise ConfigError("--cond given, but the checkpoint's model is unconditional")
    try:
        wanted = [int(c) for c in args.cond]
    except ValueError:
        raise ConfigError(f"--cond takes class labels for this model, got {' '.join(args.cond)}") from None
    bad = [c for c in wanted if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"--cond {bad[0]} is not a class of this model (expected 0..{num_classes - 1})")
    return np.array(wanted)


def balanced_labels(n: int, pool: np.ndarray, seed: int) -> np.ndarray:
    """Each class of the pool n/len(pool) times (+-1), shuffled with the seed."""
    return np.random.default_rng(seed).permutation(pool[np.arange(n) % len(pool)]).astype(np.int64)


# ---- preview --------------------------------------------------------------------


def preview(model: Model, args, out: Path) -> None:
    n = model.config["sample"]["num"]
    pool = classes(args, model)
    labels = pool[np.arange(n) % len(pool)]
    with tqdm(total=n, unit="sample", desc="sampling") as bar:
        x = torch.cat([model.draw(s, labels[s:s + args.batch], args.seed, bar) for s in range(0, n, args.batch)])
    info = model.sample_info(labels)
    picture = save_samples(model.modality, x, out, info)
    with atomic(out.with_suffix(".npz")) as tmp, open(tmp, "wb") as f:
        np.savez(f, samples=x.numpy(), cond=labels, **info)
    log.info("%d samples from %s (step %d): %s, %s", n, model.path, model.step, picture, out.with_suffix(".npz"))


# ---- sample set -----------------------------------------------------------------


def manifest_of(model: Model, args) -> dict:
    sample = model.config["sample"]
    to_array = model.modality.to_array
    batch_dependent = sample["method"] == "ode" and sample["solver"] == "dopri5"  # adaptive steps per batch
    manifest = {
        "checkpoint": str(model.path.resolve()),
        "step": model.step,
        "weights": "raw" if args.raw else "ema",
        "seed": args.seed,
        "cond": args.cond or None,
        "sample": sample,
        "array": f"{to_array.__module__}.{to_array.__qualname__}" if to_array else "float32",
        "sample_info": model.info,
        "batch": args.batch if batch_dependent else None,
    }
    return json.loads(json.dumps(manifest))


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
        diff = [f"{k}: {show(flat_here.get(k))} here vs {show(flat_there.get(k))} there"
                for k in sorted(set(flat_here) | set(flat_there)) if flat_here.get(k) != flat_there.get(k)]
        raise ConfigError(f"{folder} holds samples of another run ({'; '.join(diff)}); "
                          "use another --out or delete that folder")
    return True


def list_parts(folder: Path) -> list[tuple[int, int, Path]]:
    found = [(PART.match(p.name), p) for p in folder.glob("part_*.npz")]
    return sorted((int(m.group(1)), int(m.group(2)), p) for m, p in found if m)


def batches(n: int, done: list[tuple[int, int, Path]], size: int) -> list[tuple[int, int]]:
    """The index ranges still to sample: each gap between finished parts, cut into batches."""
    covered = np.zeros(n, dtype=bool)
    for start, end, _ in done:
        covered[start:end] = True
    out, i = [], 0
    while i < n:
        if covered[i]:
            i += 1
            continue
        end = i
        while end < n and not covered[end] and end - i < size:
            end += 1
        out.append((i, end))
        i = end
    return out


def write_part(folder: Path, start: int, end: int, arrays: dict) -> Path:
    path = folder / f"part_{start:08d}_{end:08d}.npz"
    with atomic(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return path


def sample_set(model: Model, args, out: Path, env: distributed.Dist) -> None:
    n = model.config["sample"]["num"]
    manifest = manifest_of(model, args)
    labels = balanced_labels(n, classes(args, model), args.seed)
    parts_dir, final = out / "parts", out / "samples.npz"
    resuming = check_manifest(out, manifest)  # every rank reads it before rank 0 may write it
    if final.exists():
        if not resuming:
            raise ConfigError(f"{final} exists but {out / 'manifest.json'} does not; use another --out")
        if env.main:
            log.info("%s is already complete", final)
        return
    if env.main:
        parts_dir.mkdir(parents=True, exist_ok=True)
        if not resuming:
            write_json(out / "manifest.json", manifest)
    distributed.barrier(env)

    done = list_parts(parts_dir)
    todo = batches(n, done, args.batch)
    mine = todo[env.rank::env.world]
    to_array = model.modality.to_array or torch.Tensor.numpy  # float samples, as decoded
    if env.main and done:
        log.info("resuming: %d of %d samples are done", sum(e - s for s, e, _ in done), n)
    desc = "sampling" if env.world == 1 else f"sampling (rank 0 of {env.world})"
    with tqdm(total=sum(e - s for s, e in mine), unit="sample", desc=desc, disable=not env.main) as bar:
        for start, end in mine:
            x = model.draw(start, labels[start:end], args.seed, bar)
            array = to_array(x)
            if model.modality.save_items:  # one file per sample (audio: WAV), before the part marks it done
                model.modality.save_items(array, start, out, model.sample_info(labels[start:end]))
            write_part(parts_dir, start, end, {
                "index": np.arange(start, end), "label": labels[start:end], "array": array,
                "preview": x[: max(0, PREVIEW - start)].numpy(),
            })
    distributed.barrier(env)
    if env.main:
        assemble(parts_dir, final, labels, model)


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


def assemble(parts_dir: Path, final: Path, labels: np.ndarray, model: Model) -> None:
    """Check the parts cover 0..N-1 once each, then stream them into one .npz in index order."""
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
            if model.num_classes:  # ADM writes labels for class-conditional models only
                with zf.open("arr_1.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, labels)
            info = model.sample_info(labels)
            for key, value in info.items():  # what reading the samples needs, e.g. the sample rate
                with zf.open(f"{key}.npy", "w") as f:
                    np.lib.format.write_array(f, np.asarray(value))
        first = torch.cat(shown)
        picture = save_samples(model.modality, first, final.with_suffix(""), model.sample_info(labels[: len(first)]))
    for _, _, path in parts:
        path.unlink()
    discard_unfinished(parts_dir)  # from batches a killed run had begun
    parts_dir.rmdir()
    log.info("%d samples from %s (step %d): %s, %s", len(labels), model.path, model.step, final, picture)


def is_sample_set(out: str, n: int) -> bool:
    return n > PREVIEW or out.endswith(("/", os.sep)) or Path(out).is_dir()


@entry_point("layersync-sample")
def main(argv=None):
    args = parser().parse_args(argv)
    env = distributed.setup(args.device)
    try:
        model = load_model(args, env.device)
        if is_sample_set(args.out, model.config["sample"]["num"]):
            with distributed.writer_lock(Path(args.out), "sample set", env):
                sample_set(model, args, Path(args.out), env)
        elif env.main:
            log.info("a preview (%s.png, %s.npz of floats); for an ADM sample set give --out a folder ending in /",
                     args.out, args.out)
            preview(model, args, Path(args.out))
    finally:
        distributed.teardown(env)
    return 0


if __name__ == "__main__":
    main()
