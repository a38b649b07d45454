"""Run configuration: a recipe file, then command-line overrides.

Sections ``data``, ``tokenizer`` and ``model`` hold a ``name`` and options
for that factory; the other sections have a fixed set of keys and an
unknown key is an error.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from layersync.errors import ConfigError, reason
from layersync.schema import check_value, show, validate
from layersync.train.loggers import default_loggers

DEFAULTS: dict = {
    "modality": None,
    "seed": 0,
    "data": {"name": None},
    "tokenizer": {"name": "identity"},
    "model": {"name": None},
    "transport": {"path": "linear", "prediction": "velocity", "loss_weight": "none", "train_eps": None, "sample_eps": None},
    "layersync": {"pairs": [[8, 16]], "weight": 0.2, "detach_teacher": True},
    "optim": {"lr": 1.0e-4, "weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1.0e-8, "grad_clip": 0.0},
    "train": {
        "steps": 400_000,
        "batch_size": 256,
        "lr_schedule": "constant",
        "warmup_steps": 0,
        "ema_decay": 0.9999,
        "precision": "auto",
        "step_mode": "auto",
        "grad_accum": 1,  # micro-batches per step: the batch's gradients summed over this many passes
        "cfg_dropout": 0.1,
        "log_every": 100,
        "ckpt_every": 10_000,
        "keep": 0,  # keep the last N checkpoints (0: all of them; nothing is deleted unasked)
        "keep_every": 0,  # with keep > 0, also keep the checkpoints of every Mth step (0: none)
        "sample_every": 10_000,
        "first_sample": 50,  # also write previews at this early step (0: none), to look at before sample_every
        "num_workers": 4,
        "device": "auto",
        "on_nonfinite": "stop",  # NaN/inf in a loss or the gradients: stop (exit 3) or skip the step
        "parallel": "ddp",  # under torchrun: ddp (replicated weights) or fsdp (sharded, DCP checkpoints)
        "loggers": default_loggers(),  # jsonl (metrics.jsonl, curves.png), plus tensorboard where it is installed
    },
    "sample": {
        "method": "ode",
        "solver": "heun",
        "steps": 50,
        "atol": 1.0e-6,
        "rtol": 1.0e-3,
        "cfg_scale": 1.0,
        "guidance_interval": [0.0, 1.0],
        "cfg_channels": None,
        "diffusion_form": "sigma",
        "diffusion_norm": 1.0,
        "last_step": "mean",
        "last_step_size": 0.04,
        "num": 64,
    },
}
OPEN_SECTIONS = ("data", "tokenizer", "model")


class Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``3e-4`` as a string; here it is the float everyone means. An alias (``*name``) is
    refused: a few nested ones expand to gigabytes (the "billion laughs" file)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"found the alias *{event.anchor}: aliases are not "
                                              "allowed in a config (write the value out)", event.start_mark)
        return super().compose_node(parent, index)


class Dumper(yaml.SafeDumper):
    """Writes a value used twice out twice: ``Loader`` reads no aliases."""

    def ignore_aliases(self, data):
        return True


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=Loader)


def read_yaml(path: Path) -> dict:
    try:
        data = parse_yaml(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder, not a YAML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not text (UTF-8): {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {reason(exc)}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def merge(base: dict, update: dict, where: str = "") -> dict:
    """Deep-merge ``update`` into a copy of ``base``; unknown keys of fixed sections are errors."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        name = f"{where}{key}"
        if key not in out and where.rstrip(".") not in OPEN_SECTIONS:
            known = ", ".join(sorted(out))
            raise ConfigError(f"unknown config key '{name}' (known here: {known})")
        if isinstance(out.get(key), dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{name}' must be a mapping, got {show(value)}")
            if key in OPEN_SECTIONS and not where and value.get("name", out[key].get("name")) != out[key].get("name"):
                out[key] = {"name": value["name"]}  # another factory: the old one's options do not apply
            out[key] = merge(out[key], value, f"{name}.")
        else:
            out[key] = value
    return out


def set_key(config: dict, assignment: str) -> dict:
    """Apply ``section.key=value``; the value is parsed as YAML (numbers, lists, null, a plain
    word as a string). A value that is not valid YAML (an unbalanced bracket or quote, a
    character that cannot start a YAML value such as ``@`` or a backquote) is an error: quote
    it to mean the string. The key's schema rule is checked here (``schema.check_value``);
    rules between keys when the whole config is known (``validate``)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got '{assignment}'")
    dotted, raw = assignment.split("=", 1)
    dotted = dotted.strip()
    try:
        value = parse_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"--set {dotted}={raw}: the value is not valid YAML ({problem}); "
                          f"to give it as a string, quote it: {dotted}=\"'{raw}'\"") from None
    config = set_value(config, dotted, value)
    check_value(dotted, value)
    return config


def set_value(config: dict, dotted: str, value) -> dict:
    """Set ``section.key`` to an already-typed value, with the checks of ``merge``."""
    update = value
    for part in reversed(dotted.split(".")):
        update = {part: update}
    return merge(config, update)


def load(recipe: Path | None, config_file: Path | None = None, assignments=()) -> dict:
    """DEFAULTS <- modality recipe <- user config file <- ``--set`` assignments."""
    config = copy.deepcopy(DEFAULTS)
    for path in (recipe, config_file):
        if path is not None:
            config = merge(config, read_yaml(path))
    for assignment in assignments:
        config = set_key(config, assignment)
    return validate(config)


def options(section: dict) -> tuple[str, dict]:
    """Split an open section into (factory name, options)."""
    rest = dict(section)
    return rest.pop("name"), rest


def flatten(config: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def dump(config: dict) -> str:
    return yaml.dump(config, Dumper=Dumper, sort_keys=False)
