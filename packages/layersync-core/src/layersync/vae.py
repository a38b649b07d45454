"""A diffusers autoencoder (SD-VAE, Stable Audio Open's Oobleck, ...) as a tokenizer.

Modalities subclass ``VAETokenizer`` with their shapes (``latent_shape``); the weights come
from a local folder the modality names (``load_pretrained``; the SD-VAE, which images and
videos share: ``load_sd_vae``), and nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from layersync.errors import ConfigError
from layersync.metrics.weights import MissingWeightsError, weights_dir

SD_SCALE = 0.18215  # the latent scale of the SD-VAE (SD v1, DiT, SiT)
SD_VARIANTS = {"ema": "stabilityai/sd-vae-ft-ema", "mse": "stabilityai/sd-vae-ft-mse"}


def model_fingerprint(model) -> dict:
    """What identifies a diffusers model: its config (private keys dropped) and a SHA-256 of its state dict."""
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"config": json.loads(json.dumps(config)), "state_sha256": digest.hexdigest()}


def load_pretrained(model_class, folder: Path, what: str, fetch: str):
    """A diffusers model from a local folder; a MissingWeightsError naming the folder and ``fetch`` (how to get it)."""
    if not (folder / "config.json").is_file():
        raise MissingWeightsError(f"{what} weights not found: expected the folder {folder} with config.json and "
                                  f"diffusion_pytorch_model.safetensors (diffusers {model_class.__name__}); {fetch}")
    try:
        return model_class.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError) as exc:
        raise MissingWeightsError(f"cannot load the {what} from {folder}: {exc}") from None


def load_sd_vae(path: str | Path | None = None, variant: str = "ema"):
    """The SD-VAE (``AutoencoderKL``) from a local folder: ``path``, else ``$LAYERSYNC_WEIGHTS_DIR/sd-vae-ft-<variant>``
    (image latents, and video latents frame by frame)."""
    from diffusers import AutoencoderKL

    if variant not in SD_VARIANTS:
        raise ConfigError(f"tokenizer.variant must be one of {', '.join(SD_VARIANTS)}, got {variant!r}")
    folder = Path(path) if path is not None else weights_dir() / f"sd-vae-ft-{variant}"
    repo = SD_VARIANTS[variant]
    fetch = (f"fetch them with: hf download {repo} --local-dir {folder} (older huggingface_hub: huggingface-cli "
             f"download {repo} --local-dir {folder}), or point tokenizer.path at a folder that has them")
    return load_pretrained(AutoencoderKL, folder, "SD-VAE", fetch)


class VAETokenizer:
    """Data in [-1, 1] -> ``scale`` * posterior samples of the autoencoder's latents, and back.

    ``device``: where the autoencoder runs (inputs go there, results come back on the
    input's device); None or "auto" runs it on the device of each input.
    """

    name = "vae"  # what the latent cache's fingerprint calls it

    def __init__(self, vae, scale: float, device: str | torch.device | None = None):
        self.vae = vae.eval().requires_grad_(False)
        self.scale = float(scale)
        self.device = torch.device(device) if device not in (None, "auto") else None
        if self.device is not None:
            self.vae.to(self.device)

    def fingerprint(self) -> dict:
        """What identifies this tokenizer's latents (a latent cache records it)."""
        return {"name": self.name, **model_fingerprint(self.vae)}

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
        """Data in [-1, 1] from scaled latents, float32 on the latents' device."""
        x = self.vae.decode(self._run_on(z) / self.scale).sample
        return x.clamp(-1, 1).float().to(z.device)
