"""Image towers and projection heads. Every encoder exposes ``out_dim`` (its feature width)."""

from contrastlab.encoders.heads import ProjectionHead
from contrastlab.encoders.small_cnn import SmallCNN
from contrastlab.encoders.timm_encoder import TimmEncoder

__all__ = ["ProjectionHead", "SmallCNN", "TimmEncoder"]
