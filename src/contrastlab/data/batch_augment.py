"""SimCLR augmentation for a whole batch at once, on the batch's device, with parameters drawn per sample.

torchvision's v2 transforms draw one set of random parameters per call, so a batch would get the same
crop for every image, and per-image calls in loader workers cost ~0.1 ms each of Python overhead and
keep the GPU waiting. Here :meth:`BatchSimCLRAugment.sample` draws every sample's parameters at once
(tensors on the device; nothing is read back) and :meth:`BatchSimCLRAugment.apply` applies them with a
handful of batched tensor ops. The parameters follow :class:`~contrastlab.data.transforms.SimCLRAugment`'s
per-image recipe distribution for distribution (tests/data/test_augment_distributions.py checks it):

* random resized crop as torchvision draws it: up to 10 tries of an area fraction uniform in
  ``crop_scale`` and a log aspect ratio uniform in ``log(crop_ratio)``, rounded to whole pixels, the first
  that fits (else the central crop), at a uniform whole-pixel position; with the optional rotation
  (uniform in ``[-rotation, rotation]`` degrees) and the horizontal flip (``hflip_p``) it is one affine
  map per sample, applied with ``affine_grid``/``grid_sample`` (bilinear like torchvision's resize of the
  crop, edge pixels repeated, corners of a rotation filled with 0; no antialiasing: loader workers resize
  images to about the output size, so crops are up-sampled);
* colour jitter with probability ``jitter_p``: brightness ``x*b``, contrast ``(x-m)*c+m`` (m: the image's
  grey mean), saturation (blend with the grey image), factors uniform in ``[1-0.8s, 1+0.8s]``, and hue
  (``hue=true``): the HSV hue turned by a fraction uniform in ``[-0.2s, 0.2s]`` of the circle. torchvision
  applies the four in a random order per image; here the order is fixed (brightness, contrast, saturation,
  hue), since drawing it would mean reading a random number on the host for every batch. Without the
  clamping to [0, 1] the first three commute and the hue turn commutes with brightness and contrast, so
  only the clamps and the saturation/hue pair depend on the order;
* grayscale with probability ``grayscale_p`` (3-channel images), Gaussian blur with probability
  ``blur_p`` (sigma uniform in ``blur_sigma``, an odd kernel of ~10% of the image, reflect padding, one
  depthwise convolution per direction for the batch) and solarisation with probability ``solarize_p``
  (``x >= 0.5 -> 1 - x``).

Why not kornia's augmentation module: measured with ``benchmarks/augment_speed.py`` on this project's CPU
machine (README, "Augmentation speed"), kornia's equivalent pipeline was more than 1.2x slower than this
code at both batch shapes, and its colour jitter does not draw the order per image either, so it buys no
fidelity. kornia stays out of the dependencies.

Input and output: float (B, C, H, W) in [0, 1] -> (B, C, image_size, image_size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

_GREY = (0.2989, 0.587, 0.114)  # the luma weights of torchvision's grayscale, so that both paths agree
#: the colour-jitter operations, in the order :class:`AugmentParams.order` permutes
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


@dataclass
class AugmentParams:
    """Per-sample parameters of one batch (B samples); every tensor lives on the batch's device.

    ``box`` (B, 4): the crop ``(top, left, height, width)`` in input pixels; ``angle`` (B,) degrees;
    ``flip``, ``jitter``, ``grey``, ``blur``, ``solarize`` (B,) bool: whether each step applies;
    ``factors`` (B, 4): brightness, contrast, saturation factors and the hue shift (fraction of the circle);
    ``order``: the order of the jitter operations (indices into :data:`JITTER_OPS`; :meth:`sample` gives
    the fixed order of the module docstring); ``sigma`` (B,): the blur's standard deviation in pixels.
    """

    box: Tensor
    angle: Tensor
    flip: Tensor
    jitter: Tensor
    factors: Tensor
    order: list[int]
    grey: Tensor
    blur: Tensor
    sigma: Tensor
    solarize: Tensor


def _uniform(
    shape: int | tuple[int, ...], low: float, high: float, device: torch.device, g: torch.Generator | None
) -> Tensor:
    return torch.rand(shape, device=device, generator=g) * (high - low) + low


def _bernoulli(n: int, p: float, device: torch.device, g: torch.Generator | None) -> Tensor:
    return torch.rand(n, device=device, generator=g) < p


class BatchSimCLRAugment:
    """Per-sample random SimCLR augmentation of a batch on its device (see the module docstring)."""

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
        solarize_p: float = 0.0,
    ) -> None:
        self.image_size = image_size
        self.crop_scale, self.crop_ratio = tuple(crop_scale), tuple(crop_ratio)
        self.hflip_p, self.rotation = hflip_p, rotation
        self.s, self.jitter_p, self.saturation, self.hue = jitter_strength, jitter_p, saturation, hue
        self.grayscale_p, self.blur_p, self.blur_sigma = grayscale_p, blur_p, tuple(blur_sigma)
        self.solarize_p = solarize_p
        self.kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)

    # --- parameters ------------------------------------------------------------------------------------
    def sample_boxes(self, b: int, height: int, width: int, device: torch.device, g: torch.Generator | None) -> Tensor:
        """(B, 4) crops ``(top, left, height, width)`` drawn like torchvision's ``RandomResizedCrop`` (module
        docstring), the 10 tries of every sample at once."""
        tries = 10
        area = _uniform((b, tries), *self.crop_scale, device, g) * (height * width)
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        ratio = _uniform((b, tries), log_lo, log_hi, device, g).exp()
        w = (area * ratio).sqrt().round()
        h = (area / ratio).sqrt().round()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first try that fits
        w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
        top = (torch.rand(b, device=device, generator=g) * (height - h + 1)).floor()
        left = (torch.rand(b, device=device, generator=g) * (width - w + 1)).floor()
        # no try fits: the central crop of the image, its aspect ratio clamped into crop_ratio
        in_ratio = width / height
        if in_ratio < min(self.crop_ratio):
            cw, ch = width, round(width / min(self.crop_ratio))
        elif in_ratio > max(self.crop_ratio):
            cw, ch = round(height * max(self.crop_ratio)), height
        else:
            cw, ch = width, height
        ok = fits.any(1)
        box = torch.stack([top, left, h, w], 1)
        central = torch.tensor([(height - ch) // 2, (width - cw) // 2, ch, cw], device=device, dtype=box.dtype)
        return torch.where(ok[:, None], box, central)

    def sample(
        self,
        b: int,
        height: int,
        width: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> AugmentParams:
        """Every sample's parameters for a batch of ``b`` images of ``height`` x ``width`` pixels."""
        device, g = torch.device(device), generator
        lo, hi = max(0.0, 1 - 0.8 * self.s), 1 + 0.8 * self.s
        factors = torch.stack(
            [
                _uniform(b, lo, hi, device, g),
                _uniform(b, lo, hi, device, g),
                _uniform(b, lo, hi, device, g),
                _uniform(b, -0.2 * self.s, 0.2 * self.s, device, g),
            ],
            1,
        )
        return AugmentParams(
            box=self.sample_boxes(b, height, width, device, g),
            angle=_uniform(b, -self.rotation, self.rotation, device, g),
            flip=_bernoulli(b, self.hflip_p, device, g),
            jitter=_bernoulli(b, self.jitter_p if self.s > 0 else 0.0, device, g),
            factors=factors,
            order=list(range(len(JITTER_OPS))),
            grey=_bernoulli(b, self.grayscale_p, device, g),
            blur=_bernoulli(b, self.blur_p, device, g),
            sigma=_uniform(b, *self.blur_sigma, device, g),
            solarize=_bernoulli(b, self.solarize_p, device, g),
        )

    # --- application ------------------------------------------------------------------------------------
    def geometry(self, x: Tensor, p: AugmentParams) -> Tensor:
        """Crop, rotate and flip: one affine sampling grid per sample -> (B, C, image_size, image_size)."""
        b, _, height, width = x.shape
        top, left, h, w = p.box.to(x.dtype).unbind(1)
        sx, sy = w / width, h / height  # crop size in normalised units (the image spans [-1, 1])
        cx, cy = (2 * left + w) / width - 1, (2 * top + h) / height - 1
        angle = p.angle.to(x.dtype) * (math.pi / 180)
        flip = 1.0 - 2.0 * p.flip.to(x.dtype)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack(
            [torch.stack([sx * flip * cos, -sx * sin, cx], 1), torch.stack([sy * flip * sin, sy * cos, cy], 1)], 1
        )
        grid = F.affine_grid(theta, [b, x.shape[1], self.image_size, self.image_size], align_corners=False)
        # the image's edge pixels extend it (as resizing a crop does); rotated corners are filled with 0
        padding = "zeros" if self.rotation > 0 else "border"
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)

    def color(self, x: Tensor, p: AugmentParams) -> Tensor:
        """Colour jitter (where ``p.jitter``, in ``p.order``), then grayscale (where ``p.grey``, 3 channels)."""
        b, c = x.shape[0], x.shape[1]
        if self.jitter_p > 0 and self.s > 0:
            f = p.factors.to(x.dtype).view(b, 4, 1, 1, 1)
            y = x
            for op in p.order:
                if op == 0:
                    y = (y * f[:, 0]).clamp(0, 1)
                elif op == 1:
                    mean = self._grey(y).mean(dim=(1, 2, 3), keepdim=True)
                    y = ((y - mean) * f[:, 1] + mean).clamp(0, 1)
                elif op == 2 and self.saturation and c == 3:
                    grey = self._grey(y)
                    y = ((y - grey) * f[:, 2] + grey).clamp(0, 1)
                elif op == 3 and self.hue and c == 3:
                    y = self._turn_hue(y, f[:, 3])
            x = torch.where(p.jitter.view(b, 1, 1, 1), y, x)
        if self.grayscale_p > 0 and c == 3:
            x = torch.where(p.grey.view(b, 1, 1, 1), self._grey(x).expand_as(x), x)
        return x

    @staticmethod
    def _turn_hue(x: Tensor, shift: Tensor) -> Tensor:
        """Turn each pixel's HSV hue by ``shift`` (B, 1, 1, 1) of the circle, keeping value and saturation.

        With ``v = max(r, g, b)`` and chroma ``c = v - min(r, g, b)``, the hue in sixths of the circle is
        ``(g - b)/c`` (mod 6), ``(b - r)/c + 2`` or ``(r - g)/c + 4`` as red, green or blue is the largest;
        each channel of the turned colour is ``v - c * clamp(min(k, 4 - k), 0, 1)`` with
        ``k = (n + 6 h) mod 6`` and ``n = 5, 3, 1`` for red, green, blue. Grey pixels (``c = 0``) stay.
        """
        r, g, b = x.unbind(1)
        v = torch.maximum(torch.maximum(r, g), b)
        c = v - torch.minimum(torch.minimum(r, g), b)
        safe = torch.where(c > 0, c, torch.ones_like(c))
        sixths = torch.where(
            v == r, ((g - b) / safe).remainder(6), torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4)
        )
        turned = (sixths + 6 * shift.view(-1, 1, 1)).remainder(6)
        channels = []
        for n in (5.0, 3.0, 1.0):
            k = (turned + n).remainder(6)
            channels.append(v - c * torch.minimum(k, 4 - k).clamp(0, 1))
        return torch.stack(channels, 1)

    def blur(self, x: Tensor, p: AugmentParams) -> Tensor:
        if self.blur_p <= 0:
            return x
        b, c, h, w = x.shape
        half = self.kernel // 2
        t = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-(t[None] ** 2) / (2 * p.sigma[:, None].to(x.dtype) ** 2))
        k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, K), one kernel per channel of each image
        y = x.reshape(1, b * c, h, w)
        y = F.conv2d(F.pad(y, (half, half, 0, 0), mode="reflect"), k.view(b * c, 1, 1, -1), groups=b * c)
        y = F.conv2d(F.pad(y, (0, 0, half, half), mode="reflect"), k.view(b * c, 1, -1, 1), groups=b * c)
        return torch.where(p.blur.view(b, 1, 1, 1), y.view(b, c, h, w), x)

    def solarize(self, x: Tensor, p: AugmentParams) -> Tensor:
        if self.solarize_p <= 0:
            return x
        on = p.solarize.view(-1, 1, 1, 1) & (x >= 0.5)
        return torch.where(on, 1.0 - x, x)

    @staticmethod
    def _grey(x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            return x
        w = torch.tensor(_GREY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)

    @torch.no_grad()
    def apply(self, x: Tensor, p: AugmentParams) -> Tensor:
        """``x`` (B, C, H, W) augmented with the parameters ``p``."""
        return self.solarize(self.blur(self.color(self.geometry(x, p), p), p), p)

    @torch.no_grad()
    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        squeeze = x.ndim == 3
        x = x.unsqueeze(0) if squeeze else x
        out = self.apply(x, self.sample(x.shape[0], x.shape[2], x.shape[3], x.device, generator))
        return out.squeeze(0) if squeeze else out

    def __repr__(self) -> str:
        return (
            f"BatchSimCLRAugment(size={self.image_size}, scale={self.crop_scale}, ratio={self.crop_ratio}, "
            f"hflip={self.hflip_p}, rotation={self.rotation}, jitter={self.s}@{self.jitter_p}, hue={self.hue}, "
            f"grey={self.grayscale_p}, blur={self.blur_p} sigma={self.blur_sigma}, solarize={self.solarize_p})"
        )
