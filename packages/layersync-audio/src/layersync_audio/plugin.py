"""The audio modality, registered through the ``layersync`` entry point."""

from pathlib import Path

from layersync import Modality, hookimpl

from layersync_audio.output import save_audio, save_wavs
from layersync_audio.samples import read_samples
from layersync_audio.vggish import VGGISH

RECIPES = Path(__file__).parent / "recipes"

LAYERSYNC_PLUGIN_API = 1  # the layersync.PLUGIN_API this plugin is written for


@hookimpl
def layersync_modalities():
    return {
        "audio": Modality(
            name="audio",
            description="audio clips with a 1-D SiT on log-mel or Stable Audio Open VAE latents",
            recipe=RECIPES / "spoken_digits.yaml",
            save_samples=save_audio,
            save_items=save_wavs,
            read_samples=read_samples,
            evaluators=("fad-vggish", "fad-clap"),
            cache_recipe=RECIPES / "cache_oobleck.yaml",
        )
    }


@hookimpl
def layersync_datasets():
    return {"audiofolder": "layersync_audio.data:AudioDataset"}  # torchaudio on first use


@hookimpl
def layersync_tokenizers():
    return {"mel": "layersync_audio.tokenizers:mel", "oobleck": "layersync_audio.tokenizers:oobleck"}


@hookimpl
def layersync_evaluators():
    return {"fad-vggish": "layersync_audio.fad:fad_vggish", "fad-clap": "layersync_audio.fad:fad_clap"}


@hookimpl
def layersync_weights():
    return {VGGISH.name: VGGISH}
