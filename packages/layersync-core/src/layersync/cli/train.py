"""layersync-train: train a backbone of a modality plugin with LayerSync."""

from __future__ import annotations

import logging
from pathlib import Path

from layersync import build
from layersync import config as configuration
from layersync.cli.common import Parser, add_config_args, entry_point, positive_int
from layersync.errors import ConfigError
from layersync.objective import LayerSync
from layersync.plugins import Registry, registry
from layersync.train.modes import STEP_MODES

log = logging.getLogger("layersync")

# Our dedicated flags -> the config key each one sets.
OWN_FLAGS = {
    "--data": "data.path",
    "--steps": "train.steps",
    "--seed": "seed",
    "--step-mode": "train.step_mode",
    "--layersync-weight": "layersync.weight",
}


def parser(reg: Registry | None = None) -> Parser:
    """The command's own flags, then those the plugins add (``layersync_add_flags``)."""
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
    (reg or registry()).add_flags(p, "train")
    return p


def flag_settings(args, reg: Registry) -> list[tuple[str, str, object]]:
    """(flag, config key, value) for every dedicated or plugin flag given; one flag per key."""
    given = [(flag, key, value) for flag, key in OWN_FLAGS.items()
             if (value := getattr(args, flag[2:].replace("-", "_"))) is not None]
    if args.layersync is not None:
        try:
            spec = LayerSync.parse(args.layersync)
        except ValueError as exc:
            raise ConfigError(f"--layersync: {exc}") from None
        given.append(("--layersync", "layersync.pairs", [list(p) for p in spec.pairs] if spec else []))
    given += reg.flag_config(args, "train")
    seen: dict[str, str] = {}
    for flag, key, _ in given:
        if key in seen:
            raise ConfigError(f"{seen[key]} and {flag} both set {key}: give only one of them")
        seen[key] = flag
    return given


def resolve(args, reg) -> dict:
    """The run's config: recipe, --config, --set, then the dedicated and plugin flags."""
    name = build.modality_name(reg, args.plugin)
    modality = build.lookup(reg, "modalities", name)
    given = flag_settings(args, reg)
    config = configuration.load(modality.recipe, args.config, [f"modality={name}", *args.assignments])
    for _, key, value in given:
        config = configuration.set_value(config, key, value)
    return configuration.validate(config)  # the flags' values too, before anything is built or written


@entry_point("layersync-train")
def main(argv=None):
    reg = registry()
    args = parser(reg).parse_args(argv)
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
