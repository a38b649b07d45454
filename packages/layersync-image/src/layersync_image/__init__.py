"""LayerSync's image modality: SiT backbones, image folders, PNG sample grids."""
