"""Shared transformer pieces for modality backbones."""

from layersync.nn.sit1d import SiT1D, build_sit1d, parse_size_1d
from layersync.nn.trunk import (
    SIZES,
    AdaLNBlock,
    FinalLayer,
    LabelEmbedder,
    TimestepEmbedder,
    Trunk,
    sincos_pos_embed,
)

__all__ = ["SIZES", "AdaLNBlock", "FinalLayer", "LabelEmbedder", "SiT1D", "TimestepEmbedder", "Trunk",
           "build_sit1d", "parse_size_1d", "sincos_pos_embed"]
