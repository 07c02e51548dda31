"""Augmentations (torchvision v2) and the multi-view wrapper."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchvision.transforms import v2


class SimCLRAugment:
    """SimCLR's recipe on float images in [0, 1], (C, H, W) -> (C, size, size).

    Random resized crop, horizontal flip, colour jitter (applied with ``jitter_p``; strength
    ``s`` scales brightness/contrast/saturation by 0.8s and hue by 0.2s), random grayscale,
    Gaussian blur (kernel ~10% of the image, odd), optional small rotation. Normalisation is
    the datamodule's job, so one recipe serves every dataset.
    """

    def __init__(
        self,
        image_size: int = 32,
        crop_scale: Sequence[float] = (0.08, 1.0),
        crop_ratio: Sequence[float] = (0.75, 4 / 3),
        hflip_p: float = 0.5,
        jitter_strength: float = 0.5,
        jitter_p: float = 0.8,
        hue: bool = True,
        saturation: bool = True,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        rotation: float = 0.0,
    ) -> None:
        s = jitter_strength
        steps: list[Callable] = [
            v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), ratio=tuple(crop_ratio), antialias=True)
        ]
        if rotation > 0:
            steps.append(v2.RandomRotation(rotation))
        if hflip_p > 0:
            steps.append(v2.RandomHorizontalFlip(hflip_p))
        if jitter_p > 0 and s > 0:
            jitter = v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s if saturation else 0, 0.2 * s if hue else 0)
            steps.append(v2.RandomApply([jitter], p=jitter_p))
        if grayscale_p > 0:
            steps.append(v2.RandomGrayscale(grayscale_p))
        if blur_p > 0:
            k = max(3, int(0.1 * image_size) // 2 * 2 + 1)
            steps.append(v2.RandomApply([v2.GaussianBlur(k, sigma=tuple(blur_sigma))], p=blur_p))
        self.transform = v2.Compose(steps)

    def __call__(self, x: Tensor) -> Tensor:
        return self.transform(x)

    def __repr__(self) -> str:
        return f"SimCLRAugment({self.transform})"


def to_float_image(x: object) -> Tensor:
    """PIL image / uint8 tensor / float tensor -> float (C, H, W) in [0, 1]."""
    if isinstance(x, Tensor) and x.is_floating_point():
        return x if x.ndim == 3 else x.unsqueeze(0)
    return v2.functional.to_dtype(v2.functional.to_image(x), torch.float32, scale=True)


class MultiView:
    """Apply ``augment`` independently ``views`` times, then ``finish`` (e.g. normalise) to each.

    A batched augmentation (``augment.batched``, e.g. :class:`BatchSimCLRAugment`) is not applied
    here: the raw image is repeated and the datamodule augments whole batches on the device.
    """

    def __init__(self, augment: Callable[[Tensor], Tensor], views: int = 2, finish: Callable | None = None) -> None:
        self.augment, self.views, self.finish = augment, views, finish or (lambda t: t)

    def __call__(self, x: object) -> list[Tensor]:
        img = to_float_image(x)
        if getattr(self.augment, "batched", False):
            return [img] * self.views
        return [self.finish(self.augment(img)) for _ in range(self.views)]
