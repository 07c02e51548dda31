"""The no-duplicates batch sampler: no shared key inside a batch, every item once, exact __len__."""

from __future__ import annotations

import random

import pytest
from torch.utils.data import DataLoader

from contrastlab.data.no_duplicates import NoDuplicatesBatchSampler


def _keys(n=203, n_captions=40, seed=0):
    rng = random.Random(seed)
    return [(("image", i // 3), ("text", f"caption {rng.randrange(n_captions)}")) for i in range(n)]


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("batch_size", [1, 8, 16])
def test_batches_have_no_duplicates_and_len_is_exact(drop_last, batch_size):
    keys = _keys()
    sampler = NoDuplicatesBatchSampler(keys, batch_size, drop_last=drop_last, seed=3)
    for epoch in range(3):
        expected_len = len(sampler)
        batches = list(sampler)
        assert len(batches) == expected_len, epoch
        seen = [i for b in batches for i in b]
        assert len(seen) == len(set(seen))  # nobody twice in an epoch
        for b in batches:
            flat = [k for i in b for k in keys[i]]
            assert len(flat) == len(set(flat))  # no shared key within a batch
            assert len(b) == batch_size if drop_last else 1 <= len(b) <= batch_size
        if not drop_last:
            assert sorted(seen) == list(range(len(keys)))  # every item served exactly once
        else:
            # only the few stragglers that could not fill a last batch are dropped
            assert len(keys) - len(seen) < 2 * batch_size + 3


def test_epochs_differ_and_are_reproducible():
    keys = _keys()
    a = NoDuplicatesBatchSampler(keys, 8, seed=1)
    first, second = list(a), list(a)
    assert first != second  # a new order each epoch
    b = NoDuplicatesBatchSampler(keys, 8, seed=1)
    assert list(b) == first
    b.set_epoch(1)
    assert list(b) == second


def test_a_key_shared_by_all_items_gives_singleton_batches():
    sampler = NoDuplicatesBatchSampler(["same"] * 5, 4, drop_last=False, shuffle=False)
    assert list(sampler) == [[0], [1], [2], [3], [4]]
    assert len(NoDuplicatesBatchSampler(["same"] * 5, 4, drop_last=True)) == 0


def test_ranks_split_batches_evenly():
    keys = _keys(n=301)
    full = NoDuplicatesBatchSampler(keys, 8, seed=2, num_replicas=1, rank=0)
    plan = full.plan(0)
    parts = [NoDuplicatesBatchSampler(keys, 8, seed=2, num_replicas=3, rank=r) for r in range(3)]
    lens = [len(p) for p in parts]
    assert len(set(lens)) == 1 and lens[0] == len(plan) // 3
    got = [list(p) for p in parts]
    for r in range(3):
        assert got[r] == plan[r::3][: lens[0]]


def test_works_as_a_dataloader_batch_sampler():
    keys = _keys(n=50)
    loader = DataLoader(list(range(50)), batch_sampler=NoDuplicatesBatchSampler(keys, 5, seed=0))
    assert len(loader) == len(list(loader))


def test_lightning_injects_its_distributed_sampler():
    """What Lightning does under DDP: re-create the batch sampler with a DistributedSampler."""
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler
    from torch.utils.data.distributed import DistributedSampler

    keys = _keys(n=120)
    data = list(range(120))
    with _replace_dunder_methods(BatchSampler):  # Lightning records the init arguments like this
        loader = DataLoader(data, batch_sampler=NoDuplicatesBatchSampler(keys=keys, batch_size=8, seed=4))
    plan = NoDuplicatesBatchSampler(keys, 8, seed=4, num_replicas=1, rank=0)
    for rank in (0, 1):
        dist = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=0)
        updated = _update_dataloader(loader, dist)
        bs = updated.batch_sampler
        assert isinstance(bs, NoDuplicatesBatchSampler) and bs.sampler is dist
        for epoch in (0, 3):
            dist.set_epoch(epoch)  # Lightning calls set_epoch on batch_sampler.sampler
            batches = plan.plan(epoch)
            expected = batches[rank::2][: len(batches) // 2]
            assert len(updated) == len(expected)
            assert [b.tolist() for b in updated] == expected
