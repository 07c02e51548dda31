"""A batch sampler that never puts two items sharing a key (same caption, same image, same text)
into one batch: in a contrastive batch such a pair would be a false negative.

Each epoch: shuffle the items (seeded by ``seed + epoch``), then fill batches greedily in that order;
an item whose keys clash with the current batch is deferred and tried first for the next batch, so
every item is served exactly once per epoch. With ``drop_last`` only full batches are kept (deferred
stragglers may end up in a dropped tail). ``__len__`` runs the same deterministic plan, so it is exact.

Distributed: rank ``r`` of ``W`` takes batches ``r, r + W, ...`` of the plan, cut to the same count on
every rank. Under Lightning DDP nothing needs configuring: Lightning re-creates the batch sampler with
its ``DistributedSampler`` as ``sampler``, whose ``num_replicas``, ``rank`` and ``epoch`` (set by
Lightning every epoch) are used; the order itself still comes from this class. Without a ``sampler``
the world is read from ``torch.distributed`` and the epoch advances after every iteration.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, Sampler

from contrastlab import distributed


class NoDuplicatesBatchSampler(BatchSampler):
    """Args:
    keys: per dataset item, one hashable or a tuple of hashables (e.g. ``(("image", 3), ("text", "a cat"))``);
        two items clash when they share any key.
    batch_size: items per batch (per process).
    drop_last: drop batches smaller than ``batch_size``.
    shuffle: shuffle the order each epoch (otherwise dataset order).
    seed: base seed; the epoch is added.
    sampler: optional ``DistributedSampler`` (Lightning injects it) giving world size, rank and epoch.
    num_replicas, rank: override the distributed world.
    """

    def __init__(
        self,
        keys: Sequence[Hashable | tuple[Hashable, ...]],
        batch_size: int,
        drop_last: bool = True,
        shuffle: bool = True,
        seed: int = 0,
        sampler: Sampler | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}.")
        self.keys = [k if isinstance(k, tuple) else (k,) for k in keys]
        self.batch_size, self.drop_last, self.shuffle, self.seed = batch_size, drop_last, shuffle, seed
        self.sampler = sampler
        self.num_replicas = num_replicas if num_replicas is not None else getattr(sampler, "num_replicas", None)
        self.rank = rank if rank is not None else getattr(sampler, "rank", None)
        self.epoch = 0
        self._in_progress: int | None = None
        self._cache: dict[tuple[int, int, int], list[list[int]]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._in_progress = epoch, None

    def _current_epoch(self) -> int:
        if self.sampler is not None and hasattr(self.sampler, "epoch"):
            return int(self.sampler.epoch)  # type: ignore[attr-defined]
        return self._in_progress if self._in_progress is not None else self.epoch

    def _world(self) -> tuple[int, int]:
        world = self.num_replicas if self.num_replicas is not None else distributed.world_size()
        rank = self.rank if self.rank is not None else distributed.rank()
        return world, rank

    def plan(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` (before splitting across ranks)."""
        n = len(self.keys)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        else:
            order = list(range(n))
        queue, batches = deque(order), []
        while queue:
            batch: list[int] = []
            used: set[Hashable] = set()
            deferred: list[int] = []
            while queue and len(batch) < self.batch_size:
                i = queue.popleft()
                if used.isdisjoint(self.keys[i]):
                    batch.append(i)
                    used.update(self.keys[i])
                else:
                    deferred.append(i)
            queue.extendleft(reversed(deferred))  # retried first in the next batch, in their order
            if len(batch) == self.batch_size or not self.drop_last:
                batches.append(batch)
        return batches

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch`` (cached)."""
        world, rank = self._world()
        key = (epoch, world, rank)
        if key not in self._cache:
            planned = self.plan(epoch)
            per_rank = len(planned) // world
            self._cache = {key: planned[rank::world][:per_rank]}
        return self._cache[key]

    def __iter__(self) -> Iterator[list[int]]:
        if self.sampler is not None and hasattr(self.sampler, "epoch"):
            yield from self.batches(int(self.sampler.epoch))  # type: ignore[attr-defined]
            return
        epoch = self.epoch
        self.epoch, self._in_progress = epoch + 1, epoch  # the next iteration is a new epoch
        yield from self.batches(epoch)
        self._in_progress = None

    def __len__(self) -> int:
        """Batches of the epoch being iterated, or else of the next one."""
        return len(self.batches(self._current_epoch()))
