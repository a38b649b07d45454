"""The video modality, registered through the ``layersync`` entry point."""

from pathlib import Path

from layersync import Modality, hookimpl

from layersync_video.i3d import I3D_FVD
from layersync_video.output import save_clips, save_video
from layersync_video.samples import read_samples

RECIPES = Path(__file__).parent / "recipes"

LAYERSYNC_PLUGIN_API = 1  # the layersync.PLUGIN_API this plugin is written for


@hookimpl
def layersync_modalities():
    return {
        "video": Modality(
            name="video",
            description="video clips with a spatio-temporal SiT (pixels or frame-wise SD-VAE latents)",
            recipe=RECIPES / "moving_digits.yaml",
            save_samples=save_video,
            save_items=save_clips,
            read_samples=read_samples,
            evaluators=("fvd-i3d",),
            cache_recipe=RECIPES / "cache_frame_vae.yaml",
        )
    }


@hookimpl
def layersync_datasets():
    return {"videofolder": "layersync_video.data:VideoFolderDataset",
            "moving-digits": "layersync_video.data:MovingDigits"}


@hookimpl
def layersync_tokenizers():
    return {"frame-vae": "layersync_video.tokenizers:frame_vae"}


@hookimpl
def layersync_evaluators():
    return {"fvd-i3d": "layersync_video.fvd:fvd_i3d"}


@hookimpl
def layersync_weights():
    return {I3D_FVD.name: I3D_FVD}
