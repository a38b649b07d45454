"""The Stable Diffusion VAE (diffusers ``AutoencoderKL``) as a tokenizer: images <-> scaled latents.

The weights are read from a local folder in the layout of ``stabilityai/sd-vae-ft-ema``
(``config.json`` + ``diffusion_pytorch_model.safetensors``); nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from layersync.errors import ConfigError
from layersync.metrics.weights import MissingWeightsError, weights_dir

SD_SCALE = 0.18215  # the latent scale of the SD-VAE (SD v1, DiT, SiT)
VARIANTS = {"ema": "stabilityai/sd-vae-ft-ema", "mse": "stabilityai/sd-vae-ft-mse"}


def default_vae_dir(variant: str = "ema") -> Path:
    return weights_dir() / f"sd-vae-ft-{variant}"


def load_vae(path: str | Path | None = None, variant: str = "ema"):
    """``AutoencoderKL`` from a local folder (``path``, else ``$LAYERSYNC_WEIGHTS_DIR/sd-vae-ft-<variant>``)."""
    from diffusers import AutoencoderKL

    if variant not in VARIANTS:
        raise ConfigError(f"tokenizer.variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    folder = Path(path) if path is not None else default_vae_dir(variant)
    if not (folder / "config.json").is_file():
        repo = VARIANTS[variant]
        raise MissingWeightsError(
            f"SD-VAE weights not found: expected the folder {folder} with config.json and "
            f"diffusion_pytorch_model.safetensors (diffusers AutoencoderKL); fetch them with: "
            f"hf download {repo} --local-dir {folder} (older huggingface_hub: huggingface-cli download "
            f"{repo} --local-dir {folder}), or point tokenizer.path / --vae at a folder that has them"
        )
    try:
        return AutoencoderKL.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError) as exc:
        raise MissingWeightsError(f"cannot load the SD-VAE from {folder}: {exc}") from None


def vae_fingerprint(vae) -> dict:
    """What identifies a VAE: its config (private keys dropped) and a SHA-256 of its state dict."""
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return {"config": json.loads(json.dumps(config)), "state_sha256": digest.hexdigest()}


class SDVAETokenizer:
    """Images in [-1, 1] -> ``scale`` * VAE latents, and back.

    ``device``: where the VAE runs (inputs go there, results come back on the
    input's device); None or "auto" runs it on the device of each input.
    """

    def __init__(self, vae, scale: float = SD_SCALE, device: str | torch.device | None = None):
        self.vae = vae.eval().requires_grad_(False)
        self.scale = float(scale)
        self.device = torch.device(device) if device not in (None, "auto") else None
        if self.device is not None:
            self.vae.to(self.device)
        config = vae.config
        self.factor = 2 ** (len(config.block_out_channels) - 1)  # one downsampling per block but the last
        self.in_channels, self.latent_channels = config.in_channels, config.latent_channels

    def _run_on(self, x: torch.Tensor) -> torch.Tensor:
        device = self.device or x.device
        if next(self.vae.parameters()).device != device:
            self.vae.to(device)
        return x.to(device, self.vae.dtype)

    @torch.no_grad()
    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled posterior mean and std, float32 on the input's device: z = scale * (mean + std * eps)."""
        posterior = self.vae.encode(self._run_on(x)).latent_dist
        return posterior.mean.float().to(x.device), posterior.std.float().to(x.device)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """A scaled posterior sample (``sample=False``: the scaled posterior mean)."""
        mean, std = self.moments(x)
        if sample:  # the generator, if any, lives on the input's device
            mean = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device)
        return mean * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from scaled latents."""
        x = self.vae.decode(self._run_on(z) / self.scale).sample
        return x.clamp(-1, 1).float().to(z.device)

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
    return SDVAETokenizer(load_vae(path, variant), scale, device)
