"""VGGish (Hershey et al., ICASSP 2017) and its log-mel front end, for the Fréchet Audio Distance.

The network is the torchvggish port (harritaylor/torchvggish) layer for layer, so
its released ``vggish-10086976.pth`` loads key for key. Embeddings are what FAD
reads: the 128-d output of the last fully connected layer before any activation,
without the AudioSet PCA/whitening and 8-bit quantisation. Google's FAD
(google-research ``frechet_audio_distance``) reads ``vggish/embedding``, fc2's
pre-activation output in tensorflow/models; fadtk's ``vggish`` turns torchvggish's
postprocessing off and drops its final ReLU. Windowing follows fadtk too
(non-overlapping 0.96 s examples, no loudness normalisation), not Google's 1 s splits.

The front end is VGGish's own (``mel_features.py`` of tensorflow/models), in torch:
16 kHz mono, 25 ms frames (400 samples, periodic Hann) every 10 ms (160 samples),
no centring or padding, |rfft| over 512 points, 64 HTK-mel triangles from 125 to
7500 Hz drawn linearly on the mel axis, log(mel + 0.01).
An example is 96 frames (0.96 s) and examples do not overlap, so example k reads
samples [15360 k, 15360 k + 15600).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from layersync.metrics import WeightFile, resolve_weights

SAMPLE_RATE = 16000
FRAME, HOP, FFT = 400, 160, 512  # 25 ms, 10 ms, next power of two
MEL_BANDS, MEL_MIN_HZ, MEL_MAX_HZ = 64, 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96
EXAMPLE_SAMPLES = FRAME + (EXAMPLE_FRAMES - 1) * HOP  # 15600: the samples one example reads
EXAMPLE_HOP = EXAMPLE_FRAMES * HOP  # 15360 (0.96 s): examples do not overlap
EMBEDDING_DIM = 128

VGGISH = WeightFile(
    name="vggish",
    filename="vggish-10086976.pth",
    url="https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
    size=None,  # not published
    sha256="10086976245803799d9194e9a73d9b6c1549c71d1b80106f5cade5608a561f4b",
    licence="Apache-2.0",
)


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale, as VGGish writes it: 1127 ln(1 + f / 700)."""
    return 1127.0 * torch.log1p(hz / 700.0)


def mel_matrix() -> torch.Tensor:
    """(FFT // 2 + 1, MEL_BANDS) float64: triangles drawn linearly on the mel axis (VGGish's zeroing
    of the DC bin changes nothing here: 0 Hz lies below the lowest edge)."""
    bins = hz_to_mel(torch.linspace(0.0, SAMPLE_RATE / 2, FFT // 2 + 1, dtype=torch.float64))[:, None]
    low, high = hz_to_mel(torch.tensor([MEL_MIN_HZ, MEL_MAX_HZ], dtype=torch.float64)).tolist()
    edges = torch.linspace(low, high, MEL_BANDS + 2, dtype=torch.float64)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising, falling = (bins - lower) / (centre - lower), (upper - bins) / (upper - centre)
    return torch.minimum(rising, falling).clamp_min(0.0)


def log_mel(waveform: torch.Tensor) -> torch.Tensor:
    """16 kHz float (..., samples) -> (..., frames, MEL_BANDS) float32; computed in float64 as VGGish does."""
    frames = waveform.to(torch.float64).unfold(-1, FRAME, HOP)
    window = torch.hann_window(FRAME, periodic=True, dtype=torch.float64, device=waveform.device)
    magnitude = torch.fft.rfft(frames * window, n=FFT).abs()
    mel = magnitude @ mel_matrix().to(waveform.device)
    return torch.log(mel + LOG_OFFSET).float()


class VGGish(nn.Module):
    """``forward(log-mel examples (N, 1, 96, 64)) -> (N, 128)`` raw embeddings (the final ReLU dropped)."""

    def __init__(self):
        super().__init__()
        layers, channels = [], 1
        for width in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if width == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers)
        # torchvggish ends with a ReLU (index 5), which holds no weights: the state dict is unchanged.
        self.embeddings = nn.Sequential(nn.Linear(512 * 4 * 6, 4096), nn.ReLU(True),
                                        nn.Linear(4096, 4096), nn.ReLU(True), nn.Linear(4096, EMBEDDING_DIM))

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        x = self.features(examples)
        return self.embeddings(x.permute(0, 2, 3, 1).flatten(1))  # flattened in TF's NHWC order


def load_vggish(weights: str | Path | None = None) -> VGGish:
    """The verified published network (an explicit ``weights`` path wins over the weights folder)."""
    path = resolve_weights(VGGISH, weights)
    network = VGGish()
    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    network.weights_path = path
    return network.eval()


class VGGishEmbedder:
    """FAD windows and embeddings of VGGish: one non-overlapping 0.96 s example per window."""

    tag, sample_rate, dim = "vggish", SAMPLE_RATE, EMBEDDING_DIM

    def __init__(self, network: VGGish):
        self.network = network.eval()
        self.device = torch.device("cpu")
        self.weights_path = getattr(network, "weights_path", None)

    def to(self, device) -> "VGGishEmbedder":
        self.device = torch.device(device)
        self.network.to(self.device)
        return self

    def windows(self, mono: torch.Tensor) -> torch.Tensor:
        """16 kHz (samples,) -> (n, 15600) view; a clip shorter than one example is zero-padded to one
        (fadtk pads VGGish input to 1 s, which gives the same single example)."""
        if len(mono) < EXAMPLE_SAMPLES:
            mono = nn.functional.pad(mono, (0, EXAMPLE_SAMPLES - len(mono)))
        return mono.unfold(0, EXAMPLE_SAMPLES, EXAMPLE_HOP)

    @torch.no_grad()
    def embed(self, windows: torch.Tensor) -> torch.Tensor:
        return self.network(log_mel(windows.to(self.device))[:, None])
