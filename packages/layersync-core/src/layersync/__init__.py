"""LayerSync: flow/diffusion transformers that align their shallow blocks to their deep ones."""

from importlib.metadata import PackageNotFoundError, version

import pluggy

from layersync.errors import ConfigError, DataError
from layersync.interfaces import Backbone, Evaluator, IdentityTokenizer, Modality, Tokenizer
from layersync.objective import FlowObjective, LayerSync, taps
from layersync.sampling import Sampler, SamplerConfig

hookimpl = pluggy.HookimplMarker("layersync")

try:
    __version__ = version("layersync-core")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Backbone",
    "ConfigError",
    "DataError",
    "Evaluator",
    "FlowObjective",
    "IdentityTokenizer",
    "LayerSync",
    "Modality",
    "Sampler",
    "SamplerConfig",
    "Tokenizer",
    "hookimpl",
    "taps",
]
