"""Augmentations (torchvision v2) and the multi-view wrapper."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchvision.transforms import v2

from contrastlab.data.batch_augment import BatchSimCLRAugment

#: accelerators whose batches ``on_device`` augments on the device (``trainer.accelerator`` names)
DEVICE_ACCELERATORS = ("gpu", "cuda", "mps", "tpu", "xla")


def augments_on_device(on_device: bool | str) -> bool:
    """``augment.on_device``: a boolean, or an accelerator name (the configs pass ``trainer.accelerator``):
    true for :data:`DEVICE_ACCELERATORS`, and for ``auto`` when a CUDA device is visible."""
    if isinstance(on_device, bool):
        return on_device
    name = str(on_device).lower()
    if name in ("true", "false"):
        return name == "true"
    return name in DEVICE_ACCELERATORS or (name == "auto" and torch.cuda.is_available())


class SimCLRAugment:
    """SimCLR's recipe on float images in [0, 1], (C, H, W) -> (C, size, size).

    Random resized crop, horizontal flip, colour jitter (applied with ``jitter_p``; strength
    ``s`` scales brightness/contrast/saturation by 0.8s and hue by 0.2s), random grayscale,
    Gaussian blur (kernel ~10% of the image, odd), optional small rotation, optional solarisation
    (``solarize_p``, BYOL). Normalisation is the datamodule's job, so one recipe serves every dataset.

    ``on_device`` (true, or an accelerator name such as ``gpu``: the default with ``trainer=gpu``) runs the
    same recipe on whole batches on the training device, with parameters drawn per sample
    (:class:`~contrastlab.data.batch_augment.BatchSimCLRAugment`): the loader workers only decode and
    resize, and the datamodule augments each view after the transfer (``batched`` is then true and a call
    takes (B, C, H, W) batches). Otherwise (``cpu``, false) torchvision's per-image transforms run in the
    loader workers.
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
        solarize_p: float = 0.0,
        on_device: bool | str = False,
    ) -> None:
        s = jitter_strength
        self.on_device = augments_on_device(on_device)
        self.device_augment = BatchSimCLRAugment(
            image_size=image_size,
            crop_scale=crop_scale,
            crop_ratio=crop_ratio,
            hflip_p=hflip_p,
            jitter_strength=jitter_strength,
            jitter_p=jitter_p,
            hue=hue,
            saturation=saturation,
            grayscale_p=grayscale_p,
            blur_p=blur_p,
            blur_sigma=blur_sigma,
            rotation=rotation,
            solarize_p=solarize_p,
        )
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
        if solarize_p > 0:
            steps.append(v2.RandomSolarize(0.5, p=solarize_p))
        self.transform = v2.Compose(steps)

    @property
    def batched(self) -> bool:
        """Whether the datamodule augments whole batches on the device (``on_device``)."""
        return self.on_device

    def __call__(self, x: Tensor) -> Tensor:
        if self.on_device:
            return self.device_augment(x)
        return self.transform(x)

    def __repr__(self) -> str:
        return (
            f"SimCLRAugment(on_device, {self.device_augment})" if self.on_device else f"SimCLRAugment({self.transform})"
        )


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
