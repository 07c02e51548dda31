"""Deterministic, resumable training data: a run killed mid-epoch and resumed sees the same batches
with the same augmentations as a run that was never interrupted.

* **Order.** Each pass over the training set is a function of ``(seed, epoch)`` only: samplers with
  ``set_epoch`` (``DistributedSampler``, the P x K and no-duplicates batch samplers) get the epoch;
  a ``RandomSampler`` (``shuffle=True``) draws its permutation under a global RNG seeded with
  ``mix64(seed, epoch)`` (forked: the global state is left as it was).
* **Augmentations.** Every item is read with the global RNGs (torch CPU, numpy, ``random``) seeded
  with ``mix64(seed, epoch, rank, batch, position)``, in the main process or a DataLoader worker
  alike, so an item's random views do not depend on what ran before it.
* **Resume.** :class:`DataOrder` (a callback) writes ``(epoch, batches done)`` into checkpoints; a
  resumed run's first pass skips the batches already trained on (index lists only: no image is
  read), so Lightning's restored step counters and the data line up. It also checkpoints the RNG
  states (torch CPU/CUDA, numpy, ``random``) and restores them when training starts.

:meth:`DataOrder.attach` wraps a datamodule's ``train_dataloader``; evaluation loaders are untouched.
A streaming loader (tar shards, :mod:`contrastlab.data.shards`) orders, seeds and skips its batches itself;
it only asks :meth:`DataOrder.next_pass` for ``(epoch, batches to skip)`` when a pass starts.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler

from contrastlab import distributed

_M64 = (1 << 64) - 1


def mix64(*values: int) -> int:
    """A 63-bit seed from integers (SplitMix64 chained over ``values``): well spread, the same in
    every process and Python version."""
    h = 0
    for v in values:
        z = (h ^ (int(v) & _M64)) + 0x9E3779B97F4A7C15 & _M64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _M64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _M64
        h = z ^ (z >> 31)
    return h >> 1


def seed_item(seed: int) -> None:
    """Seed the global CPU RNGs an item's augmentation draws from: torch, numpy and ``random``."""
    torch.random.default_generator.manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)


# ----------------------------------------------------------------------------------- RNG states
def rng_states() -> dict[str, Any]:
    """The global RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(cached),
        },
        "python": {"version": int(version), "state": [int(x) for x in mt], "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_states` (CUDA states only when CUDA is in use here)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# ---------------------------------------------------------------------------- dataset and batches
class SeededDataset(Dataset):
    """``dataset[(i, seed)]`` seeds the global RNGs with ``seed`` and returns ``base[i]``;
    ``dataset[i]`` is ``base[i]``. Other attributes are the base dataset's."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            i, seed = key
            seed_item(seed)
            return self.base[i]
        return self.base[key]

    def __getattr__(self, name: str) -> Any:
        if name == "base":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)


class SeededBatches:
    """The index sampler of a :class:`ResumableLoader`: ``batch_sampler``'s batches for this pass,
    after the pass's skipped batches, each index paired with its item seed."""

    def __init__(self, batch_sampler: Any, order: DataOrder) -> None:
        self.batch_sampler, self.order = batch_sampler, order

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, skip = self.order.next_pass()
        for s in (self.batch_sampler, getattr(self.batch_sampler, "sampler", None)):
            if s is not None and callable(getattr(s, "set_epoch", None)):
                s.set_epoch(epoch)
        seed, rank = self.order.seed, distributed.rank()
        with torch.random.fork_rng(devices=[]):  # a RandomSampler draws its permutation seed here
            torch.manual_seed(mix64(seed, epoch))
            batches = iter(self.batch_sampler)
            first = next(batches, None)
        if first is None:
            return
        for b, batch in enumerate(itertools.chain([first], batches)):
            if b >= skip:
                yield [(int(i), mix64(seed, epoch, rank, b, j)) for j, i in enumerate(batch)]


class ResumableLoader(DataLoader):
    """A DataLoader over a :class:`SeededDataset` whose batches come from :class:`SeededBatches`.
    Built like the loader it replaces, so Lightning can still inject a ``DistributedSampler``."""

    def __init__(self, dataset: Dataset, *args: Any, order: DataOrder, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        self.order = order

    @property
    def _index_sampler(self) -> Any:
        if not self._auto_collation:
            return self.sampler
        return SeededBatches(self.batch_sampler, self.order)

    def state_dict(self) -> dict[str, Any]:
        """Empty: the position is :class:`DataOrder`'s checkpoint state. (The method tells Lightning
        that this loader resumes mid-epoch.)"""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore here (see :meth:`state_dict`)."""


def resumable(loader: Any, order: DataOrder) -> Any:
    """``loader`` rebuilt as a :class:`ResumableLoader`; a stream that positions itself (a ``follow``
    method, e.g. :class:`~contrastlab.data.shard_stream.ShardLoader`) is told where each pass starts instead;
    anything else is returned unchanged."""
    if callable(getattr(loader, "follow", None)):
        loader.follow(order.next_pass)  # it asks for (epoch, batches to skip) whenever a pass starts
        return loader
    if type(loader) is not DataLoader or loader.batch_sampler is None or isinstance(loader.dataset, IterableDataset):
        return loader
    common: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device,
    }
    if loader.num_workers > 0:
        common["prefetch_factor"] = loader.prefetch_factor
    ds = SeededDataset(loader.dataset)
    bs = loader.batch_sampler
    if type(bs) is BatchSampler and isinstance(bs.sampler, RandomSampler | SequentialSampler):
        shuffle = isinstance(bs.sampler, RandomSampler)
        return ResumableLoader(
            ds, order=order, batch_size=bs.batch_size, shuffle=shuffle, drop_last=bs.drop_last, **common
        )
    return ResumableLoader(ds, order=order, batch_sampler=bs, **common)


# ------------------------------------------------------------------------------------ callback
class DataOrder(L.Callback):
    """Owns the training data order of a run (see the module docstring).

    Checkpoint state: ``epoch``, ``batches`` (training batches done in that epoch), ``epoch_batches``
    (batches per epoch, -1 when unknown) and ``rng`` (:func:`rng_states`)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self._trainer: L.Trainer | None = None
        self._pending: tuple[int, int] | None = None  # (epoch, batches to skip) of a resumed run
        self._rng: dict[str, Any] | None = None
        self._passes = 0

    def attach(self, datamodule: L.LightningDataModule) -> None:
        """Make ``datamodule.train_dataloader()`` return a :class:`ResumableLoader`."""
        original = datamodule.train_dataloader

        def train_dataloader() -> Any:
            return resumable(original(), self)

        datamodule.train_dataloader = train_dataloader  # type: ignore[method-assign]

    def next_pass(self) -> tuple[int, int]:
        """``(epoch, batches to skip)`` of the pass over the training set that starts now."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return pending
        if self._trainer is not None:
            return int(self._trainer.fit_loop.epoch_progress.current.processed), 0
        self._passes += 1
        return self._passes - 1, 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        t = self._trainer
        if t is None:
            return {}
        total = t.num_training_batches
        return {
            "epoch": int(t.current_epoch),
            "batches": int(t.fit_loop.epoch_loop.batch_progress.current.processed),
            "epoch_batches": int(total) if total != float("inf") else -1,
            "rng": rng_states(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        epoch, done, total = state_dict["epoch"], state_dict["batches"], state_dict["epoch_batches"]
        self._pending = (epoch, done) if total < 0 or done < total else (epoch + 1, 0)
        self._rng = state_dict.get("rng")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._rng is not None:  # after the loaders are set up, before the first batch is read
            set_rng_states(self._rng)
            self._rng = None
