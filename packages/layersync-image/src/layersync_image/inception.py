"""The FID Inception-v3 (TF 2015-12-05 graph ported by torch-fidelity) and its three outputs.

Per image it gives what ADM's evaluator (openai/guided-diffusion) reads from
the TensorFlow graph:

* ``pool``: ``pool_3`` (2048), for FID and precision/recall;
* ``spatial``: ``mixed_6/conv`` (the 1x1 branch of Mixed_6d after its ReLU),
  first 7 of its 192 channels, flattened in TF's HWC order (7*17*17 = 2023),
  for sFID, so that ADM reference batches' ``mu_s``/``sigma_s`` line up;
* ``logits``: ``pool_3 @ softmax/weights`` without the bias (1008), for IS.

Images enter as uint8 NCHW at any size; torch-fidelity resizes them to
299x299 with its TF1-exact bilinear, as the TF graph does.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from layersync.metrics import WeightFile, resolve_weights

INCEPTION_FID = WeightFile(
    name="inception-fid",
    filename="weights-inception-2015-12-05-6726825d.pth",
    url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    size=95_628_359,
    sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    licence="Apache-2.0",
)
RESIZE_MODE = "torch-fidelity TF1-bilinear 299"
SPATIAL_CHANNELS = 7  # ADM keeps mixed_6/conv[..., :7]


@contextmanager
def _weights_only_loads():
    """torch-fidelity calls torch.load(weights_only=False); torch's own switch makes it weights-only."""
    saved = {key: os.environ.pop(key, None) for key in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        os.environ.update({key: value for key, value in saved.items() if value is not None})


class FIDInception(nn.Module):
    """``forward(uint8 NCHW) -> (pool (N, 2048), spatial (N, 2023), logits (N, 1008))``, float32."""

    def __init__(self, weights_path: str | Path):
        super().__init__()
        try:  # an evaluator-only dependency: the plugin loads without it
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as exc:
            raise ModuleNotFoundError(f"FID needs torch-fidelity ({exc}): pip install torch-fidelity") from None
        self.weights_path = Path(weights_path)
        with _weights_only_loads():
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(weights_path)
            )
        self._spatial = None
        self.net.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module, inputs, output):
        self._spatial = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1).float()

    @torch.no_grad()
    def forward(self, images: torch.Tensor):
        pool, logits = self.net(images)
        spatial, self._spatial = self._spatial, None
        return pool, spatial, logits


def load_inception(weights: str | Path | None = None) -> FIDInception:
    """The verified published network (an explicit ``weights`` path wins over the weights folder)."""
    return FIDInception(resolve_weights(INCEPTION_FID, weights))
