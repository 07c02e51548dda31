"""Embed a dataloader of ``{"image", "label"}`` batches with any ``(B, ...) -> (B, D)`` function."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader


@torch.no_grad()
def embed_loader(
    fn: Callable[[Tensor], Tensor], loader: DataLoader, device: torch.device | str = "cpu", key: str = "image"
) -> tuple[Tensor, Tensor]:
    """Returns ``(features (N, D) float32 on CPU, labels (N,) long)`` in loader order."""
    feats, labels = [], []
    for batch in loader:
        feats.append(fn(batch[key].to(device)).float().cpu())
        labels.append(torch.as_tensor(batch["label"]).cpu())
    return torch.cat(feats), torch.cat(labels)
