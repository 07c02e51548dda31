"""Training throughput: SimCLR with a ResNet-18 (CIFAR stem) on CIFAR-sized random images, images/s and peak memory.

Three ways to train the same thing for ``--steps`` timed optimizer steps (after ``--warmup`` untimed ones):

* ``contrastlab`` — ``experiment=simclr_cifar10`` with ``trainer=gpu`` (bf16, channels-last, the augmentation
  on the device, pinned prefetching loaders; ``trainer=cpu`` without CUDA) through Lightning, with the NaN
  guard (the step's one host synchronisation) and the resumable data order, as ``contrastlab-train`` runs it;
* ``bare`` — a plain PyTorch loop: the same encoder, head, augmentation (on the device when contrastlab's is),
  optimizer and precision, NT-Xent written directly, no callbacks: what the framework costs;
* ``lightly`` — lightly's recipe (its ``SimCLRTransform`` per image in the loader workers, its projection head
  and ``NTXentLoss``) on the same backbone in the same plain loop, when ``lightly`` is installed.

The images are random ``uint8`` CIFAR-sized images held in memory (what is measured is the training step and
the augmentation, not decoding). Peak memory is CUDA's peak allocation during the timed steps (on the CPU:
the process's peak resident memory so far).

    python benchmarks/gpu_throughput.py                  # on a GPU: batch 512, 8 workers, 50 steps
    python benchmarks/gpu_throughput.py --compile        # torch.compile the encoders too
    python benchmarks/gpu_throughput.py --toy            # any machine: 3 tiny steps on the CPU (the tests run it)
"""

from __future__ import annotations

import argparse
import logging
import resource
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from contrastlab import api
from contrastlab.config import build
from contrastlab.data.base import ContrastiveDataModule
from contrastlab.training.data_order import DataOrder
from contrastlab.training.reliability import NonFiniteGuard


# --------------------------------------------------------------------------------------------- set-up
class RandomImages(ContrastiveDataModule):
    """CIFAR-sized random uint8 images with random labels, in memory; the validation split is unused."""

    def __init__(self, images: Tensor, **kwargs: Any) -> None:
        super().__init__(image_size=images.shape[-1], channels=3, num_classes=10, **kwargs)
        self.images, self.labels = images, torch.randint(0, 10, (len(images),), generator=torch.Generator())

    def load_splits(self) -> tuple[Dataset, Dataset]:
        return TensorDataset(self.images, self.labels), TensorDataset(self.images[:64], self.labels[:64])


class Settings:
    def __init__(self, args: argparse.Namespace) -> None:
        self.cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.batch, self.steps, self.warmup, self.workers = args.batch, args.steps, args.warmup, args.workers
        self.compile = args.compile
        overrides = [
            "experiment=simclr_cifar10",
            f"trainer={'gpu' if self.cuda else 'cpu'}",
            f"data.batch_size={self.batch}",
            f"data.num_workers={self.workers}",
            "callbacks=none",
            f"objective.compile_encoder={str(self.compile).lower()}",
        ]
        self.cfg = api.compose(overrides, args.output_dir)
        self.precision = str(self.cfg.trainer.precision)
        self.autocast = torch.bfloat16 if self.precision.startswith("bf16") else None
        self.channels_last = bool(self.cfg.objective.get("channels_last", False))
        n = self.batch * (self.steps + self.warmup)
        self.images = torch.randint(0, 256, (n, 3, args.image_size, args.image_size), dtype=torch.uint8)
        self.mean = torch.tensor(list(self.cfg.data.mean)).view(1, 3, 1, 1)
        self.std = torch.tensor(list(self.cfg.data.std)).view(1, 3, 1, 1)

    def loader(self, dataset: Dataset) -> DataLoader:
        workers = self.workers
        return DataLoader(
            dataset,
            batch_size=self.batch,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            pin_memory=self.cuda,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def peak_mb(s: Settings) -> float:
    if s.cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def reset_peak(s: Settings) -> None:
    if s.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# --------------------------------------------------------------------------------------------- contrastlab
class StepTimer(L.Callback):
    """Seconds from the start of optimizer step ``warmup`` to the end of the last one (device synchronised)."""

    def __init__(self, s: Settings) -> None:
        self.s, self.start, self.end = s, 0.0, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.s.warmup:
            self.s.sync()
            reset_peak(self.s)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.s.warmup + self.s.steps:
            self.s.sync()
            self.end = time.perf_counter()


def run_contrastlab(s: Settings) -> tuple[float, float, float]:
    cfg = s.cfg
    L.seed_everything(0, verbose=False)
    augment = instantiate(cfg.augment)
    dm = RandomImages(
        s.images, batch_size=s.batch, num_workers=s.workers, augment=augment, mean=cfg.data.mean, std=cfg.data.std
    )
    order = DataOrder(cfg.seed)
    order.attach(dm)
    model = build.build_objective(cfg)
    timer = StepTimer(s)
    trainer = instantiate(
        cfg.trainer,
        max_steps=s.warmup + s.steps,
        max_epochs=-1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*build.build_callbacks(cfg, dm), NonFiniteGuard(), order, timer],
    )
    trainer.fit(model, datamodule=dm)
    loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
    return s.steps * s.batch / (timer.end - timer.start), peak_mb(s), loss


# --------------------------------------------------------------------------------------------- plain loops
def nt_xent(z: Tensor, temperature: float) -> Tensor:
    """NT-Xent of 2N rows (view 1 of N items, then view 2), written directly."""
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0] // 2
    logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, target)


class TwoViews(Dataset):
    """Two per-image augmented views of each image (``transform`` on a float (C, H, W) image, or on a PIL
    image with ``pil``), in the loader workers."""

    def __init__(self, images: Tensor, transform: Callable[[Any], Any], pil: bool = False) -> None:
        self.images, self.transform, self.pil = images, transform, pil

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Any:
        img = self.images[i]
        if self.pil:
            from PIL import Image

            views = self.transform(Image.fromarray(img.permute(1, 2, 0).numpy()))
            return views[0], views[1]
        x = img.float() / 255
        return self.transform(x), self.transform(x)


def train_loop(
    s: Settings, model: nn.Module, loss_fn: Callable[[Tensor], Tensor], batches: Iterator
) -> tuple[float, float, float]:
    """The plain loop: ``batches`` yields ``(view1, view2)`` on the device, normalised."""
    model.to(s.device, memory_format=torch.channels_last if s.channels_last else torch.preserve_format)
    if s.compile:
        model.compile()
    opt = torch.optim.SGD(model.parameters(), lr=0.24, momentum=0.9, weight_decay=5e-4)
    start, loss = 0.0, torch.zeros(())
    for step in range(s.warmup + s.steps):
        if step == s.warmup:
            s.sync()
            reset_peak(s)
            start = time.perf_counter()
        v1, v2 = next(batches)
        x = torch.cat([v1, v2])
        if s.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(s.device.type, dtype=s.autocast or torch.float32, enabled=s.autocast is not None):
            z = model(x)
        loss = loss_fn(z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    s.sync()
    return s.steps * s.batch / (time.perf_counter() - start), peak_mb(s), float(loss)


def forever(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def run_bare(s: Settings) -> tuple[float, float, float]:
    cfg = s.cfg
    torch.manual_seed(0)
    encoder = instantiate(cfg.encoder)
    model = nn.Sequential(encoder, instantiate(cfg.head, in_dim=encoder.out_dim))
    augment = instantiate(cfg.augment)
    mean, std = s.mean.to(s.device), s.std.to(s.device)

    def batches() -> Iterator:
        if augment.batched:  # on the device, per sample, like contrastlab's datamodule hook
            for (x,) in forever(s.loader(TensorDataset(s.images))):
                x = x.to(s.device, non_blocking=True).float().div_(255)
                yield (augment(x) - mean) / std, (augment(x) - mean) / std
        else:  # per image in the loader workers
            for v1, v2 in forever(s.loader(TwoViews(s.images, augment))):
                yield ((v.to(s.device, non_blocking=True) - mean) / std for v in (v1, v2))

    return train_loop(s, model, lambda z: nt_xent(z, float(cfg.loss.temperature)), batches())


def run_lightly(s: Settings) -> tuple[float, float, float] | None:
    """lightly's SimCLR recipe on the same backbone, or None when lightly is not installed (untested here: the
    project's machines do not have it)."""
    try:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead
        from lightly.transforms import SimCLRTransform
    except ImportError:
        return None
    cfg = s.cfg
    torch.manual_seed(0)
    encoder = instantiate(cfg.encoder)
    model = nn.Sequential(encoder, SimCLRProjectionHead(encoder.out_dim, 512, 128))
    transform = SimCLRTransform(
        input_size=s.images.shape[-1],
        cj_strength=0.5,
        gaussian_blur=0.0,
        normalize={"mean": list(cfg.data.mean), "std": list(cfg.data.std)},
    )
    criterion = NTXentLoss(temperature=float(cfg.loss.temperature))

    def batches() -> Iterator:
        for v1, v2 in forever(s.loader(TwoViews(s.images, transform, pil=True))):
            yield v1.to(s.device, non_blocking=True), v2.to(s.device, non_blocking=True)

    def loss_fn(z: Tensor) -> Tensor:
        z1, z2 = z.float().chunk(2)
        return criterion(z1, z2)

    return train_loop(s, model, loss_fn, batches())


# --------------------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=50, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (cuDNN autotuning, compilation)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--compile", action="store_true", help="torch.compile the encoders")
    p.add_argument("--output-dir", default="outputs/bench_gpu_throughput")
    p.add_argument("--toy", action="store_true", help="3 steps of 8 images on the CPU, no workers")
    args = p.parse_args()
    if args.toy:
        args.device, args.batch, args.steps, args.warmup, args.workers = "cpu", 8, 2, 1, 0
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    s = Settings(args)
    name = torch.cuda.get_device_name() if s.cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}; SimCLR ResNet-18 (CIFAR stem), {args.image_size} px random images")
    print(f"batch {s.batch}, {s.steps} timed steps after {s.warmup}, {s.workers} workers, precision {s.precision}, "
          f"channels_last {s.channels_last}, compile {s.compile}")  # fmt: skip
    peak = "peak MB (CUDA allocated)" if s.cuda else "peak MB (process RSS)"
    print(f"{'case':<12} {'images/s':>10} {peak:>26} {'last loss':>10}")
    results = {}
    for case, run in (("contrastlab", run_contrastlab), ("bare", run_bare), ("lightly", run_lightly)):
        out = run(s)
        if out is None:
            print(f"{case:<12} not installed (pip install lightly)")
            continue
        results[case] = out
        print(f"{case:<12} {out[0]:10.1f} {out[1]:26.0f} {out[2]:10.4f}")
        reset_peak(s)
    for other in ("bare", "lightly"):
        if other in results:
            print(f"images/s contrastlab/{other}: {results['contrastlab'][0] / results[other][0]:.2f}")


if __name__ == "__main__":
    main()
