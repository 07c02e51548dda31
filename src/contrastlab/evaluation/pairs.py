"""Positive pairs for the alignment metric: two augmented views of the same validation images.

The views are drawn under a forked, seeded RNG, so they are the same at every call and drawing
them never changes the training run's random stream.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from contrastlab.data.base import ContrastiveDataModule
from contrastlab.data.transforms import MultiView, to_float_image
from contrastlab.evaluation.embed import embed_loader


def augmented_pairs(datamodule: object, n: int = 512, seed: int = 0) -> tuple[Tensor, Tensor] | None:
    """Two (n, C, H, W) batches of augmented views of the first ``n`` validation images, or None
    when the datamodule is no image :class:`~contrastlab.data.base.ContrastiveDataModule` (or serves
    captions), has no augmentation, or its items are not ``(image, label)`` pairs."""
    if not isinstance(datamodule, ContrastiveDataModule) or datamodule.has_captions or n < 1:
        return None
    augment = datamodule.augment
    if augment is None:
        return None
    datamodule.setup()
    base = datamodule.val_base
    if base is None:
        return None
    items = [base[i] for i in range(min(n, len(base)))]
    if not all(isinstance(item, tuple | list) for item in items):
        return None
    images = [to_float_image(item[0]) for item in items]
    normalize = datamodule.normalize
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if getattr(augment, "batched", False):  # e.g. BatchSimCLRAugment: whole batches at once
            batch = torch.stack(images)
            return normalize(augment(batch)), normalize(augment(batch))
        views = MultiView(augment, 2, normalize)
        pairs = [views(img) for img in images]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def embed_pairs(
    embed: Callable[[Tensor], Tensor], pairs: tuple[Tensor, Tensor], device: torch.device | str, batch_size: int = 256
) -> tuple[Tensor, Tensor]:
    """Embed both views with ``embed`` ((B, ...) -> (B, D)) in batches of ``batch_size`` (eval mode,
    no gradients); float32 on CPU."""
    a, b = (embed_loader(embed, views.split(batch_size), device, key=None, fields=())[0] for views in pairs)
    return a, b
