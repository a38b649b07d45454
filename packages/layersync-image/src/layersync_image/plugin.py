"""The image modality, registered through the ``layersync`` entry point."""

from pathlib import Path

from layersync import IdentityTokenizer, Modality, hookimpl

from layersync_image import reference_flags
from layersync_image.evaluate import open_images
from layersync_image.inception import INCEPTION_FID
from layersync_image.output import save_grid, to_uint8_nhwc

RECIPES = Path(__file__).parent / "recipes"

LAYERSYNC_PLUGIN_API = 1  # the layersync.PLUGIN_API this plugin is written for


def with_flip(x):
    """The views a latent cache stores of an image batch: the images and their horizontal flips (here, not in
    data.py, whose pyarrow would load with the plugin)."""
    return [x, x.flip(-1)]


@hookimpl
def layersync_modalities():
    return {
        "image": Modality(
            name="image",
            description="class-conditional images with SiT (pixels or latents)",
            recipe=RECIPES / "digits.yaml",
            save_samples=save_grid,
            to_array=to_uint8_nhwc,
            read_samples=open_images,
            evaluators=("image",),
            cache_recipe=RECIPES / "cache_sd_vae.yaml",
            cache_views=with_flip,
        )
    }


@hookimpl
def layersync_datasets():
    return {"imagefolder": "layersync_image.data:build_images", "digits": "layersync_image.data:DigitsDataset",
            "mnist-5k": "layersync_image.data:Mnist5kDataset", "parquet": "layersync_image.data:ParquetImageDataset"}


@hookimpl
def layersync_tokenizers():
    return {"pixels": IdentityTokenizer, "sd-vae": "layersync_image.vae:sd_vae"}


@hookimpl
def layersync_backbones():
    return {"sit": "layersync_image.sit:build_sit"}  # timm on first use


@hookimpl
def layersync_evaluators():
    return {"image": "layersync_image.evaluate:ImageEvaluator"}


@hookimpl
def layersync_weights():
    return {INCEPTION_FID.name: INCEPTION_FID}


@hookimpl
def layersync_add_flags(parser, command):
    if command == "train":
        reference_flags.add_flags(parser)


@hookimpl
def layersync_flag_config(args, command):
    return reference_flags.settings(args) if command == "train" else []
