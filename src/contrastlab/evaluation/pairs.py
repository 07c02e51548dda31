"""Positive pairs for the alignment metric: two augmented views of the same validation images.

The views are drawn under a forked, seeded RNG, so they are the same at every call and drawing
them never changes the training run's random stream.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastlab.data.transforms import MultiView


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
    views = MultiView(augment, 2, datamodule.normalize)  # type: ignore[attr-defined]
    first, second = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(min(n, len(base))):
            item = base[i]
            if not isinstance(item, tuple | list):
                return None
            v1, v2 = views(item[0])
            first.append(v1)
            second.append(v2)
    return torch.stack(first), torch.stack(second)


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
