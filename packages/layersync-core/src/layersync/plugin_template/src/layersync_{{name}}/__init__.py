"""layersync-{{name}}: a LayerSync modality plugin for 1-D signals (see plugin.py)."""
