"""Turn a config into objects through the plugin registry, checking what plugins return."""

from __future__ import annotations

import inspect
import logging
import math
import time
from numbers import Integral

import torch

from layersync.cache import LatentCacheDataset
from layersync.config import options
from layersync.errors import ConfigError, DataError, PluginError
from layersync.interfaces import Evaluator, Tokenizer, sample_info
from layersync.objective import FlowObjective, LayerSync
from layersync.plugins import Registry
from layersync.sampling import Sampler, SamplerConfig

log = logging.getLogger("layersync.plugins")


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


def _is_dataset(obj) -> bool:
    shape = getattr(obj, "sample_shape", None)
    return (hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and isinstance(shape, (tuple, list, torch.Size))
            and all(isinstance(n, Integral) and n > 0 for n in shape)
            and isinstance(getattr(obj, "num_classes", None), Integral))


def _is_backbone(obj) -> bool:
    depth = getattr(obj, "depth", None)
    return (isinstance(obj, torch.nn.Module) and isinstance(depth, Integral) and depth >= 1
            and callable(getattr(obj, "drop_cond", None)))


# What each factory must return: (test, the rule in words).
CONTRACTS = {
    "datasets": (_is_dataset, "a map-style Dataset (__getitem__, __len__) with sample_shape (positive ints) "
                              "and an int num_classes"),
    "tokenizers": (lambda obj: isinstance(obj, Tokenizer), "a Tokenizer (encode, decode, latent_shape)"),
    "backbones": (_is_backbone, "a torch.nn.Module with an int depth >= 1 and drop_cond(cond, drop)"),
    "evaluators": (lambda obj: isinstance(obj, Evaluator), "an Evaluator (update(samples, real), compute())"),
}


def make(registry: Registry, category: str, name: str, *args, **kwargs):
    """Build a registered item and check it against its contract: a broken one is a PluginError
    naming the plugin, the item and the rule."""
    kind = category[:-1]
    factory, began = lookup(registry, category, name), time.perf_counter()
    built = call(kind, name, factory, *args, **kwargs)
    if registry.trace:
        log.info("%s '%s' of plugin '%s' built in %.1f ms", kind, name, registry.owner(category, name),
                 (time.perf_counter() - began) * 1000)
    test, rule = CONTRACTS[category]
    if not test(built):
        raise PluginError(f"plugin '{registry.owner(category, name)}': {kind} '{name}' returned "
                          f"{type(built).__name__}, but a {kind} factory must return {rule}")
    if category == "backbones":  # named in the errors of its forward (train/step.py)
        built.layersync_origin = f"plugin '{registry.owner(category, name)}', backbone '{name}'"
    return built


def modality(registry: Registry, config: dict):
    return lookup(registry, "modalities", config["modality"])


def modality_name(registry: Registry, plugin: str) -> str:
    """The modality ``--plugin NAME`` selects: a modality, or a plugin that provides exactly one."""
    try:
        return registry.modality_for(plugin)
    except KeyError as exc:
        raise ConfigError(exc.args[0]) from None


def dataset(registry: Registry, config: dict):
    name, opts = options(config["data"])
    return make(registry, "datasets", name, **opts)


def tokenizer(registry: Registry, config: dict):
    name, opts = options(config["tokenizer"])
    return make(registry, "tokenizers", name, **opts)


def check_compatible(data, tok) -> None:
    """The data set and the tokenizer must agree on what both state (e.g. the sample rate); a latent cache
    must have been made by this tokenizer."""
    if isinstance(data, LatentCacheDataset):
        data.check_tokenizer(tok)
    for key, value in sample_info(tok).items():
        have = getattr(data, key, None)
        if have is not None and have != value:
            raise ConfigError(f"data.{key} is {have} but the tokenizer takes {key} {value}: "
                              f"set data.{key}={value} (or the tokenizer's {key})")


def backbone(registry: Registry, config: dict, input_shape, num_classes: int):
    name, opts = options(config["model"])
    checkpointed = opts.pop("checkpoint_blocks", None)  # core's key, not the factory's
    try:
        model = make(registry, "backbones", name, tuple(input_shape), num_classes, **opts)
    except (ConfigError, DataError):
        raise
    except ValueError as exc:  # the factory refuses its options for this input (image size vs patch, ...)
        raise ConfigError(f"model: backbone '{name}' for inputs of shape {tuple(input_shape)}: {exc}") from None
    if checkpointed is not None:
        set_checkpoint_blocks(model, name, checkpointed)
    return model


def set_checkpoint_blocks(model, name: str, value) -> None:
    """``model.checkpoint_blocks``: the first N blocks, or ``all``, recompute their activations in the
    backward pass instead of keeping them; the backbone honours its ``checkpoint_blocks`` attribute."""
    if not hasattr(model, "checkpoint_blocks"):
        raise ConfigError(f"model.checkpoint_blocks={value}: backbone '{name}' has no activation checkpointing "
                          "(the backbones built on layersync.nn.Trunk have it); remove the key")
    blocks = model.depth if value == "all" else value
    if isinstance(blocks, bool) or not isinstance(blocks, Integral) or not 1 <= blocks <= model.depth:
        raise ConfigError(f"model.checkpoint_blocks={value}: expected a number of blocks from 1 to {model.depth} "
                          f"(the depth of backbone '{name}') or all")
    model.checkpoint_blocks = int(blocks)


def objective(config: dict) -> FlowObjective:
    try:
        return FlowObjective(**config["transport"])
    except ValueError as exc:
        raise ConfigError(f"transport: {exc}") from None


def layersync(config: dict, depth: int) -> LayerSync | None:
    section = config["layersync"]
    weight = section["weight"]
    try:
        ok = not isinstance(weight, bool) and math.isfinite(float(weight)) and float(weight) >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok:  # NaN would train on NaN, inf or a negative weight on a diverging term
        raise ConfigError(f"layersync.weight must be a finite number >= 0, got {weight!r}")
    pairs = section["pairs"] or []
    if not pairs:
        return None
    try:
        return LayerSync(pairs, section["weight"], depth=depth, detach_teacher=section["detach_teacher"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"layersync.pairs: {exc} (set other pairs with --layersync K:K2)") from None


def sampler(config: dict, obj: FlowObjective) -> Sampler:
    section = dict(config["sample"])
    section["guidance_interval"] = tuple(section["guidance_interval"])
    try:
        return Sampler(obj, SamplerConfig(**section))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"sample: {exc}") from None
