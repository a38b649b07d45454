"""LayerSync: flow/diffusion transformers that align their shallow blocks to their deep ones.

The plugin API (version ``PLUGIN_API``) is the hooks of ``layersync.hookspecs``, the contracts of
``layersync.interfaces``, the pieces of ``layersync.nn`` and the names in ``__all__`` below; a
change that breaks a plugin written against them raises ``PLUGIN_API``.
"""

from importlib.metadata import PackageNotFoundError, version

import pluggy

from layersync.errors import ConfigError, DataError, PluginError
from layersync.files import atomic
from layersync.interfaces import (Backbone, Dataset, Evaluator, IdentityTokenizer, Modality, Preview, SampleSet,
                                  Tokenizer)
from layersync.objective import FlowObjective, LayerSync, taps
from layersync.pipeline import Pipeline
from layersync.plugins import PLUGIN_API, Registry, registry
from layersync.sampling import Sampler, SamplerConfig

hookimpl = pluggy.HookimplMarker("layersync")

try:
    __version__ = version("layersync-core")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "PLUGIN_API",
    "Backbone",
    "ConfigError",
    "DataError",
    "Dataset",
    "Evaluator",
    "FlowObjective",
    "IdentityTokenizer",
    "LayerSync",
    "Modality",
    "Pipeline",
    "Preview",
    "PluginError",
    "Registry",
    "SampleSet",
    "Sampler",
    "SamplerConfig",
    "Tokenizer",
    "atomic",
    "hookimpl",
    "registry",
    "taps",
]
