"""LayerSync's human-motion modality: HumanML3D features, an MDM-style 1-D SiT, the text-to-motion evaluator."""
