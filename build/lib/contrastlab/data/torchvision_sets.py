"""Datamodules over torchvision's dataset classes (CIFAR, STL-10): download once, md5 check, clear errors."""

from __future__ import annotations

import http.client
import pickle
import urllib.error
from typing import Any

from torch.utils.data import Dataset
from torchvision.datasets import VisionDataset

from contrastlab.data.on_disk import DataDirError, OnDiskDataModule


def files_only(file_list: list[list[str]]) -> list[list[str | None]]:
    """torchvision's ``[[file, md5], ...]`` with every md5 set to None: its ``check_integrity(path, None)``
    then only tests that the file exists."""
    return [[entry[0], None] for entry in file_list]


class TorchvisionDataModule(OnDiskDataModule):
    """Base for a torchvision dataset under ``data_dir``.

    Integrity: with ``verify_md5=True`` (the default, for real data) torchvision checks the md5 of
    every file of the dataset before loading it. With ``verify_md5=False`` the check is only that
    every file exists and parses (torchvision's loader reads and reshapes them) -- meant for tests
    that write tiny files in the real format. ``download=True`` fetches missing (or, with
    ``verify_md5``, corrupt) files in :meth:`prepare_data`, which Lightning runs on one process per node.
    """

    dataset_class: type[VisionDataset]
    #: the same class with md5 checks off (``files_only`` lists), used when ``verify_md5=False``
    files_only_class: type[VisionDataset]
    #: torchvision's sub-folder of ``data_dir`` holding the files, for messages
    base_folder = ""
    contents = "dataset files"

    def __init__(
        self, data_dir: str | None = None, download: bool = False, verify_md5: bool = True, **kwargs: Any
    ) -> None:
        self.verify_md5 = verify_md5
        self._prepared = False
        super().__init__(data_dir=data_dir, download=download, **kwargs)

    @classmethod
    def can_download(cls) -> bool:
        return True

    def loader_class(self) -> type[VisionDataset]:
        return self.dataset_class if self.verify_md5 else self.files_only_class

    def open_split(self, split: str, download: bool) -> Dataset:
        """The torchvision dataset of ``split`` (subclasses map it to the class's arguments)."""
        raise NotImplementedError

    def splits(self) -> tuple[str, str]:
        """Names of the (train, val) splits passed to :meth:`open_split`."""
        return "train", "test"

    def prepare_data(self) -> None:
        if self.download and not self._prepared:
            for split in self.splits():
                self._open(split, download=True)
            self._prepared = True

    def _open(self, split: str, download: bool) -> Dataset:
        where = f"data.data_dir={self.data_dir} ({self.base_folder}/)"
        try:
            return self.open_split(split, download)
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
            raise DataDirError(
                f"data.download=true could not fetch the {self.contents} into {where} "
                f"({type(err).__name__}: {err}); check the network connection and run again, "
                "or put the files there yourself and set data.download=false."
            ) from err
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
            if download:  # the archive failed its md5 check (nothing extracted), or the files it held
                raise DataDirError(
                    f"data.download=true fetched {self.contents} into {where} that fail torchvision's md5 "
                    f"check ({err}); run again to fetch them anew (a corrupt archive is replaced), "
                    "or put the real files there yourself and set data.download=false."
                ) from err
            if self.verify_md5:
                raise DataDirError(
                    f"{self.contents} in {where} are missing or fail torchvision's md5 check; "
                    "set data.download=true to fetch them "
                    "(or data.verify_md5=false to accept files that only exist and parse)."
                ) from err
            raise DataDirError(
                f"{self.contents} in {where} are missing; set data.download=true to fetch them."
            ) from err
        except (OSError, ValueError, EOFError, KeyError, IndexError, pickle.UnpicklingError) as err:
            raise DataDirError(
                f"{self.contents} in {where} could not be parsed ({type(err).__name__}: {err}); "
                "delete them and set data.download=true to fetch them again."
            ) from err

    def load_splits(self) -> tuple[Dataset, Dataset]:
        self.prepare_data()  # no-op unless download=true and not yet done on this process
        train, val = self.splits()
        return self._open(train, download=False), self._open(val, download=False)
