"""LightningDataModules, datasets, multi-view transforms and batch samplers.

Batches are dicts. Training: ``{"views": [x1, x2, ...], "label": (B,), "index": (B,)}``;
evaluation: ``{"image": x, "label": (B,), "index": (B,)}``. Unlabelled data has label -1.
"""

from contrastlab.data.base import ContrastiveDataModule
from contrastlab.data.digits import DigitsDataModule
from contrastlab.data.transforms import SimCLRAugment

__all__ = ["ContrastiveDataModule", "DigitsDataModule", "SimCLRAugment"]
