"""layersync-train: train a backbone of a modality plugin with LayerSync."""

from __future__ import annotations

import argparse
import ast
import logging
from pathlib import Path

from layersync import build
from layersync import config as configuration
from layersync.cli.common import Parser, add_config_args, choice, entry_point, sit_size
from layersync.errors import ConfigError
from layersync.objective import LayerSync
from layersync.plugins import registry
from layersync.schema import STEP_MODES

log = logging.getLogger("layersync")


def _block_pairs(value: str) -> list[list[int]]:
    """'[(1, 2), (10, 5)]' -> [[1, 2], [10, 5]]."""
    try:
        pairs = [[int(k), int(k2)] for k, k2 in ast.literal_eval(value)]
    except (ValueError, TypeError, SyntaxError):
        raise argparse.ArgumentTypeError(f"expected a list of (block, block) tuples, got '{value}'") from None
    return pairs


# Our dedicated flags -> the config key each one sets.
OWN_FLAGS = {
    "--data": "data.path",
    "--steps": "train.steps",
    "--seed": "seed",
    "--step-mode": "train.step_mode",
    "--layersync-weight": "layersync.weight",
}

# Flags of the reference implementations -> (config key, argparse type), so their README commands
# translate one to one: vita-epfl/LayerSync's train.py (a SiT fork, transport flags from SiT's
# train_utils.py) and REPA's train.py. Conflicting flags (two setting one key) are an error.
REFERENCE_FLAGS = {
    "--model": ("model.size", sit_size),
    "--reg-weight": ("layersync.weight", float),
    "--global-batch-size": ("train.batch_size", int),
    "--batch-size": ("train.batch_size", int),  # REPA: the global batch as well
    "--learning-rate": ("optim.lr", float),
    "--max-train-steps": ("train.steps", int),
    "--global-seed": ("seed", int),  # REPA's --seed is ours
    "--image-size": ("data.image_size", int),
    "--resolution": ("data.image_size", int),
    "--cfg-prob": ("train.cfg_dropout", float),
    "--path-type": ("transport.path", choice(linear="linear", cosine="gvp", gvp="gvp", vp="vp")),
    "--prediction": ("transport.prediction", choice(v="velocity", velocity="velocity", noise="noise", score="score")),
    "--loss-weight": ("transport.loss_weight", choice(none="none", velocity="velocity", likelihood="likelihood")),
    "--train-eps": ("transport.train_eps", float),
    "--sample-eps": ("transport.sample_eps", float),
    "--log-every": ("train.log_every", int),
    "--ckpt-every": ("train.ckpt_every", int),
    "--checkpointing-steps": ("train.ckpt_every", int),
    "--sample-every": ("train.sample_every", int),
    "--sampling-steps": ("train.sample_every", int),  # REPA: sample grids every N steps
    "--cfg-scale": ("sample.cfg_scale", float),
    "--num-workers": ("train.num_workers", int),
    "--adam-weight-decay": ("optim.weight_decay", float),
    "--adam-epsilon": ("optim.eps", float),
    "--max-grad-norm": ("optim.grad_clip", float),
    "--mixed-precision": ("train.precision", choice(no="fp32", bf16="bf16")),
}

# The reference's LayerSync switches, which together set layersync.pairs. In its models.py the
# output of block i (0-based) is the student `zs` when i + 1 == encoder_depth and the teacher
# `gt_zs` when i + 1 == gt_encoder_depth; transport.py detaches gt_zs. So --encoder-depth K is our
# shallow student k and --gt-encoder-depth K2 our deep teacher k', both 1-based block outputs as
# ours. The reference does not check K < K2 (both default to 8, a term without gradient); we
# require both flags and K < K2. Its multiple_sync loop keeps only the last pair's term; here every
# pair of --multi-blocks-match adds its own term.
LOSS_FLAGS = {
    "--loss-type": (choice(layer_sync="layer_sync", vanilla="vanilla", multiple_sync="multiple_sync"),
                    "layer_sync|vanilla|multiple_sync; vanilla: LayerSync off"),
    "--encoder-depth": (int, "K: the student block, with --gt-encoder-depth the pair K:K2"),
    "--gt-encoder-depth": (int, "K2: the teacher block"),
    "--multi-blocks-match": (_block_pairs, "'[(K,K2),...]': the pairs of --loss-type multiple_sync"),
}


def positive_int(value: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got '{value}'") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {number}")
    return number


def _dest(flag: str) -> str:
    return "ref_" + flag[2:].replace("-", "_")


def parser() -> Parser:
    p = Parser(prog="layersync-train", description=__doc__)
    p.add_argument("--plugin", required=True, help="the modality to train (see `layersync plugins`)")
    add_config_args(p)
    p.add_argument("--data", help="data location (sets data.path)")
    p.add_argument("--out", required=True, help="run folder; running again with the same folder resumes")
    p.add_argument("--restart", action="store_true",
                   help="start the run in --out over from step 0: its outputs so far (checkpoints/, metrics.jsonl, "
                        "samples/, config.yaml) are moved into OUT/previous_N/, not deleted")
    p.add_argument("--steps", type=positive_int, help="total training steps (sets train.steps)")
    p.add_argument("--seed", type=int, help="sets seed")
    p.add_argument("--layersync", metavar="K:K2[,K:K2...]|off", help="LayerSync block pairs (1-based) or off")
    p.add_argument("--layersync-weight", type=float, metavar="W", help="sets layersync.weight")
    p.add_argument("--step-mode", choices=STEP_MODES,
                   help="sets train.step_mode: eager; compile (torch.compile, 1.76x eager at SiT-B/2 batch 64 "
                        "on an H100); graph (compiled, then captured as one CUDA graph with optimizer and EMA); "
                        "graph-eager (captured, not compiled); auto: graph on one GPU, compile on several, "
                        "eager on CPU (the log says which and why)")
    ref = p.add_argument_group("flags of the reference implementations (vita-epfl/LayerSync, REPA)")
    for flag, (key, kind) in REFERENCE_FLAGS.items():
        ref.add_argument(flag, type=kind, dest=_dest(flag), metavar="V", help=f"sets {key}")
    for flag, (kind, text) in LOSS_FLAGS.items():
        ref.add_argument(flag, type=kind, dest=_dest(flag), metavar="V", help=f"sets layersync.pairs; {text}")
    return p


def reference_pairs(args) -> list[list[int]]:
    """layersync.pairs from the reference's --loss-type and depth flags."""
    loss, k, k2, multi = (getattr(args, _dest(f)) for f in LOSS_FLAGS)
    depths = [f for f, v in (("--encoder-depth", k), ("--gt-encoder-depth", k2)) if v is not None]
    if loss == "vanilla":
        extra = depths + (["--multi-blocks-match"] if multi is not None else [])
        if extra:
            raise ConfigError(f"--loss-type vanilla turns LayerSync off: drop {', '.join(extra)}")
        return []
    if loss == "multiple_sync" or multi is not None:
        if loss != "multiple_sync" or multi is None or depths:
            raise ConfigError("--multi-blocks-match goes with --loss-type multiple_sync alone "
                              "(no --encoder-depth/--gt-encoder-depth)")
        pairs, flags = multi, "--multi-blocks-match"
    else:
        if len(depths) < 2:
            raise ConfigError("LayerSync from the reference flags needs both --encoder-depth K (student) "
                              "and --gt-encoder-depth K2 (teacher)")
        pairs, flags = [[k, k2]], "--encoder-depth/--gt-encoder-depth"
    try:
        LayerSync(pairs)
    except ValueError as exc:
        raise ConfigError(f"{flags}: {exc}") from None
    return pairs


def flag_settings(args) -> list[tuple[str, str, object]]:
    """(flag, config key, value) for every dedicated or reference flag given; one flag per key."""
    given = []
    for flag, key in OWN_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            given.append((flag, key, value))
    if args.layersync is not None:
        try:
            spec = LayerSync.parse(args.layersync)
        except ValueError as exc:
            raise ConfigError(f"--layersync: {exc}") from None
        given.append(("--layersync", "layersync.pairs", [list(p) for p in spec.pairs] if spec else []))
    for flag, (key, _) in REFERENCE_FLAGS.items():
        value = getattr(args, _dest(flag))
        if value is not None:
            given.append((flag, key, value))
    loss_flags = [f for f in LOSS_FLAGS if getattr(args, _dest(f)) is not None]
    if loss_flags:
        given.append(("/".join(loss_flags), "layersync.pairs", reference_pairs(args)))
    seen: dict[str, str] = {}
    for flag, key, _ in given:
        if key in seen:
            raise ConfigError(f"{seen[key]} and {flag} both set {key}: give only one of them")
        seen[key] = flag
    return given


def resolve(args, reg) -> dict:
    """The run's config: recipe, --config, --set, then the dedicated and reference flags."""
    name = build.modality_name(reg, args.plugin)
    modality = build.lookup(reg, "modalities", name)
    given = flag_settings(args)
    config = configuration.load(modality.recipe, args.config, [f"modality={name}", *args.assignments])
    for _, key, value in given:
        config = configuration.set_value(config, key, value)
    return configuration.validate(config)  # the flags' values too, before anything is built or written


@entry_point("layersync-train")
def main(argv=None):
    args = parser().parse_args(argv)
    reg = registry()
    config = resolve(args, reg)
    from layersync import distributed
    from layersync.train.trainer import Trainer

    trainer = Trainer(config, Path(args.out), reg, restart=args.restart)
    try:
        result = trainer.fit()
    finally:
        distributed.teardown(trainer.env)
    if trainer.env.main:
        if "loss" in result:
            log.info("finished at step %d (loss %.4f)", result["step"], result["loss"])
        else:  # resumed at train.steps: nothing to do
            log.info("the run is complete: step %d of %d (raise --steps to train further)", result["step"],
                     config["train"]["steps"])
        log.info("samples: %s", Path(args.out) / "samples")
        log.info("checkpoints: %s, metrics: %s", Path(args.out) / "checkpoints", Path(args.out) / "metrics.jsonl")
        if "tensorboard" in config["train"]["loggers"]:
            log.info("watch it: tensorboard --logdir %s", Path(args.out) / "tensorboard")
    return 0


if __name__ == "__main__":
    main()
