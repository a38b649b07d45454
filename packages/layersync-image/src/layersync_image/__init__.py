"""LayerSync's image modality: SiT backbones, image folders, PNG sample grids."""

from layersync_image.sit import SiT, build_sit

__all__ = ["SiT", "build_sit"]
