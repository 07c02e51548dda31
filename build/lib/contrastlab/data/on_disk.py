"""Shared base of the datamodules that read a dataset from ``data_dir`` (CIFAR, STL-10, image folders)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from contrastlab.data.base import ContrastiveDataModule, EvalDataset
from contrastlab.errors import BadInputError


class DataDirError(BadInputError, ValueError):
    """``data_dir`` is missing, empty or holds unusable files; the message names the key to change."""


def dataset_targets(ds: Dataset) -> Tensor | None:
    """Labels of ``ds`` as a (N,) long tensor read from its ``targets`` / ``labels`` attribute
    (through ``Subset`` wrappers) without decoding any image; None when it has neither."""
    if isinstance(ds, Subset):
        inner = dataset_targets(ds.dataset)
        return None if inner is None else inner[torch.as_tensor(list(ds.indices), dtype=torch.long)]
    for name in ("targets", "labels"):
        values = getattr(ds, name, None)
        if values is not None:
            return torch.as_tensor(values, dtype=torch.long).reshape(-1)
    return None


class OnDiskDataModule(ContrastiveDataModule):
    """A datamodule whose files live under ``data_dir``.

    * ``data_dir`` missing (or empty) with ``download=False`` fails at construction with one sentence
      naming ``data.data_dir`` / ``data.download``;
    * :meth:`train_labels` reads the labels without decoding images;
    * :meth:`eval_train_dataloader` (the kNN memory) keeps only labelled training items, so a training
      split that mixes in unlabelled data (STL-10's ``unlabeled``) still gives a valid kNN monitor.
    """

    #: what the files are, for messages ("CIFAR-10 files", "images")
    contents = "dataset files"

    def __init__(self, data_dir: str | None = None, download: bool = False, **kwargs: Any) -> None:
        if data_dir is None:
            raise DataDirError(
                f"data.data_dir is not set; set data.data_dir to the folder holding the {self.contents}."
            )
        super().__init__(data_dir=str(Path(data_dir).expanduser()), download=download, **kwargs)
        if not download:
            self.check_data_dir()

    def check_data_dir(self) -> None:
        root = Path(self.data_dir)  # type: ignore[arg-type]
        fetch = " or set data.download=true to fetch them" if self.can_download() else ""
        if not root.is_dir():
            why = " and data.download=false" if self.can_download() else ""
            raise DataDirError(
                f"data.data_dir={root} does not exist{why}; "
                f"set data.data_dir to the folder holding the {self.contents}{fetch}."
            )
        if not any(root.iterdir()):
            raise DataDirError(f"data.data_dir={root} is an empty folder; put the {self.contents} there{fetch}.")

    @classmethod
    def can_download(cls) -> bool:
        return False

    def train_labels(self) -> Tensor:
        self.setup()
        labels = dataset_targets(self.train_base)  # type: ignore[arg-type]
        return labels if labels is not None else super().train_labels()

    def eval_train_dataloader(self) -> DataLoader:
        self.setup()
        train: Dataset = self.train_base  # type: ignore[assignment]
        labels = dataset_targets(train)
        if labels is not None and bool((labels < 0).any()) and bool((labels >= 0).any()):
            train = Subset(train, torch.nonzero(labels >= 0).flatten().tolist())
        return self._loader(EvalDataset(train, self.eval_transform), shuffle=False)
