"""Every hook a LayerSync plugin can implement.

A plugin is a module (or object) whose functions are marked with
``layersync.hookimpl`` and named after the specs below. Plugins announce
themselves through the ``layersync`` entry-point group; the first-party
modality packages use that same door.

Each ``layersync_<things>()`` hook returns a mapping ``name -> value``; the
plugin manager merges the mappings of all plugins and refuses duplicates.
The contracts are in ``layersync.interfaces`` (``violation`` names the broken rule).

A factory may be given as a ``"module:attribute"`` string (``"my_plugin.fid:build"``),
imported when it is first used, not when plugins are listed:
register those whose modules import heavy libraries so, and keep the plugin
module's own imports light.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("layersync")


@hookspec
def layersync_modalities():
    """Return ``{name: layersync.interfaces.Modality}``: a recipe, its pieces and how its samples are written."""


@hookspec
def layersync_datasets():
    """Return ``{name: factory}``; ``factory(**options)`` builds a ``layersync.interfaces.Dataset`` from the
    options of the config's ``data`` section (``name`` removed)."""


@hookspec
def layersync_tokenizers():
    """Return ``{name: factory}``; ``factory(**options)`` builds a ``layersync.interfaces.Tokenizer``."""


@hookspec
def layersync_backbones():
    """Return ``{name: factory}``; ``factory(input_shape, num_classes, **options)`` builds a
    ``layersync.interfaces.Backbone``."""


@hookspec
def layersync_evaluators():
    """Return ``{name: factory}``; ``factory(**options)`` builds a ``layersync.interfaces.Evaluator``."""


@hookspec
def layersync_weights():
    """Return ``{name: layersync.metrics.WeightFile}``: published files the plugin's
    evaluators or tokenizers load (``layersync weights`` lists them, ``layersync fetch``
    downloads one for users with internet)."""


@hookspec
def layersync_add_flags(parser, command):
    """Add the plugin's own flags to the ``argparse`` parser of ``command``
    (``"train"``: ``layersync-train``), in an argument group of its own
    (``parser.add_argument_group(title)``). A flag that another plugin or the
    command has already is an error; ``layersync_flag_config`` reads the values.
    """


@hookspec
def layersync_flag_config(args, command):
    """Return ``[(flag, key, value), ...]``: the config key each of the plugin's
    flags given in ``args`` sets (``("--image-size", "data.image_size", 256)``).

    They apply over the recipe, ``--config`` and ``--set``, as the command's own
    flags do; two flags that set one key are an error naming both. Raise
    ``layersync.ConfigError`` for flags that do not go together.
    """
