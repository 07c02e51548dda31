"""LightningModules, one thin module per objective on a shared base."""

from contrastlab.objectives.base import ContrastiveObjective
from contrastlab.objectives.biencoder import BiEncoder
from contrastlab.objectives.clip import CLIP, DualEncoderObjective
from contrastlab.objectives.simclr import SimCLR
from contrastlab.objectives.triplet import Triplet

__all__ = ["CLIP", "BiEncoder", "ContrastiveObjective", "DualEncoderObjective", "SimCLR", "Triplet"]
