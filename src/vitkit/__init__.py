"""vitkit: Vision Transformers as in "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021)."""

from .config import ViTConfig, variant, variant_names
from .loading import LoadOptions, OpenedModel, load, open_model
from .model import ViT

__all__ = ["LoadOptions", "OpenedModel", "ViT", "ViTConfig", "load", "open_model", "variant", "variant_names"]
__version__ = "0.1.0"
