"""vitkit: Vision Transformers as in "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021)."""

from .config import ViTConfig, variant, variant_names
from .loading import load
from .model import ViT

__all__ = ["ViT", "ViTConfig", "load", "variant", "variant_names"]
__version__ = "0.1.0"
