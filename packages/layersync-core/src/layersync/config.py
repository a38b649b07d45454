"""Run configuration: a recipe file, then command-line overrides.

Sections ``data``, ``tokenizer`` and ``model`` hold a ``name`` and options
for that factory (checked against its signature by ``build.call``); the
other sections are dataclasses owned by the code that reads them
(``sections()``), each key a ``setting`` with its type, default and range:
an unknown key or a bad value is an error naming the key.
"""

from __future__ import annotations

import copy
import math
import re
import types
from dataclasses import asdict, dataclass, field, fields
from numbers import Integral, Real
from pathlib import Path
from typing import Literal, Union, get_args, get_origin, get_type_hints

import yaml

from layersync.errors import ConfigError, reason

SEED_MAX = 2**63 - 1  # torch's generators take 64 bits; the run derives seed + 1 from it
OPEN_SECTIONS = ("data", "tokenizer", "model")
SHOWN = 80  # the most characters of a value that a message shows


def setting(default, meaning: str, *, low=None, high=None, open_low=False, open_high=False, finite=True, rule=None,
            text=None):
    """A key of a fixed section, as a dataclass field: its default (a list is copied, a function called) and
    its meaning in a line. The annotation gives the type, the choices (``Literal``) and null (``X | None``);
    ``low``/``high`` bound numbers (``open_*``: the bound itself excluded); ``finite=False`` lets inf and nan
    through (the section checks them); ``rule`` tests a value of the right type further, ``text`` says what is
    expected in words ("{}": the words of the type)."""
    metadata = dict(meaning=meaning, low=low, high=high, open_low=open_low, open_high=open_high, finite=finite,
                    rule=rule, text=text)
    if callable(default) or isinstance(default, list):
        return field(default_factory=default if callable(default) else lambda: copy.deepcopy(default),
                     metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Expect:
    """What a value may be: a type annotation and ``setting``'s bounds; ``ok(value)``, and ``words()`` for
    the messages ('an integer >= 1', 'one of auto, fp32, bf16', ...). Annotations it does not know pass."""

    hint: object
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    finite: bool = True
    rule: object = None
    text: str | None = None

    def ok(self, value) -> bool:
        return self._fits(self.hint, value) and (value is None or self.rule is None or self.rule(value))

    def words(self) -> str:
        arms = get_args(self.hint)
        null = get_origin(self.hint) in (Union, types.UnionType) and type(None) in arms
        rest = tuple(arm for arm in arms if arm is not type(None))  # the words of X | None: those of X, "or null"
        text = self._words((rest[0] if len(rest) == 1 else Union[rest]) if null else self.hint)
        return (self.text.format(text) if self.text else text) + (" or null" if null else "")

    def _fits(self, hint, value) -> bool:
        origin, args = get_origin(hint), get_args(hint)
        if origin in (Union, types.UnionType):
            return any(self._fits(arm, value) for arm in args)
        if origin is Literal:
            return any(value == choice and type(value) is type(choice) for choice in args)
        if origin in (list, tuple):
            if not isinstance(value, (list, tuple)):
                return False
            if origin is tuple and args and args[-1] is not Ellipsis:
                return len(value) == len(args) and all(map(self._fits, args, value))
            return not args or all(self._fits(args[0], item) for item in value)
        if hint in (int, float):
            if isinstance(value, bool) or not isinstance(value, Integral if hint is int else Real):
                return False
            if isinstance(value, float) and not math.isfinite(value):
                return not self.finite
            return self._in_range(value)
        if hint in (bool, str, type(None)):
            return isinstance(value, hint)
        return isinstance(value, (str, Path)) if hint is Path else True

    def _words(self, hint) -> str:
        origin, args = get_origin(hint), get_args(hint)
        if origin in (Union, types.UnionType):
            return " or ".join(self._words(arm) for arm in args)
        if origin is Literal:
            return f"one of {', '.join(map(str, args))}"
        if origin in (list, tuple) and args and get_origin(args[0]) is Literal:
            return f"a list of names from {', '.join(map(str, get_args(args[0])))}"
        if origin is tuple and len(args) == 2 and set(args) <= {int, float}:
            return f"a list of two numbers{self._range(' each')}"
        if origin in (list, tuple):
            return "a list"
        if hint in (int, float):
            return ("an integer" if hint is int else "a number") + self._range("")
        return {bool: "true or false", str: "a string", Path: "a path"}.get(hint, str(hint))

    def _range(self, each: str) -> str:
        def num(x) -> str:
            return str(int(x)) if float(x).is_integer() else str(x)

        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"{each} in {left}{num(self.low)}, {num(self.high)}{right}"
        parts = [f"{'>' if self.open_low else '>='} {num(self.low)}"] if self.low is not None else []
        parts += [f"{'<' if self.open_high else '<='} {num(self.high)}"] if self.high is not None else []
        return f"{each} {' and '.join(parts)}" if parts else ""

    def _in_range(self, value) -> bool:
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or (value < self.high if self.open_high else value <= self.high)


def check(key: str, value, expect: Expect) -> None:
    if not expect.ok(value):
        raise ConfigError(f"{key}={show(value)}: expected {expect.words()}")


@dataclass
class RunConfig:
    """The top-level keys."""

    modality: str | None = setting(None, "the modality plugin the run belongs to")
    seed: int = setting(0, "the run's seed: initial weights, data order, noise", low=0, high=SEED_MAX)


def sections() -> dict[str, type]:
    """Each fixed section's dataclass, from the code that reads it ("": the top-level keys)."""
    from layersync.objective import LayerSyncConfig, TransportConfig
    from layersync.sampling import SamplerConfig
    from layersync.train.config import TrainConfig
    from layersync.train.optim import OptimConfig

    return {"": RunConfig, "transport": TransportConfig, "layersync": LayerSyncConfig, "optim": OptimConfig,
            "train": TrainConfig, "sample": SamplerConfig}


def expectations(section: type) -> dict[str, Expect]:
    """What each key of a section's dataclass may hold."""
    hints = get_type_hints(section)
    return {f.name: Expect(hints[f.name], **{k: v for k, v in f.metadata.items() if k != "meaning"})
            for f in fields(section)}


def defaults() -> dict:
    """A fresh config of the defaults, in the layout of config.yaml and of checkpoints."""
    typed = {name: asdict(section()) for name, section in sections().items()}
    opened = {"data": {"name": None}, "tokenizer": {"name": "identity"}, "model": {"name": None}}
    return {**typed.pop(""), **opened, **typed}


def validate(config: dict) -> dict:
    """Check every value of the fixed sections that ``config`` holds, then the rules between keys of a
    section (its ``check()``); returns ``config``."""
    for name, section in sections().items():
        values = config if not name else config.get(name, {})
        rules = expectations(section)
        for key, value in values.items():
            if key in rules:
                check(f"{name}.{key}" if name else key, value, rules[key])
        if hasattr(section, "check") and name in config:
            section(**{key: value for key, value in values.items() if key in rules}).check()
    return config


def show(value) -> str:
    """A value as it would be typed after ``--set key=``, cut to SHOWN characters; a string that would be read
    as another type is quoted and called a string: ``'3' (a string)``."""
    text = _typed(value)
    if len(text) > SHOWN:
        text = text[: SHOWN - 3] + "..."
    return text + " (a string)" if isinstance(value, str) and not _reads_back(value) else text


def _typed(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_typed(v) for v in value) + "]"
    if isinstance(value, str) and not _reads_back(value):
        return repr(value)
    return str(value)


def _reads_back(text: str) -> bool:
    """Whether ``--set key=TEXT`` gives the string TEXT (not a number, a list, true, ...)."""
    try:
        return parse_yaml(text) == text
    except yaml.YAMLError:
        return False


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


Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                             list("-+0123456789."))


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
    it to mean the string. The key's own rule is checked here (a key of an open section passes); rules
    between keys when the whole config is known (``validate``)."""
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
    section, _, key = dotted.rpartition(".")
    rule = expectations(sections()[section]).get(key) if section in sections() else None
    if rule is not None:
        check(dotted, value, rule)
    return config


def set_value(config: dict, dotted: str, value) -> dict:
    """Set ``section.key`` to an already-typed value, with the checks of ``merge``."""
    update = value
    for part in reversed(dotted.split(".")):
        update = {part: update}
    return merge(config, update)


def load(recipe: Path | None, config_file: Path | None = None, assignments=()) -> dict:
    """defaults() <- modality recipe <- user config file <- ``--set`` assignments."""
    config = defaults()
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
