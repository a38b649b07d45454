"""The run folder's policy: resume the run it holds, refuse another run's outputs, ``--restart`` sets them aside."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

from layersync import checkpoint, distributed
from layersync import config as configuration
from layersync.errors import ConfigError, DataError
from layersync.files import atomic, discard_unfinished

log = logging.getLogger("layersync")

# Keys that may change when a run is resumed; anything else must match.
RESUMABLE_KEYS = {
    "train.steps", "train.log_every", "train.ckpt_every", "train.sample_every", "train.first_sample",
    "train.num_workers", "train.device", "train.step_mode", "train.grad_accum", "train.on_nonfinite", "train.keep",
    "train.keep_every", "train.loggers",
}
# The first line of config.yaml, written with each checkpoint: marks a folder whose run really started
# (an older version wrote config.yaml before the first step, so one without it blocks nothing).
STARTED = "# the config of the run in this folder, rewritten with each checkpoint\n"
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "samples", "config.yaml", "curves.png", "tensorboard", "wandb")


def resume(out: Path, config: dict, env: distributed.Dist, restore, restart: bool = False) -> int:
    """Check that ``out`` (held by the caller) holds this same run (the config in its newest readable checkpoint)
    and resume it: ``restore(state, path)`` loads the checkpoint. The step resumed from (0: none). Outputs without
    a checkpoint: refused, unless ``restart`` (they are moved aside)."""
    if restart:
        if env.main:
            move_outputs_aside(out)
        distributed.barrier(env)

    def then(path, state):
        check_resumable(state["config"], config, out)
        restore(state, path)

    step = 0
    found = checkpoint.load_latest(out / "checkpoints", checkpoint.RESTORE_KEYS, env.device, env.main, then=then,
                                   whole=False)
    if found is not None:
        path, state = found
        step = int(state["step"])
        if env.main:
            log.info("resuming %s from step %d (%s)", out, step, path.name)
    elif names := leftovers(out):
        raise ConfigError(f"{out} holds the outputs of a run ({', '.join(names)}) but no checkpoint to "
                          "resume from: choose a new --out, or start over with --restart")
    if env.main:
        discard_unfinished(out / "checkpoints")
        truncate_metrics(out / "metrics.jsonl", step)
    distributed.barrier(env)
    return step


def check_resumable(saved: dict, config: dict, out: Path) -> None:
    defaults = configuration.flatten(configuration.defaults())  # keys added since the saved run: their defaults
    old, new = {**defaults, **configuration.flatten(saved)}, configuration.flatten(config)
    for key in sorted(set(old) | set(new)):
        if key in RESUMABLE_KEYS or key.startswith("sample."):
            continue
        if old.get(key) != new.get(key):
            raise ConfigError(
                f"{out} holds a run with {key}={old.get(key)!r}, this command asks for {new.get(key)!r}: "
                "resume with the same settings or choose a new --out"
            )


def mark_started(out: Path, config: dict) -> None:
    """Write ``config.yaml`` (with each checkpoint: a run that never saved leaves none)."""
    with atomic(out / "config.yaml") as tmp:
        tmp.write_text(STARTED + configuration.dump(config))


def leftovers(out: Path) -> list[str]:
    """What a started run left in the folder, besides readable checkpoints."""
    metrics, samples, config = (out / name for name in ("metrics.jsonl", "samples", "config.yaml"))
    found = {
        "metrics.jsonl": metrics.exists() and metrics.read_text(errors="replace").strip(),
        "samples/": samples.is_dir() and any(samples.iterdir()),
        "config.yaml": config.exists() and config.read_text(errors="replace").startswith(STARTED),
        "checkpoints/*.corrupt": any((out / "checkpoints").glob("*.corrupt")),
    }
    return [name for name, there in found.items() if there]


def move_outputs_aside(out: Path) -> None:
    """``--restart``: move the run's outputs into the first free ``previous_N/``."""
    outputs = [out / name for name in RUN_OUTPUTS if (out / name).exists()]
    if outputs:
        aside = next(p for n in itertools.count(1) if not (p := out / f"previous_{n}").exists())
        aside.mkdir()
        for path in outputs:
            path.rename(aside / path.name)
        log.info("--restart: moved %s into %s", ", ".join(p.name for p in outputs), aside)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the records of ``metrics.jsonl`` written after ``step`` (the checkpoint resumed from), and a last line
    cut short (a full disk); a bad line elsewhere is a DataError."""
    if not path.exists():
        return
    lines = [(n, line) for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if line.strip()]
    kept = []
    for n, line in lines:
        try:
            record_step = json.loads(line)["step"]
        except (ValueError, TypeError, KeyError):
            if n != lines[-1][0]:
                raise DataError(f"{path} line {n} is not a metrics record ({line[:40]!r}): fix or delete "
                                "the line") from None
            log.warning("%s: dropped line %d, a record cut short (%r)", path, n, line[:40])
            break
        if record_step <= step:
            kept.append(line)
    with atomic(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))
