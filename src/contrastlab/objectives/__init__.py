"""LightningModules, one thin module per objective on a shared base."""

from contrastlab.objectives.base import ContrastiveObjective
from contrastlab.objectives.simclr import SimCLR
from contrastlab.objectives.triplet import Triplet

__all__ = ["ContrastiveObjective", "SimCLR", "Triplet"]
