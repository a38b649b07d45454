"""The LAION-CLAP audio embedder for the Fréchet Audio Distance, as fadtk's ``clap-laion-music``.

fadtk embeds with laion_clap's ``music_audioset_epoch_15_esc_90.14.pt`` (HTSAT-base,
unfused). Here ``ClapModel`` and its ``ClapFeatureExtractor`` load a transformers folder,
by default ``laion/larger_clap_music``, the transformers team's HTSAT-base music
conversion (its identity with fadtk's file is unconfirmed: LAION-AI/CLAP#172). As fadtk
does, the 48 kHz mono waveform is quantised to 16 bits, a window of 10 s starts
every second from 0 to the clip's end (the last ones run past it and are padded
with zeros, so every clip gives at least one window), and each window gives the
model's L2-normalised 512-d audio embedding.
"""

from __future__ import annotations

from pathlib import Path

import torch

from layersync.errors import ConfigError
from layersync.metrics import MissingWeightsError
from layersync.metrics.weights import weights_dir

CHECKPOINT = "laion/larger_clap_music"
FOLDER = "larger_clap_music"  # default: this folder under the weights folder


def default_folder() -> Path:
    return weights_dir() / FOLDER


def quantise_16bit(x: torch.Tensor) -> torch.Tensor:
    """fadtk's int16 round trip: clip to [-1, 1], scale by 32767, truncate toward zero, scale back."""
    return (x.clamp(-1, 1) * 32767).to(torch.int16).float() / 32767


class ClapEmbedder:
    """FAD windows and embeddings of a CLAP checkpoint in a local folder (the default: ``laion/larger_clap_music``)."""

    tag = "clap"

    def __init__(self, folder: str | Path | None = None):
        from transformers import ClapFeatureExtractor, ClapModel

        self.weights_path = Path(folder) if folder is not None else default_folder()
        if not (self.weights_path / "config.json").is_file():
            raise MissingWeightsError(
                f"no CLAP checkpoint in {self.weights_path} (expected a transformers folder with config.json, "
                f"preprocessor_config.json and the weights); fetch it with: "
                f"hf download {CHECKPOINT} --local-dir {self.weights_path}"
            )
        try:
            self.model = ClapModel.from_pretrained(self.weights_path, local_files_only=True)
            self.extractor = ClapFeatureExtractor.from_pretrained(self.weights_path, local_files_only=True)
        except OSError as exc:
            raise MissingWeightsError(f"cannot load the CLAP checkpoint in {self.weights_path} ({exc}); fetch it with: "
                                      f"hf download {CHECKPOINT} --local-dir {self.weights_path}") from None
        if self.model.config.audio_config.enable_fusion or self.extractor.truncation != "rand_trunc":
            raise ConfigError(f"{self.weights_path}: enable_fusion={self.model.config.audio_config.enable_fusion}, "
                              f"truncation '{self.extractor.truncation}'; FAD (as fadtk) uses an unfused CLAP with "
                              f"rand_trunc features, such as {CHECKPOINT}")
        self.model.eval()
        self.device = torch.device("cpu")
        self.sample_rate = int(self.extractor.sampling_rate)
        self.window = int(self.extractor.nb_max_samples)  # 10 s
        self.hop = self.sample_rate  # 1 s
        self.dim = int(self.model.config.projection_dim)

    def to(self, device) -> "ClapEmbedder":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def windows(self, mono: torch.Tensor) -> torch.Tensor:
        """(samples,) at ``sample_rate`` -> (ceil(samples / hop), window) view, zero-padded past the clip's end."""
        count = -(-len(mono) // self.hop)
        padded = torch.nn.functional.pad(mono, (0, (count - 1) * self.hop + self.window - len(mono)))
        return padded.unfold(0, self.window, self.hop)

    @torch.no_grad()
    def embed(self, windows: torch.Tensor) -> torch.Tensor:
        audio = list(quantise_16bit(windows.float().cpu()).numpy())
        inputs = self.extractor(audio, sampling_rate=self.sample_rate, return_tensors="pt").to(self.device)
        out = self.model.get_audio_features(input_features=inputs["input_features"], is_longer=inputs["is_longer"])
        return getattr(out, "pooler_output", out)  # transformers 5 returns the output object, 4 the tensor
