"""Every hook a LayerSync plugin can implement.

A plugin is a module (or object) whose functions are marked with
``layersync.hookimpl`` and named after the specs below. Plugins announce
themselves through the ``layersync`` entry-point group; the first-party
modality packages use that same door.

Each ``layersync_<things>()`` hook returns a mapping ``name -> value``; the
plugin manager merges the mappings of all plugins and refuses duplicates.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("layersync")


@hookspec
def layersync_modalities():
    """Return ``{name: layersync.interfaces.Modality}``.

    A modality names its default recipe (a config file), the built-in pieces
    it uses and how its samples are written to disk (PNG grid, WAV, ...).
    """


@hookspec
def layersync_datasets():
    """Return ``{name: factory}``.

    ``factory(**options)`` builds a ``torch.utils.data.Dataset`` yielding
    ``(x, cond)`` and exposing ``sample_shape`` and ``num_classes``; a data
    set of cached tokenizer outputs (latents) also sets ``encoded = True``.
    Options come from the ``data`` section of the config (``name`` removed).
    """


@hookspec
def layersync_tokenizers():
    """Return ``{name: factory}``.

    ``factory(**options)`` builds a ``layersync.interfaces.Tokenizer`` that
    maps data to the space the backbone models (identity for pixels).
    """


@hookspec
def layersync_backbones():
    """Return ``{name: factory}``.

    ``factory(input_shape, num_classes, **options)`` builds a
    ``layersync.interfaces.Backbone`` whose ``forward(x, t, cond, capture)``
    returns ``(out, {block_index: hidden})``.
    """


@hookspec
def layersync_evaluators():
    """Return ``{name: factory}``.

    ``factory(**options)`` builds a ``layersync.interfaces.Evaluator``
    (``update(samples, real=...)`` then ``compute() -> dict[str, float]``).
    """


@hookspec
def layersync_weights():
    """Return ``{name: layersync.metrics.WeightFile}``: published files the plugin's
    evaluators or tokenizers load (``layersync weights`` lists them, ``layersync fetch``
    downloads one for users with internet)."""
