"""Loader throughput: images/s through the whole training loader, tar shards vs the same images as a folder.

Both sides read the same JPEG files (written here: ``--n`` photos-like images of ``--size`` pixels in 10
class folders; the shards hold the same bytes, written by ``contrastlab-shard``) and run what training runs:
decode (JPEG draft mode to ``--image-size``), two SimCLR views, normalisation, collation into batches of
``--batch``, in ``--workers`` DataLoader workers, through the loader :class:`DataOrder` gives the trainer
(seeded per item, resumable). ``imagefolder`` is ``data=imagefolder``; ``shards`` is ``data=webdataset``.

Each side runs one warm-up epoch (workers started, files in the page cache), then the two alternate for
``--repeats`` epochs; the best epoch of each is reported (the machine is shared and noisy), with the median,
and the ratio both of the best epochs and, as the median, of the back-to-back pairs. The goal is shards >= 1.0x
the folder.

    python benchmarks/data_throughput.py                      # 2000 images of 256 px, 64 px crops, 2 workers
    python benchmarks/data_throughput.py --n 500 --repeats 1  # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from contrastlab.cli.shard import run_shard
from contrastlab.config import CONF_DIR
from contrastlab.data import ImageFolderDataModule, SimCLRAugment
from contrastlab.data.shards import ImageShardsDataModule
from contrastlab.training.data_order import DataOrder

TARGET_RATIO = 1.0


def write_folder(root: Path, n: int, size: int, seed: int = 0) -> None:
    """``n`` JPEGs (quality 90) of smooth random colour fields with a bright disc, in 10 class folders."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        coeffs = rng.normal(size=(3, 4))
        field = np.stack([c[0] * np.sin(6 * xx + c[1]) + c[2] * np.cos(5 * yy + c[3]) for c in coeffs], axis=-1)
        cx, cy, r = rng.uniform(0.2, 0.8, 3) * (1, 1, 0.4)
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < r**2)[..., None]
        pixels = 128 + 50 * field + 60 * disc + rng.normal(0, 8, (size, size, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)


def epoch(loader) -> tuple[float, int]:
    """Seconds and images of one pass over ``loader``."""
    start, images = time.perf_counter(), 0
    for batch in loader:
        images += len(batch["label"])
    return time.perf_counter() - start, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="images (10 classes)")
    parser.add_argument("--size", type=int, default=256, help="side of the JPEG files")
    parser.add_argument("--image-size", type=int, default=64, help="decode and crop size")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard-mb", type=float, default=16.0, help="target shard size")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folder(root / "folder", args.n, args.size)
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            cfg = compose(
                "shard",
                overrides=[f"input={root / 'folder'}", f"output={root / 'shards'}", "val_fraction=0.1",
                           f"shard_size_mb={args.shard_mb}", "progress=false"],
            )  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):  # its own "wrote ... / train on them" lines
            shards = run_shard(cfg)["shards"]
        common = {"batch_size": args.batch, "num_workers": args.workers, "image_size": args.image_size, "seed": 0}
        augment = SimCLRAugment(args.image_size)
        sides = {
            "imagefolder": ImageFolderDataModule(
                data_dir=str(root / "folder"), val_fraction=0.1, augment=augment, **common
            ),
            "shards": ImageShardsDataModule(urls=shards["train"], val_urls=shards["val"], augment=augment, **common),
        }
        loaders = {}
        for name, dm in sides.items():
            order = DataOrder(seed=0)
            order.attach(dm)
            loaders[name] = dm.train_dataloader()
            epoch(loaders[name])  # warm-up: workers started, files cached
        times: dict[str, list[float]] = {name: [] for name in sides}
        images: dict[str, int] = {}
        for _ in range(args.repeats):
            for name, loader in loaders.items():
                seconds, images[name] = epoch(loader)
                times[name].append(seconds)

    print(
        f"data_throughput: {args.n} JPEGs of {args.size}x{args.size} px ({len(shards['train'])} train shards), "
        f"decoded to {args.image_size} px, 2 SimCLR views, batch {args.batch}, {args.workers} workers, "
        f"best of {args.repeats} epochs"
    )
    print(f"{'source':<12} {'images/epoch':>12} {'best img/s':>11} {'median img/s':>13}")
    rate = {}
    for name in sides:
        rate[name] = images[name] / min(times[name])
        median = images[name] / statistics.median(times[name])
        print(f"{name:<12} {images[name]:>12} {rate[name]:>11.0f} {median:>13.0f}")
    # each repeat runs the two back to back: their ratio is the least disturbed by a busy machine
    paired = [
        (images["shards"] / s) / (images["imagefolder"] / f)
        for s, f in zip(times["shards"], times["imagefolder"], strict=True)
    ]
    ratio = rate["shards"] / rate["imagefolder"]
    print(
        f"ratio shards/imagefolder: {ratio:.2f} best, {statistics.median(paired):.2f} median of paired epochs "
        f"(goal >= {TARGET_RATIO:.1f})"
    )


if __name__ == "__main__":
    main()
