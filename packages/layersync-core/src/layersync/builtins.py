"""What core itself contributes, registered through the same entry-point door as every plugin."""

from layersync import hookimpl
from layersync.cache import latent_cache
from layersync.interfaces import IdentityTokenizer

LAYERSYNC_PLUGIN_API = 1  # the layersync.PLUGIN_API this plugin is written for


@hookimpl
def layersync_datasets():
    return {"latent-cache": latent_cache}


@hookimpl
def layersync_tokenizers():
    return {"identity": IdentityTokenizer}


@hookimpl
def layersync_backbones():
    return {"sit1d": "layersync.nn:build_sit1d", "sit3d": "layersync.nn:build_sit3d"}  # timm on first use
