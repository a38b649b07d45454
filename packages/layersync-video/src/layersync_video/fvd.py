"""Fréchet Video Distance (Unterthiner et al., 2018) as StyleGAN-V's ``fvd2048_16f`` computes it.

A clip is 16 frames, (N, C, T=16, H, W): uint8 in [0, 255], or float in [-1, 1], which is
quantised as StyleGAN-V quantises generator output, ``(x * 127.5 + 128).clamp(0, 255)`` cast to
uint8; grey clips (C = 1) are repeated to 3 channels. Each frame is resized to 224x224 and scaled
to [-1, 1] (``i3d.preprocess``), and the I3D's 400 Kinetics logits are the features. The Gaussian
of a side is that of its clips (float64 sums, merged across ranks). The protocol draws 2048 clips
of each side; the count used is reported with every score.

One difference from StyleGAN-V: core's covariance divides by N - 1 where StyleGAN-V's divides by N
(a relative change of 1/N in the covariances; under 0.05 % at 2048 clips).
"""

from __future__ import annotations

import torch

from layersync.errors import ConfigError, DataError
from layersync.metrics import FrechetEvaluator, GaussianStats
from layersync_video.i3d import CLIP_FRAMES, SIZE, preprocess

PREPROCESSING = (f"{CLIP_FRAMES} frames, uint8 (float [-1, 1] quantised as StyleGAN-V), grey repeated to RGB, "
                 f"frames resized to {SIZE}x{SIZE} (bilinear, align_corners=False, no antialias), "
                 "x / 255 * 2 - 1, I3D Kinetics-400 logits (StyleGAN-V fvd2048_16f)")


def as_uint8_clips(clips) -> torch.Tensor:
    """uint8 or float [-1, 1] (N, 1 or 3, 16, H, W) -> uint8 (N, 3, 16, H, W); DataError otherwise."""
    x = torch.as_tensor(clips)
    if x.ndim != 5 or x.shape[1] not in (1, 3):
        raise DataError(f"FVD takes clips (N, C=3 or 1, T={CLIP_FRAMES}, H, W), got shape {tuple(x.shape)}")
    if x.shape[2] != CLIP_FRAMES:
        raise DataError(f"FVD clips must have exactly {CLIP_FRAMES} frames, got {x.shape[2]}")
    if x.is_floating_point():
        if not torch.isfinite(x).all():
            raise DataError("FVD clips hold NaN or infinite values")
        x = (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    elif x.dtype != torch.uint8:
        raise DataError(f"FVD clips must be uint8 or float in [-1, 1], got {x.dtype}")
    return x.expand(-1, 3, -1, -1, -1) if x.shape[1] == 1 else x


class FVDEvaluator(FrechetEvaluator):
    """Streams clips through a video network; ``compute()`` gives ``fvd`` against the reference.

    ``network(x (N, 3, 16, 224, 224) in [-1, 1]) -> (N, network.feature_dim)``.
    """

    metric, name = "fvd", "FVD"
    items = ("clips of samples", "clips of reference")
    reference_items = "reference clips"
    check = staticmethod(as_uint8_clips)

    def __init__(self, network, batch: int = 8, device="cpu"):
        if batch < 1:
            raise ConfigError(f"FVD batch must be at least 1, got {batch}")
        super().__init__(network.feature_dim, "i3d", f"{network.feature_dim}-d I3D features")
        self.device, self.batch = torch.device(device), batch
        self.network = network.to(self.device).eval()
        self.weights_path = getattr(network, "weights_path", None)

    def features(self, clips: torch.Tensor):
        for chunk in clips.split(self.batch):
            yield self.network(preprocess(chunk.to(self.device)))

    def report(self, fake: GaussianStats, real: GaussianStats) -> dict:
        return {
            "num_samples": fake.count,
            "num_ref": real.count,
            "clip_frames": CLIP_FRAMES,
            "reference_i3d": "precomputed" if self.reference is not None else "computed",
            "preprocessing": PREPROCESSING,
        }


def fvd_i3d(weights=None, batch: int = 8, device="cpu") -> FVDEvaluator:
    """FVD on I3D (``weights``: the converted ``i3d_kinetics400_fvd.pt`` or StyleGAN-V's ``i3d_torchscript.pt``;
    None: the weights folder)."""
    from layersync_video.i3d import load_i3d

    return FVDEvaluator(load_i3d(weights), batch=batch, device=device)
