"""LightningDataModules, datasets, multi-view transforms and batch samplers.

Batches are dicts. Training: ``{"views": [x1, x2, ...], "label": (B,), "index": (B,)}``;
evaluation: ``{"image": x, "label": (B,), "index": (B,)}``. Unlabelled data has label -1.
"""

from contrastlab.data.base import ContrastiveDataModule
from contrastlab.data.batch_augment import BatchSimCLRAugment
from contrastlab.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from contrastlab.data.digits import DigitsDataModule
from contrastlab.data.image_files import SkippedFilesReport, UnreadableImageError, UnreadableImageWarning
from contrastlab.data.image_text import ImageTextDataModule
from contrastlab.data.image_text_csv import ImageTextCSVDataModule
from contrastlab.data.imagefolder import ImageFolderDataModule
from contrastlab.data.no_duplicates import NoDuplicatesBatchSampler
from contrastlab.data.on_disk import DataDirError
from contrastlab.data.shapes_captions import ShapesCaptionsDataModule
from contrastlab.data.stl10 import STL10DataModule
from contrastlab.data.text_pairs import TextPairsDataModule
from contrastlab.data.transforms import SimCLRAugment

__all__ = [
    "BatchSimCLRAugment",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ContrastiveDataModule",
    "DataDirError",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "ImageTextCSVDataModule",
    "ImageTextDataModule",
    "NoDuplicatesBatchSampler",
    "STL10DataModule",
    "ShapesCaptionsDataModule",
    "SimCLRAugment",
    "SkippedFilesReport",
    "TextPairsDataModule",
    "UnreadableImageError",
    "UnreadableImageWarning",
]
