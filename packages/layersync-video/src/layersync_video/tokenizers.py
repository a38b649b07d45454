"""The SD-VAE applied frame by frame: clips (B, 3, T, H, W) <-> latents (B, 4, T, H/8, W/8).

The weights are the image tokenizer's (``stabilityai/sd-vae-ft-ema`` or ``-mse`` in diffusers' layout),
read from a local folder by core's ``layersync.vae.load_sd_vae``; nothing is downloaded.
"""

from __future__ import annotations

import torch

from layersync.errors import ConfigError
from layersync.vae import SD_SCALE, VAETokenizer, load_sd_vae


class FrameVAETokenizer(VAETokenizer):
    """Each frame through the SD-VAE; the frames of a clip become the batch of the autoencoder."""

    name = "frame-vae"

    def __init__(self, vae, scale: float = SD_SCALE, device=None):
        super().__init__(vae, scale, device)
        config = vae.config
        self.factor = 2 ** (len(config.block_out_channels) - 1)
        self.in_channels, self.latent_channels = config.in_channels, config.latent_channels

    @staticmethod
    def _frames(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).flatten(0, 1)  # (B, C, T, H, W) -> (B*T, C, H, W)

    @staticmethod
    def _clips(z: torch.Tensor, batch: int) -> torch.Tensor:
        return z.unflatten(0, (batch, -1)).transpose(1, 2)

    def moments(self, x):
        mean, std = super().moments(self._frames(x))
        return self._clips(mean, len(x)), self._clips(std, len(x))

    def decode(self, z):
        return self._clips(super().decode(self._frames(z)), len(z))

    def latent_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        channels, frames, height, width = sample_shape
        if channels != self.in_channels or height % self.factor or width % self.factor:
            raise ConfigError(f"the SD-VAE takes {self.in_channels}-channel frames with sides divisible by "
                              f"{self.factor}, got clips of shape {tuple(sample_shape)} (set data.channels / data.size)")
        return (self.latent_channels, frames, height // self.factor, width // self.factor)


def frame_vae(path: str | None = None, variant: str = "ema", scale: float = SD_SCALE, device: str | None = None):
    """Tokenizer factory (registry name ``frame-vae``)."""
    return FrameVAETokenizer(load_sd_vae(path, variant), scale, device)
