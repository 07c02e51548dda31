"""scikit-learn's digits: 1,797 grey 8x8 images of 10 classes, shipped inside scikit-learn (no download)."""

from __future__ import annotations

from typing import Any

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from contrastlab.data.base import ContrastiveDataModule


class DigitsDataModule(ContrastiveDataModule):
    """Digits upsampled (bilinear) from 8x8 to ``image_size``; a stratified train/val split with ``seed``."""

    def __init__(self, image_size: int = 16, channels: int = 1, num_classes: int = 10, **kwargs: Any) -> None:
        kwargs.setdefault("mean", (0.3,))
        kwargs.setdefault("std", (0.4,))
        super().__init__(image_size=image_size, channels=channels, num_classes=num_classes, **kwargs)

    def load_splits(self) -> tuple[TensorDataset, TensorDataset]:
        x, y = load_digits(return_X_y=True)
        images = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
        if self.image_size != 8:
            images = torch.nn.functional.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        labels = torch.tensor(y, dtype=torch.long)
        idx = torch.arange(len(labels)).numpy()
        tr, va = train_test_split(idx, test_size=self.val_fraction, random_state=self.seed, stratify=y)
        tr, va = torch.as_tensor(tr), torch.as_tensor(va)
        return TensorDataset(images[tr], labels[tr]), TensorDataset(images[va], labels[va])
