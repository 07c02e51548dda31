"""SimCLR augmentation for a whole batch at once, on the batch's device.

torchvision's v2 transforms draw one set of random parameters per call, so a batch would get
the same crop for every image; per-sample calls cost ~0.1 ms each in Python overhead, which
dominates training on small images (digits) and starves GPUs. This module draws parameters
per sample and applies them with a handful of batched tensor ops (kornia does the same, but is
not a dependency we want for ~100 lines). Semantics follow :class:`SimCLRAugment`:

* random resized crop + optional rotation + horizontal flip = one affine map per sample,
  applied with ``affine_grid``/``grid_sample`` (bilinear, zero padding);
* colour jitter with probability ``jitter_p``: brightness ``x*b``, contrast
  ``(x-m)*c+m`` (m = per-image grey mean), saturation blend with grey, factors uniform in
  ``[1-0.8s, 1+0.8s]`` (hue jitter is not implemented here: use ``SimCLRAugment`` for it);
* random grayscale with ``grayscale_p`` (3-channel images);
* Gaussian blur with probability ``blur_p``, sigma uniform in ``blur_sigma``, separable
  kernel of odd size ~10% of the image, one depthwise convolution for the batch.

Input and output: float (B, C, H, W) in [0, 1] -> (B, C, image_size, image_size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_GREY = (0.299, 0.587, 0.114)


def _uniform(n: int, low: float, high: float, device: torch.device, g: torch.Generator | None) -> Tensor:
    return torch.rand(n, device=device, generator=g) * (high - low) + low


class BatchSimCLRAugment:
    """Per-sample random SimCLR augmentation of a batch (see module docstring)."""

    batched = True

    def __init__(
        self,
        image_size: int = 32,
        crop_scale: Sequence[float] = (0.08, 1.0),
        crop_ratio: Sequence[float] = (0.75, 4 / 3),
        hflip_p: float = 0.5,
        jitter_strength: float = 0.5,
        jitter_p: float = 0.8,
        hue: bool = False,
        saturation: bool = True,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        rotation: float = 0.0,
    ) -> None:
        if hue:
            raise ValueError("BatchSimCLRAugment has no hue jitter; set augment.hue=false or use augment=simclr.")
        self.image_size = image_size
        self.crop_scale, self.crop_ratio = tuple(crop_scale), tuple(crop_ratio)
        self.hflip_p, self.rotation = hflip_p, rotation
        self.s, self.jitter_p, self.saturation = jitter_strength, jitter_p, saturation
        self.grayscale_p, self.blur_p, self.blur_sigma = grayscale_p, blur_p, tuple(blur_sigma)
        self.kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)

    def geometry(self, x: Tensor, g: torch.Generator | None = None) -> Tensor:
        b, dev = x.shape[0], x.device
        area = _uniform(b, *self.crop_scale, dev, g)
        log_r = _uniform(b, math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]), dev, g)
        ratio = log_r.exp()
        sx = (area * ratio).sqrt().clamp(max=1.0)  # crop width / image width
        sy = (area / ratio).sqrt().clamp(max=1.0)
        cx = (torch.rand(b, device=dev, generator=g) * 2 - 1) * (1 - sx)
        cy = (torch.rand(b, device=dev, generator=g) * 2 - 1) * (1 - sy)
        angle = _uniform(b, -self.rotation, self.rotation, dev, g) * math.pi / 180
        flip = torch.where(torch.rand(b, device=dev, generator=g) < self.hflip_p, -1.0, 1.0)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack(
            [
                torch.stack([sx * flip * cos, -sy * sin, cx], 1),
                torch.stack([sx * flip * sin, sy * cos, cy], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta.to(x.dtype), [b, x.shape[1], self.image_size, self.image_size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def color(self, x: Tensor, g: torch.Generator | None = None) -> Tensor:
        b, c, dev = x.shape[0], x.shape[1], x.device
        if self.jitter_p > 0 and self.s > 0:
            on = (torch.rand(b, device=dev, generator=g) < self.jitter_p).view(b, 1, 1, 1)
            lo, hi = max(0.0, 1 - 0.8 * self.s), 1 + 0.8 * self.s
            bright = _uniform(b, lo, hi, dev, g).view(b, 1, 1, 1)
            contrast = _uniform(b, lo, hi, dev, g).view(b, 1, 1, 1)
            y = (x * bright).clamp(0, 1)
            mean = self._grey(y).mean(dim=(1, 2, 3), keepdim=True)
            y = ((y - mean) * contrast + mean).clamp(0, 1)
            if self.saturation and c == 3:
                sat = _uniform(b, lo, hi, dev, g).view(b, 1, 1, 1)
                grey = self._grey(y)
                y = ((y - grey) * sat + grey).clamp(0, 1)
            x = torch.where(on, y, x)
        if self.grayscale_p > 0 and c == 3:
            on = (torch.rand(b, device=dev, generator=g) < self.grayscale_p).view(b, 1, 1, 1)
            x = torch.where(on, self._grey(x).expand_as(x), x)
        return x

    def blur(self, x: Tensor, g: torch.Generator | None = None) -> Tensor:
        if self.blur_p <= 0:
            return x
        b, c, h, w = x.shape
        dev = x.device
        sigma = _uniform(b, *self.blur_sigma, dev, g)
        half = self.kernel // 2
        t = torch.arange(-half, half + 1, device=dev, dtype=x.dtype)
        k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
        k = k / k.sum(1, keepdim=True)  # (B, K)
        k = k.repeat_interleave(c, 0)  # (B*C, K), one kernel per channel of each image
        y = x.reshape(1, b * c, h, w)
        y = F.conv2d(F.pad(y, (half, half, 0, 0), mode="reflect"), k.view(b * c, 1, 1, -1), groups=b * c)
        y = F.conv2d(F.pad(y, (0, 0, half, half), mode="reflect"), k.view(b * c, 1, -1, 1), groups=b * c)
        on = (torch.rand(b, device=dev, generator=g) < self.blur_p).view(b, 1, 1, 1)
        return torch.where(on, y.view(b, c, h, w), x)

    @staticmethod
    def _grey(x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            return x
        w = torch.tensor(_GREY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)

    @torch.no_grad()
    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        squeeze = x.ndim == 3
        x = x.unsqueeze(0) if squeeze else x
        out = self.blur(self.color(self.geometry(x, generator), generator), generator)
        return out.squeeze(0) if squeeze else out

    def __repr__(self) -> str:
        return (
            f"BatchSimCLRAugment(size={self.image_size}, scale={self.crop_scale}, ratio={self.crop_ratio}, "
            f"hflip={self.hflip_p}, rotation={self.rotation}, jitter={self.s}@{self.jitter_p}, "
            f"grey={self.grayscale_p}, blur={self.blur_p} sigma={self.blur_sigma})"
        )
