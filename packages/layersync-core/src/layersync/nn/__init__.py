"""Shared transformer pieces for modality backbones."""

from layersync.nn.sit1d import SiT1D, build_sit1d, parse_size_1d
from layersync.nn.sit3d import SiT3D, build_sit3d, parse_size_3d
from layersync.nn.trunk import (
    SIZES,
    AdaLNBlock,
    FinalLayer,
    LabelEmbedder,
    TimestepEmbedder,
    Trunk,
    parse_sit_size,
    sincos_pos_embed,
)

__all__ = ["SIZES", "AdaLNBlock", "FinalLayer", "LabelEmbedder", "SiT1D", "SiT3D", "TimestepEmbedder", "Trunk",
           "build_sit1d", "build_sit3d", "parse_sit_size", "parse_size_1d", "parse_size_3d",
           "sincos_pos_embed"]
