"""Turn a config into objects through the plugin registry."""

from __future__ import annotations

import inspect

from layersync.config import options
from layersync.errors import ConfigError
from layersync.interfaces import sample_info
from layersync.objective import FlowObjective, LayerSync
from layersync.plugins import Registry
from layersync.sampling import Sampler, SamplerConfig


def call(kind: str, name: str, factory, *args, **kwargs):
    """Call a factory, turning an unknown option into a ConfigError naming it."""
    try:
        inspect.signature(factory).bind(*args, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"{kind} '{name}' does not accept these options: {exc}") from None
    return factory(*args, **kwargs)


def lookup(registry: Registry, category: str, name):
    try:
        return registry.get(category, name)
    except KeyError as exc:
        raise ConfigError(exc.args[0]) from None


def modality(registry: Registry, config: dict):
    return lookup(registry, "modalities", config["modality"])


def dataset(registry: Registry, config: dict):
    name, opts = options(config["data"])
    return call("dataset", name, lookup(registry, "datasets", name), **opts)


def tokenizer(registry: Registry, config: dict):
    name, opts = options(config["tokenizer"])
    return call("tokenizer", name, lookup(registry, "tokenizers", name), **opts)


def check_compatible(data, tok) -> None:
    """The data set and the tokenizer must agree on what both state (e.g. the sample rate)."""
    for key, value in sample_info(tok).items():
        have = getattr(data, key, None)
        if have is not None and have != value:
            raise ConfigError(f"data.{key} is {have} but the tokenizer takes {key} {value}: "
                              f"set data.{key}={value} (or the tokenizer's {key})")


def backbone(registry: Registry, config: dict, input_shape, num_classes: int):
    name, opts = options(config["model"])
    return call("backbone", name, lookup(registry, "backbones", name), tuple(input_shape), num_classes, **opts)


def objective(config: dict) -> FlowObjective:
    try:
        return FlowObjective(**config["transport"])
    except ValueError as exc:
        raise ConfigError(f"transport: {exc}") from None


def layersync(config: dict, depth: int) -> LayerSync | None:
    section = config["layersync"]
    pairs = section["pairs"] or []
    if not pairs:
        return None
    try:
        return LayerSync(pairs, section["weight"], depth=depth)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"layersync.pairs: {exc} (set other pairs with --layersync K:K2)") from None


def sampler(config: dict, obj: FlowObjective) -> Sampler:
    section = dict(config["sample"])
    section["guidance_interval"] = tuple(section["guidance_interval"])
    try:
        return Sampler(obj, SamplerConfig(**section))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"sample: {exc}") from None
