"""Class-balanced P x K batches: every batch holds P distinct classes with K samples each, so every
anchor has K - 1 positives for label-based mining (Hermans et al. 2017)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import BatchSampler

from contrastlab import distributed


class _Epoch:
    """Holds the epoch for samplers whose ``set_epoch`` Lightning calls (``batch_sampler.sampler``)."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class PKBatchSampler(BatchSampler):
    """Batches of ``p`` distinct classes x ``k`` samples of each (``p = batch_size // k``).

    Each epoch (seeded by ``seed + epoch``) every class keeps a stream of its items in a fresh random
    order, and the classes themselves come from a stream of random permutations, so over an epoch
    classes and items are visited evenly; a class with fewer than ``k`` items repeats some of them.
    Unlabelled items (label < 0) are never drawn.

    Under DDP every rank generates the same global sequence of batches and takes every
    ``world_size``-th one, so ranks get distinct batches; ``len`` is exact: the labelled items
    divided by the global batch, rounded down (``drop_last``) or up.

    The world size and rank come from ``num_replicas``/``rank`` when given, else from a
    ``DistributedSampler`` that Lightning injects as ``sampler`` (``use_distributed_sampler=true``),
    else from :mod:`contrastlab.distributed`. Lightning calls ``set_epoch`` on ``self.sampler``.
    """

    def __init__(
        self,
        labels: Tensor | Sequence[int],
        batch_size: int | None = None,
        k: int = 4,
        p: int | None = None,
        drop_last: bool = True,
        sampler: object | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ) -> None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        if k < 1:
            raise ValueError(f"data.batch_sampler.k must be >= 1, got {k}.")
        if p is None:
            if batch_size is None or batch_size % k != 0:
                raise ValueError(
                    f"data.batch_size={batch_size} is not a multiple of data.batch_sampler.k={k}; "
                    "set data.batch_size to P * k."
                )
            p = batch_size // k
        self.classes = [c for c in torch.unique(labels).tolist() if c >= 0]
        if not self.classes:
            raise ValueError("the P x K batch sampler needs labels but the data has none; remove data.batch_sampler.")
        if not 1 <= p <= len(self.classes):
            raise ValueError(
                f"P x K batches need p={p} distinct classes but the data has {len(self.classes)}; "
                "lower data.batch_size or raise data.batch_sampler.k."
            )
        self.p, self.k, self.batch_size, self.drop_last, self.seed = p, k, p * k, drop_last, seed
        self.members = {c: torch.nonzero(labels == c).squeeze(1) for c in self.classes}
        self.num_labelled = sum(len(v) for v in self.members.values())
        self.sampler = sampler if sampler is not None and hasattr(sampler, "set_epoch") else _Epoch()
        self.num_replicas = num_replicas or getattr(sampler, "num_replicas", None) or distributed.world_size()
        self.rank = rank if rank is not None else getattr(sampler, "rank", None)
        self.rank = self.rank if self.rank is not None else distributed.rank()
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not in [0, {self.num_replicas})")
        global_batch = self.batch_size * self.num_replicas
        rounding = math.floor if drop_last else math.ceil
        self.num_batches = int(rounding(self.num_labelled / global_batch))
        if self.num_batches == 0:
            raise ValueError(
                f"{self.num_labelled} labelled items make no full global batch of {global_batch}; "
                "lower data.batch_size or set data.drop_last=false."
            )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]

    @property
    def epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def __len__(self) -> int:
        return self.num_batches

    def global_batches(self) -> list[list[int]]:
        """This epoch's batches for all ranks, in order (rank ``r`` gets ``[r::world_size]``)."""
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        streams: dict[int, list[int]] = {c: [] for c in self.classes}
        class_stream: list[int] = []
        batches = []
        for _ in range(self.num_batches * self.num_replicas):
            chosen: list[int] = []
            deferred: list[int] = []
            while len(chosen) < self.p:
                if not class_stream:
                    class_stream = [self.classes[i] for i in torch.randperm(len(self.classes), generator=gen)]
                c = class_stream.pop(0)
                (deferred if c in chosen else chosen).append(c)
            class_stream = deferred + class_stream
            batch = []
            for c in chosen:
                for _ in range(self.k):
                    if not streams[c]:
                        members = self.members[c]
                        streams[c] = members[torch.randperm(len(members), generator=gen)].tolist()
                    batch.append(streams[c].pop())
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.global_batches()[self.rank :: self.num_replicas]
