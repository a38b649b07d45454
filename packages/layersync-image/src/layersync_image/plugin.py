"""The image modality, registered through the ``layersync`` entry point."""

from pathlib import Path

from layersync import IdentityTokenizer, Modality, hookimpl

from layersync_image.data import DigitsDataset, build_images
from layersync_image.output import save_grid
from layersync_image.sit import build_sit

RECIPES = Path(__file__).parent / "recipes"


@hookimpl
def layersync_modalities():
    return {
        "image": Modality(
            name="image",
            description="class-conditional images with SiT (pixels or latents)",
            recipe=RECIPES / "digits.yaml",
            save_samples=save_grid,
        )
    }


@hookimpl
def layersync_datasets():
    return {"imagefolder": build_images, "digits": DigitsDataset}


@hookimpl
def layersync_tokenizers():
    return {"pixels": IdentityTokenizer}


@hookimpl
def layersync_backbones():
    return {"sit": build_sit}
