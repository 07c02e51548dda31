"""Augmentation speed: the SimCLR recipe on a batch, three ways, on this machine's CPU (or ``--device``).

* ``ours`` — :class:`contrastlab.data.BatchSimCLRAugment` (``augment.on_device=true``): parameters drawn per
  sample, applied with batched tensor ops on the batch's device;
* ``kornia`` — the same recipe with ``kornia.augmentation`` (random resized crop, flip, colour jitter with hue,
  grayscale, Gaussian blur, solarisation), also per sample and batched;
* ``per-image`` — torchvision's v2 transforms called once per image (:class:`contrastlab.data.SimCLRAugment`,
  what the loader workers run when ``augment.on_device=false``), for scale.

Every case augments the same batch (colour images in [0, 1]); each is timed for ``--repeats`` rounds of at
least ``--budget`` seconds after a warm-up, and the best round's ms/batch is reported (the machine is shared
and noisy) with the median. ``kornia/ours`` above 1.2 keeps our code (the rule in
``contrastlab/data/batch_augment.py``).

    python benchmarks/augment_speed.py                       # CIFAR (256 x 32 px) and STL (64 x 96 px) batches
    python benchmarks/augment_speed.py --shapes 256x32 --repeats 1 --budget 0.2   # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from contrastlab.data import BatchSimCLRAugment, SimCLRAugment

THRESHOLD = 1.2
RECIPE = {
    "crop_scale": (0.08, 1.0),
    "crop_ratio": (0.75, 4 / 3),
    "hflip_p": 0.5,
    "jitter_strength": 0.5,
    "jitter_p": 0.8,
    "hue": True,
    "grayscale_p": 0.2,
    "blur_p": 0.5,
    "blur_sigma": (0.1, 2.0),
    "solarize_p": 0.2,
}


def kornia_recipe(size: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The recipe with kornia's augmentation module, or None when kornia is not installed."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    s, kernel = RECIPE["jitter_strength"], max(3, int(0.1 * size) // 2 * 2 + 1)
    return K.AugmentationSequential(
        K.RandomResizedCrop((size, size), scale=RECIPE["crop_scale"], ratio=RECIPE["crop_ratio"]),
        K.RandomHorizontalFlip(p=RECIPE["hflip_p"]),
        K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=RECIPE["jitter_p"]),
        K.RandomGrayscale(p=RECIPE["grayscale_p"]),
        K.RandomGaussianBlur((kernel, kernel), sigma=RECIPE["blur_sigma"], p=RECIPE["blur_p"]),
        K.RandomSolarize(thresholds=0.0, additions=0.0, p=RECIPE["solarize_p"]),  # x >= 0.5 -> 1 - x
    )


def cases(size: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    ours = BatchSimCLRAugment(image_size=size, **RECIPE)
    per_image = SimCLRAugment(image_size=size, **RECIPE)
    out = {"ours": ours, "per-image": lambda x: torch.stack([per_image(img) for img in x])}
    kornia = kornia_recipe(size)
    if kornia is not None:
        out["kornia"] = kornia
    return out


def timed(fn: Callable[[], object], budget: float) -> float:
    """Seconds per call, averaged over as many calls as fit in ``budget`` seconds (at least one)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            return elapsed / calls


def measure(batch: int, size: int, device: str, repeats: int, budget: float) -> dict[str, list[float]]:
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    fns = cases(size)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():  # warm-up (allocator, kernels, kornia's first-call checks)
            fn(x)
        for _ in range(repeats):  # alternate the cases so that noise hits them alike
            for name, fn in fns.items():
                times[name].append(timed(lambda fn=fn: (fn(x), sync()), budget) * 1000)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["256x32", "64x96"], help="BATCHxSIZE batches")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget", type=float, default=1.0, help="seconds per timed round")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print("ms per batch: best / median over repeats (SimCLR recipe with hue and solarisation)")
    header = f"{'batch':>12} {'case':>10} {'best ms':>9} {'median ms':>10} {'x ours':>7}"
    print(header + "\n" + "-" * len(header))
    verdicts = []
    for shape in args.shapes:
        batch, size = (int(v) for v in shape.split("x"))
        times = measure(batch, size, args.device, args.repeats, args.budget)
        best = {name: min(t) for name, t in times.items()}
        for name, t in times.items():
            ratio = best[name] / best["ours"]
            print(f"{shape:>12} {name:>10} {best[name]:9.2f} {statistics.median(t):10.2f} {ratio:7.2f}")
        if "kornia" in best:
            ratio = best["kornia"] / best["ours"]
            verdicts.append(ratio <= THRESHOLD)
            print(f"{shape}: kornia/ours {ratio:.2f}, per-image/ours {best['per-image'] / best['ours']:.2f}")
    if not verdicts:
        print("verdict: kornia is not installed")
    elif all(verdicts):
        print(f"verdict: kornia within {THRESHOLD}x of ours at every shape: use kornia")
    else:
        print(f"verdict: kornia more than {THRESHOLD}x slower than ours at some shape: keep ours")


if __name__ == "__main__":
    main()
