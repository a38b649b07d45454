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
import logging
import os
from pathlib import Path

import numpy as np

from layersync import config as configuration
from layersync import distributed, sample_set
from layersync.cli.common import Parser, add_device, choice, entry_point, grid_points, positive_int, seed, sit_size
from layersync.errors import ConfigError
from layersync.pipeline import Pipeline, with_sample_keys
from layersync.sampling import DIFFUSION_FORMS, LAST_STEPS

log = logging.getLogger("layersync")


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
    num.add_argument("-n", "--num", type=positive_int, help="number of samples (sets sample.num); "
                     "under torchrun write -n: torchrun reads --num as its own")
    batch.add_argument("--batch", type=positive_int, default=64,
                       help="samples per batch and per part file (default 64)")
    seeds.add_argument("--seed", type=seed, default=0)
    p.add_argument("--cond", nargs="*", help="class labels to use (default: all classes), or what the modality "
                   "makes conditions of (motion: texts or action names)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    mode.add_argument("--mode", choices=("ode", "sde"), help="sets sample.method")
    steps.add_argument("--steps", type=positive_int, help="sets sample.steps")
    p.add_argument("--cfg-scale", type=float, help="sets sample.cfg_scale")
    add_device(p)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   help="run the model compiled, as CUDA graphs on a GPU (default: on a GPU, not on a CPU, where "
                   "compiling takes longer than it saves for most runs); dopri5 always runs eagerly")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="assignments",
                   help="override a sample.* key, e.g. --set sample.guidance_interval=[0,0.7]")
    num.add_argument("--num-fid-samples", type=positive_int, dest="num", metavar="N", help="the reference's --num")
    batch.add_argument("--per-proc-batch-size", type=positive_int, dest="batch", metavar="N",
                       help="the reference's --batch")
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


def sample_config(config: dict, args) -> dict:
    """The checkpoint's config with the reference mode's defaults, then --set, then the flags."""
    size = config["model"].get("size")
    if args.model is not None and args.model != size:
        raise ConfigError(f"--model SiT-{args.model} does not match the checkpoint's model (size {size})")
    if args.reference_mode is not None:
        config["sample"].update(REFERENCE_MODES[args.reference_mode])
    config = with_sample_keys(config, args.assignments)
    flags = {"num": args.num, "method": args.mode, "steps": args.steps, "cfg_scale": args.cfg_scale}
    flags.update({key: getattr(args, flag[2:].replace("-", "_")) for flag, (key, _) in REFERENCE_FLAGS.items()})
    sample = config["sample"]
    sample.update({key: value for key, value in flags.items() if value is not None})
    if args.num_sampling_steps is not None:  # N grid points: N - 1 ODE steps; our SDE counts grid points too
        sample["steps"] = args.num_sampling_steps - 1 if sample["method"] == "ode" else args.num_sampling_steps
    configuration.validate({"sample": sample})  # what this command changes; the rest is the checkpoint's
    return config


@entry_point("layersync-sample")
def main(argv=None):
    args = parser().parse_args(argv)
    env = distributed.setup(args.device)
    try:
        pipe = Pipeline.from_checkpoint(args.ckpt, not args.raw, device=env.device, compile=args.compile,
                                        cond=args.cond, assignments=lambda config: sample_config(config, args))
        n, out = pipe.config["sample"]["num"], Path(args.out)
        if n > sample_set.PREVIEW or args.out.endswith(("/", os.sep)) or out.is_dir():
            manifest = sample_set.manifest(pipe, weights="raw" if args.raw else "ema", seed=args.seed, cond=args.cond,
                                           batch=args.batch)
            # every label n/len(pool) times (+-1), in an order shuffled with the seed
            labels = np.random.default_rng(args.seed).permutation(pipe.labels(n)).astype(np.int64)
            with distributed.writer_lock(out, "sample set", env):
                sample_set.write(pipe, out, manifest, labels, args.seed, args.batch, env)
        elif env.main:
            log.info("a preview (%s.png, %s.npz of floats); for an ADM sample set give --out a folder ending in /",
                     args.out, args.out)
            sample_set.preview(pipe, out, pipe.labels(n), args.seed, args.batch)
    finally:
        distributed.teardown(env)
    return 0


if __name__ == "__main__":
    main()
