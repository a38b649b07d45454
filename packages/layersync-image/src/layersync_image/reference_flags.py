"""layersync-train's flags of the reference implementations, so that their README commands translate one to
one: vita-epfl/LayerSync's train.py (a SiT fork, transport flags from SiT's train_utils.py) and REPA's
train.py. Added through the ``layersync_add_flags`` and ``layersync_flag_config`` hooks."""

from __future__ import annotations

import argparse
import ast

from layersync.cli.common import choice, sit_size
from layersync.errors import ConfigError
from layersync.objective import LayerSync


def _block_pairs(value: str) -> list[list[int]]:
    """'[(1, 2), (10, 5)]' -> [[1, 2], [10, 5]]."""
    try:
        pairs = [[int(k), int(k2)] for k, k2 in ast.literal_eval(value)]
    except (ValueError, TypeError, SyntaxError):
        raise argparse.ArgumentTypeError(f"expected a list of (block, block) tuples, got '{value}'") from None
    return pairs


# flag -> (config key, argparse type)
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


def _dest(flag: str) -> str:
    return "ref_" + flag[2:].replace("-", "_")


def add_flags(parser: argparse.ArgumentParser) -> None:
    ref = parser.add_argument_group("flags of the reference implementations (vita-epfl/LayerSync, REPA)")
    for flag, (key, kind) in REFERENCE_FLAGS.items():
        ref.add_argument(flag, type=kind, dest=_dest(flag), metavar="V", help=f"sets {key}")
    for flag, (kind, text) in LOSS_FLAGS.items():
        ref.add_argument(flag, type=kind, dest=_dest(flag), metavar="V", help=f"sets layersync.pairs; {text}")


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


def settings(args) -> list[tuple[str, str, object]]:
    """(flag, config key, value) for every reference flag given."""
    given = [(flag, key, getattr(args, _dest(flag))) for flag, (key, _) in REFERENCE_FLAGS.items()
             if getattr(args, _dest(flag)) is not None]
    loss_flags = [f for f in LOSS_FLAGS if getattr(args, _dest(f)) is not None]
    if loss_flags:
        given.append(("/".join(loss_flags), "layersync.pairs", reference_pairs(args)))
    return given
