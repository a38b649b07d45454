"""The image modality, registered through the ``layersync`` entry point."""

from pathlib import Path

from layersync import IdentityTokenizer, Modality, hookimpl

from layersync_image.data import DigitsDataset, Mnist5kDataset, ParquetImageDataset, build_images, with_flip
from layersync_image.evaluate import open_images
from layersync_image.inception import INCEPTION_FID
from layersync_image.output import save_grid, to_uint8_nhwc
from layersync_image.sit import build_sit
from layersync_image.vae import sd_vae

RECIPES = Path(__file__).parent / "recipes"

LAYERSYNC_PLUGIN_API = 1  # the layersync.PLUGIN_API this plugin is written for


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
    return {"imagefolder": build_images, "digits": DigitsDataset, "mnist-5k": Mnist5kDataset,
            "parquet": ParquetImageDataset}


@hookimpl
def layersync_tokenizers():
    return {"pixels": IdentityTokenizer, "sd-vae": sd_vae}


@hookimpl
def layersync_backbones():
    return {"sit": build_sit}


def build_image_evaluator(**options):
    from layersync_image.evaluate import ImageEvaluator  # torch-fidelity only when evaluating

    return ImageEvaluator(**options)


@hookimpl
def layersync_evaluators():
    return {"image": build_image_evaluator}


@hookimpl
def layersync_weights():
    return {INCEPTION_FID.name: INCEPTION_FID}
