"""layersync-train: train a backbone of a modality plugin with LayerSync."""

from __future__ import annotations

import logging
from pathlib import Path

from layersync import config as configuration
from layersync.cli.common import Parser, add_config_args, entry_point
from layersync.errors import ConfigError
from layersync.objective import LayerSync
from layersync.plugins import registry

log = logging.getLogger("layersync")


def parser() -> Parser:
    p = Parser(prog="layersync-train", description=__doc__)
    p.add_argument("--plugin", required=True, help="the modality to train (see `layersync plugins`)")
    add_config_args(p)
    p.add_argument("--data", help="data location (sets data.path)")
    p.add_argument("--out", required=True, help="run folder; running again with the same folder resumes")
    p.add_argument("--steps", type=int, help="total training steps (sets train.steps)")
    p.add_argument("--seed", type=int, help="sets seed")
    p.add_argument("--layersync", metavar="K:K2[,K:K2...]|off", help="LayerSync block pairs (1-based) or off")
    p.add_argument("--layersync-weight", type=float, metavar="W", help="sets layersync.weight")
    p.add_argument("--step-mode", choices=("auto", "eager", "compile", "graph"),
                   help="sets train.step_mode; auto: a captured CUDA graph on GPU, eager on CPU")
    return p


def resolve(args, reg) -> dict:
    """The run's config: recipe, --config, --set, then the dedicated flags."""
    try:
        modality = reg.get("modalities", args.plugin)
    except KeyError:
        known = ", ".join(reg.names("modalities")) or "none installed"
        raise ConfigError(f"unknown plugin '{args.plugin}' (known: {known})") from None
    assignments = [f"modality={args.plugin}", *args.assignments]
    if args.data is not None:
        assignments.append(f"data.path={args.data}")
    if args.steps is not None:
        assignments.append(f"train.steps={args.steps}")
    if args.seed is not None:
        assignments.append(f"seed={args.seed}")
    if args.step_mode is not None:
        assignments.append(f"train.step_mode={args.step_mode}")
    if args.layersync_weight is not None:
        assignments.append(f"layersync.weight={args.layersync_weight}")
    config = configuration.load(modality.recipe, args.config, assignments)
    if args.layersync is not None:
        try:
            spec = LayerSync.parse(args.layersync)
        except ValueError as exc:
            raise ConfigError(f"--layersync: {exc}") from None
        config["layersync"]["pairs"] = [list(p) for p in spec.pairs] if spec else []
    return config


@entry_point("layersync-train")
def main(argv=None):
    args = parser().parse_args(argv)
    reg = registry()
    config = resolve(args, reg)
    from layersync.train import distributed
    from layersync.train.trainer import Trainer

    trainer = Trainer(config, Path(args.out), reg)
    try:
        result = trainer.fit()
    finally:
        distributed.teardown(trainer.env)
    if trainer.env.main:
        log.info("finished at step %d (loss %.4f)", result["step"], result.get("loss", float("nan")))
        log.info("samples: %s", Path(args.out) / "samples")
        log.info("checkpoints: %s, metrics: %s", Path(args.out) / "checkpoints", Path(args.out) / "metrics.jsonl")
    return 0


if __name__ == "__main__":
    main()
