"""Shared transformer pieces for modality backbones."""

from layersync.nn.trunk import (
    AdaLNBlock,
    FinalLayer,
    LabelEmbedder,
    TimestepEmbedder,
    Trunk,
    sincos_pos_embed,
)

__all__ = ["AdaLNBlock", "FinalLayer", "LabelEmbedder", "TimestepEmbedder", "Trunk", "sincos_pos_embed"]
