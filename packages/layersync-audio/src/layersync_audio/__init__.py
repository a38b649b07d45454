"""LayerSync's audio modality: audio folders, log-mel and VAE latents, a 1-D SiT, FAD."""
