"""Turn a config into objects through the plugin registry, checking what plugins return."""

from __future__ import annotations

import inspect
import logging
import time
from numbers import Integral

from layersync.cache import LatentCacheDataset
from layersync.config import Expect, check, options
from layersync.errors import ConfigError, DataError, PluginError
from layersync.interfaces import sample_info, violation
from layersync.objective import FlowObjective, LayerSync
from layersync.plugins import Registry
from layersync.sampling import Sampler, SamplerConfig

log = logging.getLogger("layersync.plugins")


def call(kind: str, name: str, factory, *args, section: str | None = None, **kwargs):
    """Call a factory, turning an unknown option, or a value its parameter's annotation refuses, into a
    ConfigError naming it (``section.key`` for the options of a config section; None passes a parameter
    that defaults to None)."""
    try:
        signature = inspect.signature(factory, eval_str=True)
    except NameError:  # an annotation names something imported for type checkers only: leave them all out
        signature = inspect.signature(factory)
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"{kind} '{name}' does not accept these options: {exc}") from None
    for key, value in kwargs.items():
        param = signature.parameters.get(key)
        if param is not None and param.kind != param.VAR_KEYWORD and not (value is None and param.default is None):
            check(f"{section}.{key}" if section else f"{kind} '{name}': {key}", value, Expect(param.annotation))
    return factory(*args, **kwargs)


def lookup(registry: Registry, category: str, name):
    try:
        return registry.get(category, name)
    except KeyError as exc:
        raise ConfigError(exc.args[0]) from None


def make(registry: Registry, category: str, name: str, *args, **kwargs):
    """Build a registered item and check it against its contract: a broken one is a PluginError
    naming the plugin, the item and the rule."""
    kind = category[:-1]
    factory, began = lookup(registry, category, name), time.perf_counter()
    built = call(kind, name, factory, *args, **kwargs)
    if registry.trace:
        log.info("%s '%s' of plugin '%s' built in %.1f ms", kind, name, registry.owner(category, name),
                 (time.perf_counter() - began) * 1000)
    rule = violation(kind, built)
    if rule:
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
    return make(registry, "datasets", name, section="data", **opts)


def tokenizer(registry: Registry, config: dict):
    name, opts = options(config["tokenizer"])
    return make(registry, "tokenizers", name, section="tokenizer", **opts)


def model_input(data, tok) -> tuple[tuple[int, ...], int]:
    """(input shape, number of classes) of a backbone for this data: the tokenizer's latent shape of an item,
    or the item's own for a data set of cached latents (``encoded = True``: already in model space)."""
    shape = tuple(data.sample_shape)
    encoded = bool(getattr(data, "encoded", False))
    return (shape if encoded else tuple(tok.latent_shape(shape))), int(getattr(data, "num_classes", 0))


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
        model = make(registry, "backbones", name, tuple(input_shape), num_classes, section="model", **opts)
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
    if not section["pairs"]:
        return None
    try:
        return LayerSync(section["pairs"], section["weight"], depth=depth, detach_teacher=section["detach_teacher"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"layersync.pairs: {exc} (set other pairs with --layersync K:K2)") from None


def sampler(config: dict, obj: FlowObjective) -> Sampler:
    try:
        return Sampler(obj, SamplerConfig(**config["sample"]))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"sample: {exc}") from None
