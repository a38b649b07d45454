"""Audio tokenizers: waveforms (B, channels, samples) in [-1, 1] <-> latents (B, latent channels, frames).

``mel``: a normalised log-mel spectrogram, decoded by Griffin-Lim (no weights; for
previews and small runs). ``oobleck``: the Stable Audio Open VAE (diffusers
``AutoencoderOobleck``), read from a local folder; nothing is downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from layersync.errors import ConfigError
from layersync.metrics.weights import weights_dir
from layersync.vae import VAETokenizer, load_pretrained

SAO_REPO = "stabilityai/stable-audio-open-1.0"  # gated: accept its licence on the Hub before downloading


def _check_length(samples: int, hop: int, minimum: int, sample_rate: int, what: str) -> None:
    """ConfigError unless ``samples`` is a multiple of ``hop`` and at least ``minimum``; it suggests lengths."""
    if samples % hop == 0 and samples >= minimum:
        return
    shortest = -(-minimum // hop) * hop
    options = sorted({max(samples // hop * hop, shortest), max(samples // hop * hop + hop, shortest)})
    raise ConfigError(
        f"{what} needs clips of a multiple of {hop} samples, at least {shortest}, got {samples} samples; "
        f"set data.samples (or data.seconds) to a length that fits, e.g. "
        + " or ".join(f"data.samples={n} ({n / sample_rate:.10g} s at {sample_rate} Hz)" for n in options)
    )


class MelTokenizer:
    """Log-mel spectrograms, normalised: z = (log(max(mel, floor)) - log_mean) / log_std.

    The mel spectrogram is the magnitude (power 1) STFT, Hann window of ``n_fft``,
    centred frames (reflect padding), through a Slaney-scale, Slaney-normalised
    filterbank: librosa's default, as HiFi-GAN/BigVGAN-style vocoders use, so a
    vocoder trained on librosa mels of the same settings can replace Griffin-Lim.
    The channels are folded into the mel axis (channel-major): latents are
    (B, channels * n_mels, frames), frames = samples // hop_length + 1.

    ``log_mean`` / ``log_std``: set them to the mean and std of ``log_mel(x)`` (all
    bins and frames) over a sample of the training clips, so the latents have about
    zero mean and unit variance, like the flow's Gaussian noise. The defaults are
    rounded from 16 kHz speech with its pauses at the default settings (157 s of
    espeak-ng speech, 8 voices, peak 0.74: mean -5.2, std 2.9; 9 % of the bins at
    the floor; 99 % of z in [-2.2, 1.8]). ``floor`` 1e-5 (-11.5 in log) is
    HiFi-GAN's, about the median mel of 16-bit quantisation noise.

    ``decode`` undoes the normalisation and the log, inverts the filterbank by least
    squares (``InverseMelScale``) and runs ``n_iter`` Griffin-Lim iterations from zero
    phase (deterministic), giving (frames - 1) * hop_length samples: the clip length
    exactly, as ``latent_shape`` only takes clips whose length is a multiple of the hop.
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 64,
                 f_min: float = 0.0, f_max: float | None = None, floor: float = 1e-5,
                 log_mean: float = -5.0, log_std: float = 3.0, n_iter: int = 32):
        import torchaudio.transforms as T

        f_max = sample_rate / 2 if f_max is None else float(f_max)
        if min(sample_rate, n_fft, hop_length, n_mels, n_iter) < 1 or floor <= 0 or log_std <= 0:
            raise ConfigError("tokenizer.sample_rate, n_fft, hop_length, n_mels and n_iter must be positive "
                              "integers and tokenizer.floor and log_std positive numbers")
        if not 0 <= f_min < f_max <= sample_rate / 2:
            raise ConfigError(f"tokenizer.f_min and f_max must satisfy 0 <= f_min < f_max <= sample_rate / 2 "
                              f"= {sample_rate / 2:g}, got {f_min} and {f_max}")
        self.sample_rate, self.n_fft, self.hop_length, self.n_mels = int(sample_rate), n_fft, hop_length, n_mels
        self.f_min, self.f_max, self.floor, self.n_iter = float(f_min), f_max, float(floor), n_iter
        self.log_mean, self.log_std = float(log_mean), float(log_std)
        bank = dict(sample_rate=sample_rate, f_min=f_min, f_max=f_max, n_mels=n_mels, norm="slaney", mel_scale="slaney")
        self._mel = T.MelSpectrogram(n_fft=n_fft, hop_length=hop_length, power=1.0, **bank)
        self._inverse_mel = T.InverseMelScale(n_stft=n_fft // 2 + 1, **bank)
        self._griffin_lim = T.GriffinLim(n_fft=n_fft, n_iter=n_iter, hop_length=hop_length, power=1.0,
                                         rand_init=False)

    @property
    def sample_info(self) -> dict:
        """What writing decoded samples needs (``layersync.interfaces.sample_info``)."""
        return {"sample_rate": self.sample_rate}

    def fingerprint(self) -> dict:
        """Every option that shapes the latents (a latent cache records it)."""
        return {"name": "mel", "sample_rate": self.sample_rate, "n_fft": self.n_fft, "hop_length": self.hop_length,
                "n_mels": self.n_mels, "f_min": self.f_min, "f_max": self.f_max, "filterbank": "slaney",
                "power": 1.0, "floor": self.floor, "log_mean": self.log_mean, "log_std": self.log_std}

    @torch.no_grad()
    def log_mel(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised log-mel of waveforms (B, C, samples): (B, C * n_mels, frames), float32."""
        batch, channels, samples = x.shape
        mel = self._mel.to(x.device)(x.float().reshape(batch * channels, samples))
        return mel.clamp(min=self.floor).log().reshape(batch, channels * self.n_mels, -1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel latents (B, C * n_mels, frames)."""
        return (self.log_mel(x) - self.log_mean) / self.log_std

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Waveforms (B, z channels / n_mels, (frames - 1) * hop_length) in [-1, 1]."""
        batch, latent_channels, frames = z.shape
        if latent_channels % self.n_mels:
            raise ConfigError(f"mel latents need channels * n_mels={self.n_mels} channels, got {latent_channels}")
        mel = (z.float() * self.log_std + self.log_mean).exp().reshape(-1, self.n_mels, frames)
        spectrogram = self._inverse_mel.to(z.device)(mel)
        x = self._griffin_lim.to(z.device)(spectrogram)
        return x.reshape(batch, latent_channels // self.n_mels, -1).clamp(-1, 1)

    def latent_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        channels, samples = sample_shape
        _check_length(samples, self.hop_length, self.n_fft // 2 + 1, self.sample_rate,  # reflect padding
                      f"the mel tokenizer (hop_length={self.hop_length}, n_fft={self.n_fft})")
        return (channels * self.n_mels, samples // self.hop_length + 1)


mel = MelTokenizer  # tokenizer factory (registry name ``mel``); its options are MelTokenizer's


def default_oobleck_dir() -> Path:
    return weights_dir() / "stable-audio-open-1.0-vae"


def load_oobleck(path: str | Path | None = None):
    """``AutoencoderOobleck`` from a local folder (``path``, else ``$LAYERSYNC_WEIGHTS_DIR/stable-audio-open-1.0-vae``).

    The folder holds ``config.json`` and ``diffusion_pytorch_model.safetensors``, as the
    ``vae/`` folder of the Stable Audio Open repo does; a folder holding that ``vae/`` is read too.
    """
    from diffusers import AutoencoderOobleck

    folder = Path(path) if path is not None else default_oobleck_dir()
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    fetch = (f"{SAO_REPO} is a gated repo: accept its licence on the Hugging Face Hub and log in (hf auth login), "
             f'then fetch the VAE with: hf download {SAO_REPO} --include "vae/*" --local-dir {folder} (older '
             f"huggingface_hub: huggingface-cli download with the same arguments), which writes {folder / 'vae'}; "
             f"with another --local-dir DIR, set tokenizer.path=DIR/vae")
    return load_pretrained(AutoencoderOobleck, folder, "Stable Audio Open VAE", fetch)


class OobleckTokenizer(VAETokenizer):
    """Waveforms in [-1, 1] -> ``scale`` * Oobleck VAE latents, and back (see ``layersync.vae.VAETokenizer``).

    Stable Audio Open uses the VAE's latents as they are: its pretransform has no
    ``scale`` (stable-audio-tools' default, 1.0) and diffusers' StableAudioPipeline
    decodes its latents without a factor; so ``scale`` defaults to 1.0. The hop is
    the product of the downsampling ratios (2048 for Stable Audio Open: 44.1 kHz
    stereo -> 64 channels at about 21.5 frames/s).
    """

    name = "oobleck"

    def __init__(self, vae, scale: float = 1.0, device: str | torch.device | None = None):
        super().__init__(vae, scale, device)
        config = vae.config
        self.hop = math.prod(config.downsampling_ratios)
        self.sample_rate, self.channels = int(config.sampling_rate), config.audio_channels
        self.latent_channels = config.decoder_input_channels

    @property
    def sample_info(self) -> dict:
        """What writing decoded samples needs (``layersync.interfaces.sample_info``)."""
        return {"sample_rate": self.sample_rate}

    def latent_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        channels, samples = sample_shape
        if channels != self.channels:
            raise ConfigError(f"the Oobleck VAE takes {self.channels}-channel audio, got {channels} channels "
                              f"(set data.channels={self.channels})")
        _check_length(samples, self.hop, self.hop, self.sample_rate, "the Oobleck VAE")
        return (self.latent_channels, samples // self.hop)


def oobleck(path: str | None = None, scale: float = 1.0, device: str | None = None):
    """Tokenizer factory (registry name ``oobleck``)."""
    return OobleckTokenizer(load_oobleck(path), scale, device)
