"""Pretrained diffusers transformers as LayerSync backbones, registered through the ``layersync`` entry point."""

from pathlib import Path

from layersync import Modality, hookimpl

from layersync_diffusers.data import conditions, save_latents
from layersync_diffusers.fixture import check_fixture

RECIPES = Path(__file__).parent / "recipes"

LAYERSYNC_PLUGIN_API = 1  # the layersync.PLUGIN_API this plugin is written for


@hookimpl
def layersync_modalities():
    return {
        "diffusers": Modality(
            name="diffusers",
            description="LoRA fine-tuning of a pretrained diffusers transformer on cached latents and text embeddings",
            recipe=RECIPES / "lora.yaml",
            save_samples=save_latents,
            conditions=conditions,  # the text conditions of the data items
            check_fixture=check_fixture,  # a tiny random SD3 and 4 items for layersync check-plugin
        )
    }


@hookimpl
def layersync_datasets():
    return {"text-latents": "layersync_diffusers.data:TextLatents"}


@hookimpl
def layersync_backbones():
    return {"diffusers": "layersync_diffusers.adapter:build_diffusers"}  # diffusers and peft on first use
