"""The Stable Diffusion VAE (diffusers ``AutoencoderKL``) as a tokenizer: images <-> scaled latents.

The weights are read from a local folder in the layout of ``stabilityai/sd-vae-ft-ema``
(``config.json`` + ``diffusion_pytorch_model.safetensors``); nothing is downloaded.
"""

from __future__ import annotations

import torch

from layersync.errors import ConfigError
from layersync.vae import SD_SCALE, VAETokenizer, load_sd_vae


class SDVAETokenizer(VAETokenizer):
    """Images in [-1, 1] -> ``scale`` * SD-VAE latents, and back (see ``layersync.vae.VAETokenizer``)."""

    name = "sd-vae"

    def __init__(self, vae, scale: float = SD_SCALE, device: str | torch.device | None = None):
        super().__init__(vae, scale, device)
        config = vae.config
        self.factor = 2 ** (len(config.block_out_channels) - 1)  # one downsampling per block but the last
        self.in_channels, self.latent_channels = config.in_channels, config.latent_channels

    def latent_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        channels, height, width = sample_shape
        if channels != self.in_channels or height % self.factor or width % self.factor:
            raise ConfigError(
                f"the SD-VAE takes {self.in_channels}-channel images with sides divisible by {self.factor}, "
                f"got samples of shape {tuple(sample_shape)} (set data.channels / data.image_size)"
            )
        return (self.latent_channels, height // self.factor, width // self.factor)


def sd_vae(path: str | None = None, variant: str = "ema", scale: float = SD_SCALE, device: str | None = None):
    """Tokenizer factory (registry name ``sd-vae``)."""
    return SDVAETokenizer(load_sd_vae(path, variant), scale, device)
