"""The {{name}} modality, registered through the ``layersync`` entry point (see pyproject.toml).

Each hook returns ``{name: thing}``; names are global across plugins, hence the prefix.
The recipe picks the pieces by these names and passes its options to their factories.
A factory given as ``"module:attribute"`` is imported on first use: do so for those whose
modules import heavy libraries, so that listing plugins stays fast.
"""

from pathlib import Path

from layersync import Modality, hookimpl

from .data import SineWaves
from .evaluate import SpectrumFD
from .output import save_plots
from .samples import read_samples

LAYERSYNC_PLUGIN_API = 1  # the plugin interface this module implements (core's layersync.PLUGIN_API)

NAME = "{{name}}"
RECIPES = Path(__file__).parent / "recipes"


@hookimpl
def layersync_modalities():
    return {
        NAME: Modality(
            name=NAME,
            description="toy 1-D signals: class-conditional sine waves, a small transformer",
            recipe=RECIPES / f"{NAME}.yaml",
            save_samples=save_plots,
            read_samples=read_samples,
            evaluators=(f"{NAME}-spectrum-fd",),
        )
    }


@hookimpl
def layersync_datasets():
    return {f"{NAME}-sines": SineWaves}


@hookimpl
def layersync_backbones():
    return {f"{NAME}-transformer": "layersync_{{name}}.model:build_signal_transformer"}  # timm on first use


@hookimpl
def layersync_evaluators():
    return {f"{NAME}-spectrum-fd": SpectrumFD}
