"""Turn a config into objects through the plugin registry."""

from __future__ import annotations

import inspect

from layersync.config import options
from layersync.errors import ConfigError
from layersync.interfaces import IdentityTokenizer
from layersync.objective import FlowObjective, LayerSync
from layersync.plugins import Registry
from layersync.sampling import Sampler, SamplerConfig


def _call(kind: str, name: str, factory, *args, **kwargs):
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
    return _call("dataset", name, lookup(registry, "datasets", name), **opts)


def tokenizer(registry: Registry, config: dict):
    name, opts = options(config["tokenizer"])
    if name == "identity" and not opts:
        return IdentityTokenizer()
    return _call("tokenizer", name, lookup(registry, "tokenizers", name), **opts)


def backbone(registry: Registry, config: dict, input_shape, num_classes: int):
    name, opts = options(config["model"])
    return _call("backbone", name, lookup(registry, "backbones", name), tuple(input_shape), num_classes, **opts)


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
