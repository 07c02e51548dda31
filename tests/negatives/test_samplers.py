"""The P x K batch sampler: class balance, exact length, distinct batches per rank, DDP injection."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from contrastlab.data.samplers import PKBatchSampler


def labels_of(counts: dict[int, int]) -> torch.Tensor:
    return torch.tensor([c for c, n in counts.items() for _ in range(n)])


def test_every_batch_has_p_distinct_classes_with_k_items():
    labels = labels_of({0: 30, 1: 25, 2: 20, 3: 40, 4: 3})  # class 4 has fewer than k items
    sampler = PKBatchSampler(labels, batch_size=12, k=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(labels) // 12
    for batch in batches:
        counts = Counter(labels[batch].tolist())
        assert len(counts) == 3 and set(counts.values()) == {4}
    for batch in batches:  # items of a class with >= k items are not repeated within a batch
        for c in set(labels[batch].tolist()) - {4}:
            items = [i for i in batch if labels[i] == c]
            assert len(set(items)) == len(items)


def test_classes_and_items_are_visited_evenly():
    labels = labels_of({c: 20 for c in range(5)})
    sampler = PKBatchSampler(labels, batch_size=8, k=4)  # p = 2
    seen = Counter(i for b in sampler for i in b)
    per_class = Counter(labels[i].item() for b in sampler for i in b)
    assert max(per_class.values()) - min(per_class.values()) <= 8  # within two batch slots
    assert len(seen) >= 0.9 * len(labels)


def test_length_is_exact_with_and_without_drop_last():
    labels = labels_of({c: 13 for c in range(6)})  # 78 items
    for drop_last, expected in ((True, 78 // 24), (False, math.ceil(78 / 24))):
        for rank in (0, 1):
            s = PKBatchSampler(labels, batch_size=12, k=3, drop_last=drop_last, num_replicas=2, rank=rank)
            assert len(s) == expected == len(list(s))


def test_ranks_get_distinct_batches_of_one_global_sequence():
    labels = labels_of({c: 16 for c in range(8)})
    ranks = [PKBatchSampler(labels, batch_size=8, k=2, num_replicas=3, rank=r, seed=7) for r in range(3)]
    per_rank = [list(s) for s in ranks]
    glob = ranks[0].global_batches()
    for r in range(3):
        assert per_rank[r] == glob[r::3]
    flat = [tuple(b) for rb in per_rank for b in rb]
    assert len(set(flat)) == len(flat)


def test_epochs_reshuffle_and_are_reproducible():
    labels = labels_of({c: 10 for c in range(4)})
    s = PKBatchSampler(labels, batch_size=4, k=2, seed=1)
    first = list(s)
    assert list(s) == first
    s.set_epoch(1)
    assert list(s) != first
    s2 = PKBatchSampler(labels, batch_size=4, k=2, seed=1)
    s2.sampler.set_epoch(1)  # what Lightning calls (batch_sampler.sampler.set_epoch)
    assert list(s2) == list(s)


def test_unlabelled_items_are_never_drawn():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, -1, -1, -1, -1])
    s = PKBatchSampler(labels, batch_size=4, k=2)
    assert len(s) == 6 // 4
    assert all(labels[i] >= 0 for b in s for i in b)


def test_bad_settings_name_the_key():
    labels = labels_of({0: 10, 1: 10})
    with pytest.raises(ValueError, match="data.batch_sampler.k"):
        PKBatchSampler(labels, batch_size=10, k=4)
    with pytest.raises(ValueError, match="data.batch_size"):
        PKBatchSampler(labels, batch_size=12, k=4)  # 3 classes needed, 2 exist
    with pytest.raises(ValueError, match="remove data.batch_sampler"):
        PKBatchSampler(torch.full((8,), -1), batch_size=4, k=2)
    with pytest.raises(ValueError, match="data.batch_size"):
        PKBatchSampler(labels, batch_size=40, k=20)  # no full batch


class _Items(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 48

    def __getitem__(self, i: int) -> int:
        return i


def test_lightning_injects_its_distributed_sampler_and_we_take_rank_and_world_from_it():
    """What Lightning does under DDP with use_distributed_sampler=true: re-instantiate the batch
    sampler with ``sampler=DistributedSampler(...)``; the P x K sampler must keep its own batches and
    take the rank and world size from it."""
    labels = labels_of({c: 12 for c in range(4)})
    with _replace_dunder_methods(BatchSampler):  # how Lightning records the constructor's arguments
        loader = DataLoader(_Items(), batch_sampler=PKBatchSampler(labels=labels, batch_size=8, k=2, drop_last=True))
    new = _update_dataloader(loader, DistributedSampler(_Items(), num_replicas=2, rank=1, shuffle=False))
    bs = new.batch_sampler
    assert isinstance(bs, PKBatchSampler) and (bs.num_replicas, bs.rank) == (2, 1)
    assert len(new) == 48 // 16
    assert list(bs) == bs.global_batches()[1::2]
    bs.sampler.set_epoch(3)
    assert bs.epoch == 3
