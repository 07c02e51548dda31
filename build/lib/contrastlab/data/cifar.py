"""CIFAR-10 and CIFAR-100 (torchvision's python pickles): 32x32 RGB, train split = train, val = test."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100

from contrastlab.data.torchvision_sets import TorchvisionDataModule, files_only


class CIFAR10FilesOnly(CIFAR10):
    """torchvision's CIFAR10 whose integrity check only tests that the files exist (no md5)."""

    train_list = files_only(CIFAR10.train_list)
    test_list = files_only(CIFAR10.test_list)
    meta = {**CIFAR10.meta, "md5": None}


class CIFAR100FilesOnly(CIFAR100):
    """torchvision's CIFAR100 whose integrity check only tests that the files exist (no md5)."""

    train_list = files_only(CIFAR100.train_list)
    test_list = files_only(CIFAR100.test_list)
    meta = {**CIFAR100.meta, "md5": None}


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10: 50,000 train / 10,000 test 32x32 RGB images of 10 classes, read from
    ``data_dir/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``. See
    :class:`~contrastlab.data.torchvision_sets.TorchvisionDataModule` for ``download`` / ``verify_md5``."""

    dataset_class = CIFAR10
    files_only_class = CIFAR10FilesOnly
    base_folder = "cifar-10-batches-py"
    contents = "CIFAR-10 files"
    #: per-channel mean / std of the training images
    stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))

    def __init__(self, image_size: int = 32, channels: int = 3, num_classes: int = 10, **kwargs: Any) -> None:
        kwargs.setdefault("mean", self.stats[0])
        kwargs.setdefault("std", self.stats[1])
        super().__init__(image_size=image_size, channels=channels, num_classes=num_classes, **kwargs)

    def open_split(self, split: str, download: bool) -> Dataset:
        return self.loader_class()(self.data_dir, train=split == "train", download=download)  # type: ignore[call-arg]


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100: as CIFAR-10, 100 fine classes, from ``data_dir/cifar-100-python/{train, test, meta}``."""

    dataset_class = CIFAR100
    files_only_class = CIFAR100FilesOnly
    base_folder = "cifar-100-python"
    contents = "CIFAR-100 files"
    stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

    def __init__(self, num_classes: int = 100, **kwargs: Any) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
