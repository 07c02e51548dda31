"""LightningDataModules, datasets, multi-view transforms and batch samplers.

Batches are dicts. Training: ``{"views": [x1, x2, ...], "label": (B,), "index": (B,)}``;
evaluation: ``{"image": x, "label": (B,), "index": (B,)}``. Unlabelled data has label -1.
"""

from contrastlab.data.base import ContrastiveDataModule
from contrastlab.data.batch_augment import BatchSimCLRAugment
from contrastlab.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from contrastlab.data.digits import DigitsDataModule
from contrastlab.data.image_files import SkippedFilesReport, UnreadableImageError, UnreadableImageWarning
from contrastlab.data.imagefolder import ImageFolderDataModule
from contrastlab.data.on_disk import DataDirError
from contrastlab.data.stl10 import STL10DataModule
from contrastlab.data.transforms import SimCLRAugment

__all__ = [
    "BatchSimCLRAugment",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ContrastiveDataModule",
    "DataDirError",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "STL10DataModule",
    "SimCLRAugment",
    "SkippedFilesReport",
    "UnreadableImageError",
    "UnreadableImageWarning",
]
