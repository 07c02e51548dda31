"""LightningModules, one thin module per objective on a shared base."""

from contrastlab.objectives.base import ContrastiveObjective
from contrastlab.objectives.simclr import SimCLR

__all__ = ["ContrastiveObjective", "SimCLR"]
