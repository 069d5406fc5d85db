"""Checkpoint formats of other ViT libraries: key mappings to and from vitkit's names."""
