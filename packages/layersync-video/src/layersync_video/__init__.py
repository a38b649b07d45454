"""LayerSync's video modality: video folders, moving digits, a spatio-temporal SiT, FVD."""
