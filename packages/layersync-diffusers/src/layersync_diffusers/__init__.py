"""LayerSync for pretrained diffusers transformers."""
