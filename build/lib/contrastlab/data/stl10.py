"""STL-10 (torchvision's binary files): 96x96 RGB, 10 classes, 5,000 labelled train, 8,000 test and
100,000 unlabelled images for self-supervised training."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset
from torchvision.datasets import STL10

from contrastlab.data.torchvision_sets import TorchvisionDataModule, files_only


class STL10FilesOnly(STL10):
    """torchvision's STL10 whose integrity check only tests that the files exist (no md5)."""

    train_list = files_only(STL10.train_list)
    test_list = files_only(STL10.test_list)


class STL10DataModule(TorchvisionDataModule):
    """STL-10 from ``data_dir/stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin``.

    Args:
        unlabeled: train on ``train+unlabeled`` (105,000 images; the unlabelled ones carry label -1)
            instead of the 5,000 labelled ones. Validation is the labelled test split either way, and
            the kNN monitor's memory uses only the labelled training images.
        folds: one of torchvision's 10 predefined 1,000-image folds of the labelled train split, or None.

    See :class:`~contrastlab.data.torchvision_sets.TorchvisionDataModule` for ``download`` / ``verify_md5``
    (torchvision checks all five files, ``unlabeled_X.bin`` included, whichever split is used).
    """

    dataset_class = STL10
    files_only_class = STL10FilesOnly
    base_folder = "stl10_binary"
    contents = "STL-10 files"
    stats = ((0.43, 0.42, 0.39), (0.27, 0.26, 0.27))

    def __init__(
        self,
        unlabeled: bool = False,
        folds: int | None = None,
        image_size: int = 96,
        channels: int = 3,
        num_classes: int = 10,
        **kwargs: Any,
    ) -> None:
        self.unlabeled, self.folds = unlabeled, folds
        kwargs.setdefault("mean", self.stats[0])
        kwargs.setdefault("std", self.stats[1])
        super().__init__(image_size=image_size, channels=channels, num_classes=num_classes, **kwargs)

    def splits(self) -> tuple[str, str]:
        return ("train+unlabeled" if self.unlabeled else "train"), "test"

    def open_split(self, split: str, download: bool) -> Dataset:
        folds = self.folds if split != "test" else None
        return self.loader_class()(self.data_dir, split=split, folds=folds, download=download)  # type: ignore[call-arg]
