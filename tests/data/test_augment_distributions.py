"""The on-device batch augmentation against the per-image one.

* the parameters: the device path (:meth:`BatchSimCLRAugment.sample`) and the per-image path (torchvision's
  transforms inside :class:`SimCLRAugment`, recorded while they run) draw the same distributions — crop area,
  aspect ratio and position, jitter factors, blur sigma (two-sample Kolmogorov–Smirnov) and the probability
  of every step (two-proportion z-test) — within sampling error;
* the operations: with the same parameters, hue, the other jitter operations, the crop and solarisation give
  torchvision's (or, for hue, :mod:`colorsys`'s loop) pixels;
* the switch: ``augment.on_device`` (the configs pass ``trainer.accelerator``) makes :class:`SimCLRAugment`
  a batched, on-device augmentation.
"""

from __future__ import annotations

import colorsys
import math
from collections import defaultdict
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from scipy import stats
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from contrastlab import api
from contrastlab.config import build
from contrastlab.data import BatchSimCLRAugment, SimCLRAugment
from contrastlab.data.batch_augment import AugmentParams

pytestmark = pytest.mark.usefixtures("one_thread")

N = 3000  # draws per path
H, W = 24, 20  # a non-square input, so that crops can fail to fit and fall back
RECIPE = {
    "image_size": 16,
    "crop_scale": (0.08, 1.0),
    "crop_ratio": (0.75, 4 / 3),
    "hflip_p": 0.5,
    "jitter_strength": 0.5,
    "jitter_p": 0.8,
    "hue": True,
    "grayscale_p": 0.2,
    "blur_p": 0.5,
    "blur_sigma": (0.1, 2.0),
    "solarize_p": 0.3,
}
P_MIN = 1e-3  # a KS p-value below this, or |z| above 4, is more than sampling error


def _record(fn: Any, into: list) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        into.append(out)
        return out

    return wrapper


def per_image_draws() -> dict[str, list]:
    """Run the per-image recipe N times, recording what its torchvision transforms draw and which steps apply."""
    torch.manual_seed(0)
    aug = SimCLRAugment(**RECIPE)
    seen: dict[str, list] = defaultdict(list)
    for step in aug.transform.transforms:
        if isinstance(step, v2.RandomResizedCrop):
            step.make_params = _record(step.make_params, seen["crop"])
        elif isinstance(step, v2.RandomApply):
            inner = step.transforms[0]
            name = "jitter" if isinstance(inner, v2.ColorJitter) else "blur"
            inner.make_params = _record(inner.make_params, seen[name])
        else:  # flip, grayscale, solarize: ``transform`` runs only when the step applies
            name = {v2.RandomHorizontalFlip: "flip", v2.RandomGrayscale: "grey", v2.RandomSolarize: "solarize"}
            step.transform = _record(step.transform, seen[name[type(step)]])
    image = torch.rand(3, H, W)
    for _ in range(N):
        aug(image)
    return seen


@pytest.fixture(scope="module")
def draws() -> tuple[dict[str, list], AugmentParams]:
    device = BatchSimCLRAugment(**RECIPE).sample(N, H, W, "cpu", torch.Generator().manual_seed(1))
    return per_image_draws(), device


def _ks(a: torch.Tensor | list[float], b: torch.Tensor | list[float], what: str) -> None:
    p = stats.ks_2samp(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)).pvalue
    assert p > P_MIN, f"{what}: the two paths differ (KS p = {p:.2g})"


def _proportions(k1: int, n1: int, k2: int, n2: int, what: str) -> None:
    pooled = (k1 + k2) / (n1 + n2)
    z = (k1 / n1 - k2 / n2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    assert abs(z) < 4, f"{what}: {k1}/{n1} vs {k2}/{n2} (z = {z:.1f})"


def test_crop_area_aspect_ratio_and_position_match(draws) -> None:
    seen, device = draws
    crops = seen["crop"]
    assert len(crops) == N
    top, left = torch.tensor([c["top"] for c in crops]), torch.tensor([c["left"] for c in crops])
    h, w = torch.tensor([c["height"] for c in crops]), torch.tensor([c["width"] for c in crops])
    d_top, d_left, d_h, d_w = device.box.unbind(1)
    _ks(h * w / (H * W), d_h * d_w / (H * W), "crop area")
    _ks((w / h).log(), (d_w / d_h).log(), "log aspect ratio")
    _ks((top + h / 2) / H, (d_top + d_h / 2) / H, "vertical centre")
    _ks((left + w / 2) / W, (d_left + d_w / 2) / W, "horizontal centre")
    assert bool(((d_top >= 0) & (d_left >= 0) & (d_top + d_h <= H) & (d_left + d_w <= W)).all())  # inside


def test_jitter_factors_and_blur_sigma_match(draws) -> None:
    seen, device = draws
    for i, name in enumerate(("brightness", "contrast", "saturation", "hue")):
        _ks([p[f"{name}_factor"] for p in seen["jitter"]], device.factors[:, i], f"{name} factor")
    _ks([p["sigma"][0] for p in seen["blur"]], device.sigma, "blur sigma")


@pytest.mark.parametrize("step", ["flip", "jitter", "grey", "blur", "solarize"])
def test_each_step_applies_with_the_same_probability(draws, step: str) -> None:
    seen, device = draws
    _proportions(len(seen[step]), N, int(getattr(device, step).sum()), N, f"P({step})")


def test_a_subtly_different_crop_distribution_is_detected(draws) -> None:
    """The tests above can fail: crops whose size is clamped into the image, instead of drawn again until they
    fit (what this module did before), are told apart by their area."""
    seen, _ = draws
    g = torch.Generator().manual_seed(2)
    area = torch.empty(N).uniform_(*RECIPE["crop_scale"], generator=g) * H * W
    ratio = torch.empty(N).uniform_(*(math.log(r) for r in RECIPE["crop_ratio"]), generator=g).exp()
    w, h = (area * ratio).sqrt().round().clamp(1, W), (area / ratio).sqrt().round().clamp(1, H)
    crops = seen["crop"]
    real = torch.tensor([c["height"] * c["width"] for c in crops]) / (H * W)
    with pytest.raises(AssertionError, match="crop area"):
        _ks(real, h * w / (H * W), "crop area")


# --------------------------------------------------------------------------------- the operations
def _params(b: int, **kw: Any) -> AugmentParams:
    """Parameters that apply nothing, with ``kw`` replaced."""
    off = torch.zeros(b, dtype=torch.bool)
    base = {
        "box": torch.tensor([[0.0, 0.0, H, W]]).repeat(b, 1),
        "angle": torch.zeros(b),
        "flip": off,
        "jitter": off,
        "factors": torch.tensor([[1.0, 1.0, 1.0, 0.0]]).repeat(b, 1),
        "order": [0, 1, 2, 3],
        "grey": off,
        "blur": off,
        "sigma": torch.ones(b),
        "solarize": off,
    }
    return AugmentParams(**{**base, **kw})


def test_hue_turn_matches_colorsys_loop() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 5, 4, generator=g, dtype=torch.float64)
    x[0, :, 0, 0] = 0.5  # a grey pixel keeps its colour
    shifts = torch.tensor([0.1, -0.35, 0.5], dtype=torch.float64)
    got = BatchSimCLRAugment._turn_hue(x, shifts.view(3, 1, 1, 1))
    want = torch.empty_like(x)
    for b in range(3):
        for i in range(5):
            for j in range(4):
                h, s, v = colorsys.rgb_to_hsv(*x[b, :, i, j].tolist())
                turned = colorsys.hsv_to_rgb((h + float(shifts[b])) % 1.0, s, v)
                want[b, :, i, j] = torch.tensor(turned, dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]])
def test_colour_jitter_with_given_factors_and_order_equals_torchvision(order: list[int]) -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, H, W, generator=g)
    factors = torch.tensor([[1.3, 0.7, 1.2, 0.15], [0.6, 1.4, 0.5, -0.3]])
    aug = BatchSimCLRAugment(**{**RECIPE, "image_size": 8})
    got = aug.color(x, _params(2, jitter=torch.ones(2, dtype=torch.bool), factors=factors, order=order))
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for b in range(2):
        want = x[b]
        for op in order:
            want = ops[op](want, float(factors[b, op]))
        torch.testing.assert_close(got[b], want, rtol=1e-5, atol=1e-5)


def test_crop_flip_and_solarize_equal_torchvision() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, 3, H, W, generator=g)
    box = torch.tensor([[2.0, 3.0, 10, 12], [0.0, 0.0, H, W], [5.0, 1.0, 7, 9]])
    flip = torch.tensor([False, True, False])
    solar = torch.tensor([False, False, True])
    aug = BatchSimCLRAugment(**{**RECIPE, "image_size": 16})
    got = aug.solarize(aug.geometry(x, _params(3, box=box, flip=flip)), _params(3, solarize=solar))
    for b in range(3):
        top, left, h, w = (int(v) for v in box[b])
        want = TF.resized_crop(x[b], top, left, h, w, [16, 16], antialias=False)  # up-sampling: no antialias needed
        want = TF.horizontal_flip(want) if flip[b] else want
        want = TF.solarize(want, 0.5) if solar[b] else want
        # the outermost output pixels sample within half a pixel of the crop's edge, where the crop is resized on
        # its own (its edge repeated) and the device path reads the image's pixels beyond it; a crop of the whole
        # image agrees everywhere (both repeat the image's edge)
        inner = slice(None) if b == 1 else slice(1, -1)
        torch.testing.assert_close(got[b][:, inner, inner], want[:, inner, inner], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------- the switch
@pytest.mark.parametrize(("on_device", "batched"), [("gpu", True), ("cuda", True), ("cpu", False), (True, True)])
def test_on_device_makes_the_recipe_batched(on_device: Any, batched: bool) -> None:
    aug = SimCLRAugment(**RECIPE, on_device=on_device)
    assert aug.batched is batched
    if batched:  # whole batches, a different draw per sample
        out = aug(torch.rand(1, 3, H, W).expand(6, 3, H, W).contiguous())
        assert out.shape == (6, 3, 16, 16) and len({tuple(o.flatten()[:12].tolist()) for o in out}) == 6


@pytest.mark.parametrize(("trainer", "on_device"), [("gpu", True), ("cpu", False)])
def test_trainer_gpu_turns_on_device_augmentation_on(tmp_path, trainer: str, on_device: bool) -> None:
    cfg = api.compose(["augment=simclr", f"trainer={trainer}"], tmp_path)
    assert OmegaConf.select(cfg, "augment.on_device") == ("gpu" if on_device else "cpu")
    dm = build.build_datamodule(cfg)
    assert dm.augment.batched is on_device
    batch = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["views"][0], batch["views"][1]) is on_device  # raw images until the device hook
    views = dm.on_after_batch_transfer(batch, 0)["views"]
    assert views[0].shape == (dm.batch_size, dm.channels, dm.image_size, dm.image_size)
    assert not torch.equal(views[0], views[1])
