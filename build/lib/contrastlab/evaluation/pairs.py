"""Positive pairs for the alignment metric: two augmented views of the same validation images.

The views are drawn under a forked, seeded RNG, so they are the same at every call and drawing
them never changes the training run's random stream.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastlab.data.transforms import MultiView, to_float_image


def augmented_pairs(datamodule: object, n: int = 512, seed: int = 0) -> tuple[Tensor, Tensor] | None:
    """Two (n, C, H, W) batches of augmented views of the first ``n`` validation images, or None
    when the datamodule has no augmentation or its items are not ``(image, label)`` pairs."""
    augment = getattr(datamodule, "augment", None)
    if augment is None or getattr(datamodule, "has_captions", False) or n < 1:
        return None
    datamodule.setup()  # type: ignore[attr-defined]
    base = getattr(datamodule, "val_base", None)
    if base is None:
        return None
    items = [base[i] for i in range(min(n, len(base)))]
    if not all(isinstance(item, tuple | list) for item in items):
        return None
    images = [to_float_image(item[0]) for item in items]
    normalize = datamodule.normalize  # type: ignore[attr-defined]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if getattr(augment, "batched", False):  # e.g. BatchSimCLRAugment: whole batches at once
            batch = torch.stack(images)
            return normalize(augment(batch)), normalize(augment(batch))
        views = MultiView(augment, 2, normalize)
        pairs = [views(img) for img in images]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


@torch.no_grad()
def embed_pairs(
    embed: object, pairs: tuple[Tensor, Tensor], device: torch.device | str, batch_size: int = 256
) -> tuple[Tensor, Tensor]:
    """Embed both views with ``embed`` ((B, ...) -> (B, D)) in batches; float32 on CPU."""
    out = []
    for views in pairs:
        parts = [embed(v.to(device)).float().cpu() for v in views.split(batch_size)]  # type: ignore[operator]
        out.append(torch.cat(parts))
    return out[0], out[1]
