"""Pins what the surviving mutants of ``contrastlab.evaluation.embed_cache`` changed.

Every result is compared with a naive reference (the split's loader embedded directly, in order, in eval mode,
without gradients); the distributed paths run with the ranks as threads (:func:`ranks.run_ranks`) and each
rank's share is compared with the rows the single-process computation gives it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from ranks import run_ranks
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler

from contrastlab.evaluation import embed_cache
from contrastlab.evaluation.embed_cache import (
    embed_across_ranks,
    embed_shard,
    shard_loader,
    split_embeddings,
    split_shard,
)

_ATTR = "_contrastlab_split_embeddings"


class _Items(Dataset):
    """``n`` items ``{"image": (3,) float, "label": int}``; item ``i`` is distinct from every other."""

    def __init__(self, n: int, offset: int = 0) -> None:
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        v = float(i + self.offset)
        return {"image": torch.tensor([v, v * v, 1.0]), "label": i + self.offset}


class _Stream(IterableDataset):
    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(_Items(4)[i] for i in range(4))


class _Data:
    """A datamodule stand-in: ``eval_train_dataloader`` over 10 items, ``val_dataloader`` over 5 others."""

    def __init__(self, batch_size: int = 4) -> None:
        self.batch_size = batch_size

    def eval_train_dataloader(self) -> DataLoader:
        return DataLoader(_Items(10), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Items(5, offset=100), batch_size=self.batch_size)


class _Model(L.LightningModule):
    """A linear encoder whose ``embed`` records its mode, grad state, input device and rows."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0]]))
            self.lin.bias.copy_(torch.tensor([0.5, -0.5]))
        self.seen: list[tuple[bool, bool, str, int]] = []

    def embed(self, x: Tensor) -> Tensor:
        self.seen.append((self.training, torch.is_grad_enabled(), x.device.type, x.shape[0]))
        if x.device.type == "meta":
            return torch.zeros(x.shape[0], 2)
        return self.lin(x) * 2.0

    def rows(self) -> int:
        return sum(s[3] for s in self.seen)


def _reference(loader: DataLoader) -> tuple[Tensor, Tensor]:
    """The naive embedding of ``loader``: every batch in order, a fresh identical model in eval mode, no grad."""
    model = _Model().eval()
    with torch.no_grad():
        feats = [model.lin(b["image"]) * 2.0 for b in loader]
        labels = [b["label"] for b in loader]
    return torch.cat(feats), torch.cat(labels)


def _in_trainer(model: _Model, step: int = 0) -> _Model:
    model._trainer = SimpleNamespace(global_step=step)  # type: ignore[assignment]
    return model


def _set_step(model: _Model, step: int) -> None:
    model._trainer.global_step = step  # type: ignore[union-attr]


# --- single process -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["train", "val"])
def test_split_embeddings_are_the_naive_embedding_in_eval_mode(split: str) -> None:
    """Both splits equal the direct embedding of their loader; eval mode and no grad in the pass, train mode
    restored; without a Trainer nothing is memoised (a second call embeds again)."""
    model, data = _Model(), _Data()
    model.train()
    loader = data.eval_train_dataloader() if split == "train" else data.val_dataloader()
    feats, labels = split_embeddings(model, data, split)
    ref_f, ref_l = _reference(loader)
    torch.testing.assert_close(feats, ref_f)
    assert torch.equal(labels, ref_l)
    assert feats.dtype == torch.float32 and model.training
    assert all(not training and not grad for training, grad, _, _ in model.seen)
    n = len(loader.dataset)
    assert model.rows() == n
    split_shard(model, data, split)
    split_embeddings(model, data, split)
    assert model.rows() == 3 * n
    assert _ATTR not in model.__dict__


def test_split_embeddings_send_the_input_to_the_modules_device() -> None:
    """The input goes to ``pl_module.device`` (here ``meta``, not where the parameters are)."""
    model = _Model()
    model._device = torch.device("meta")
    feats, labels = split_embeddings(model, _Data(), "val")
    assert {s[2] for s in model.seen} == {"meta"}
    assert feats.shape == (5, 2) and labels.tolist() == [100, 101, 102, 103, 104]


def test_bad_split_is_a_value_error_naming_the_splits() -> None:
    """An unknown split is refused with the list of known ones, by both checks."""
    msg = r"split must be one of \['train', 'val'\], got 'test'"
    with pytest.raises(ValueError, match=msg):
        split_embeddings(_Model(), _Data(), "test")
    with pytest.raises(ValueError, match=msg):
        embed_cache._split_loader(_Data(), "test")


def test_memo_is_once_per_step_per_split_and_drops_old_steps() -> None:
    """Within a Trainer each split is embedded once per global step (the same tensors returned), under the key
    ``(split, "all", step)``; a new step recomputes and forgets the entries of older steps; split_shard in one
    process is the same entry."""
    model, data = _in_trainer(_Model()), _Data()
    first = split_embeddings(model, data, "train")
    val = split_embeddings(model, data, "val")
    assert split_embeddings(model, data, "train") is first
    assert split_shard(model, data, "train") is first
    assert split_embeddings(model, data, "val") is val
    assert model.rows() == 15
    assert set(model.__dict__[_ATTR]) == {("train", "all", 0), ("val", "all", 0)}
    _set_step(model, 1)
    again = split_embeddings(model, data, "train")
    assert again is not first and model.rows() == 25
    torch.testing.assert_close(again[0], first[0])
    assert set(model.__dict__[_ATTR]) == {("train", "all", 1)}
    assert split_embeddings(model, data, "val") is not val
    assert set(model.__dict__[_ATTR]) == {("train", "all", 1), ("val", "all", 1)}
    assert model.rows() == 30


# --- shard_loader ---------------------------------------------------------------------------------------------
def _shard_items(loader: Any, world: int) -> list[list[int] | None]:
    def rank_fn(rank: int) -> list[int] | None:
        shard = shard_loader(loader)
        return None if shard is None else [int(v) for b in shard for v in b["label"]]

    return run_ranks(rank_fn, world)


@pytest.mark.parametrize(
    ("n", "size", "world", "expected"),
    [
        (10, 4, 2, [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]]),  # whole batches, last clamped
        (5, 2, 3, [[0, 1], [2, 3], [4]]),  # as many batches as ranks: still whole batches
        (5, 4, 3, [[0], [1, 2], [3, 4]]),  # fewer batches than ranks: items
        (3, 4, 3, [[0], [1], [2]]),  # as many items as ranks
        (2, 4, 3, [None, None, None]),  # fewer items than ranks
    ],
)
def test_shard_loader_splits_whole_batches_else_items(n: int, size: int, world: int, expected: list) -> None:
    """Each rank's share is a contiguous run of whole batches (of items when batches are too few, None when
    items are too few); the shares concatenate to the loader's order."""
    assert _shard_items(DataLoader(_Items(n), batch_size=size), world) == expected


def test_shard_loader_refuses_what_it_cannot_split_and_is_identity_in_one_process() -> None:
    """A shuffling loader, an iterable dataset, no batch size, a plain list: None under DDP; in a single
    process the loader itself."""
    plain = DataLoader(_Items(8), batch_size=2)
    assert shard_loader(plain) is plain
    batches = list(plain)
    loaders = [
        DataLoader(_Items(8), batch_size=2, shuffle=True),
        DataLoader(_Stream(), batch_size=2),
        DataLoader(_Items(8), batch_size=None),
    ]

    def rank_fn(rank: int) -> list[Any]:
        return [shard_loader(x) for x in [*loaders, batches]]

    assert run_ranks(rank_fn) == [[None] * 4, [None] * 4]


def test_shard_loader_keeps_the_loaders_settings() -> None:
    """The share keeps batch size, collation, workers (with their context and prefetch), pinning, drop_last,
    timeout and worker init; its sampler reads in order."""

    def collate(items: list) -> dict[str, Any]:
        return {"image": torch.stack([i["image"] for i in items]), "label": torch.tensor([i["label"] for i in items])}

    def init(worker: int) -> None:
        return None

    loader = DataLoader(
        _Items(12),
        batch_size=3,
        num_workers=2,
        collate_fn=collate,
        pin_memory=True,
        drop_last=True,
        timeout=7.0,
        worker_init_fn=init,
        multiprocessing_context="spawn",
        prefetch_factor=3,
    )

    def rank_fn(rank: int) -> tuple:
        s = shard_loader(loader)
        assert s is not None
        return (
            s.batch_size,
            s.collate_fn,
            s.num_workers,
            s.pin_memory,
            s.drop_last,
            s.timeout,
            s.worker_init_fn,
            s.multiprocessing_context,
            s.prefetch_factor,
            isinstance(s.sampler, SequentialSampler),
            list(s.dataset.indices),
        )

    r0, r1 = run_ranks(rank_fn)
    assert r0[:6] == (3, collate, 2, True, True, 7.0) and r0[6] is init
    assert r0[7] is not None and r0[7].get_start_method() == "spawn"
    assert r0[8] == 3 and r0[9]
    assert r0[10] == [0, 1, 2, 3, 4, 5] and r1[10] == [6, 7, 8, 9, 10, 11]

    one_worker = DataLoader(_Items(12), batch_size=3, num_workers=1, multiprocessing_context="spawn", prefetch_factor=5)

    def one_worker_fn(rank: int) -> tuple:
        s = shard_loader(one_worker)
        assert s is not None
        return s.num_workers, s.multiprocessing_context, s.prefetch_factor

    for workers, context, prefetch in run_ranks(one_worker_fn):  # a single worker keeps them too
        assert workers == 1 and context is not None and context.get_start_method() == "spawn" and prefetch == 5


# --- embed_shard ----------------------------------------------------------------------------------------------
def test_embed_shard_partitions_the_rows_whether_or_not_the_loader_splits() -> None:
    """Each rank's rows are its share of the single-process embedding: whole batches for a splittable loader
    (embedding only those), rows of the whole embedding for one that cannot split; keyword options and the
    device reach embed_loader."""
    split = DataLoader(_Items(10), batch_size=4)
    shuffled_free = [{"x": b["image"], "label": b["label"]} for b in split]  # a list: cannot split
    ref_f, ref_l = _reference(split)
    single = embed_shard(_Model().embed, split)
    torch.testing.assert_close(single[0], ref_f)

    def rank_fn(rank: int) -> tuple:
        model = _Model()
        a = embed_shard(model.embed, split)
        rows_a = model.rows()
        b = embed_shard(model.embed, shuffled_free, "cpu", key="x", fields=("label",))
        meta = _Model()
        c = embed_shard(meta.embed, split, "meta")
        d = embed_shard(meta.embed, shuffled_free, torch.device("meta"), key="x")
        assert len(embed_shard(model.embed, split, fields=())) == 1
        return a, rows_a, b, c, d, {s[2] for s in meta.seen}

    (a0, n0, b0, c0, d0, dev0), (a1, n1, b1, c1, d1, dev1) = run_ranks(rank_fn)
    torch.testing.assert_close(a0[0], ref_f[:4])
    torch.testing.assert_close(a1[0], ref_f[4:])
    assert a0[1].tolist() == list(range(4)) and a1[1].tolist() == list(range(4, 10))
    assert (n0, n1) == (4, 6)
    torch.testing.assert_close(b0[0], ref_f[:5])
    torch.testing.assert_close(b1[0], ref_f[5:])
    assert torch.equal(b0[1], ref_l[:5]) and torch.equal(b1[1], ref_l[5:])
    assert c0[1].tolist() == list(range(4)) and d1[1].tolist() == [5, 6, 7, 8, 9]
    assert d0[0].shape == (5, 2) and c1[0].shape == (6, 2)
    assert dev0 == dev1 == {"meta"}


# --- embed_across_ranks -------------------------------------------------------------------------------------
def _captioned(loader: DataLoader) -> list[dict[str, Any]]:
    """The batches of ``loader`` with the input under ``"x"`` and a caption (a list of strings) per row."""
    return [{"x": b["image"], "label": b["label"], "caption": [f"item {int(i)}" for i in b["label"]]} for b in loader]


def test_embed_across_ranks_is_the_single_process_embedding() -> None:
    """In one process it is embed_loader with every option passed on; under DDP each rank embeds only its share
    of a splittable loader and every rank gets all rows in order (tensor fields and lists of strings alike); a
    loader that cannot be split is embedded whole by every rank and returned as is, not gathered twice."""
    split = DataLoader(_Items(10), batch_size=4)
    ref_f, ref_l = _reference(split)
    captions = [f"item {i}" for i in range(10)]
    unsplittable = _captioned(split)  # a list of batches: no sampler to split

    def run(model: _Model, loader: Any) -> tuple:
        return embed_across_ranks(model.embed, loader, None, key="x", fields=("label", "caption"))

    single = run(_Model(), unsplittable)
    torch.testing.assert_close(single[0], ref_f)
    assert torch.equal(single[1], ref_l) and single[2] == captions
    plain = embed_across_ranks(_Model().embed, split)
    assert len(plain) == 2 and torch.equal(plain[1], ref_l)

    class _Captions(Dataset):
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {**_Items(10)[i], "x": _Items(10)[i]["image"], "caption": f"item {i}"}

    splittable = DataLoader(_Captions(), batch_size=4)

    def rank_fn(rank: int) -> tuple:
        model = _Model()
        a = run(model, splittable)
        rows_a = model.rows()
        whole = _Model()
        b = run(whole, unsplittable)
        meta = _Model()
        embed_across_ranks(meta.embed, split, "meta")
        return a, rows_a, b, whole.rows(), {s[2] for s in meta.seen}

    for rank, (a, rows_a, b, rows_b, devices) in enumerate(run_ranks(rank_fn)):
        for out in (a, b):
            assert len(out) == 3
            torch.testing.assert_close(out[0], ref_f)
            assert torch.equal(out[1], ref_l) and out[2] == captions
        assert rows_a == (4, 6)[rank] and rows_b == 10
        assert devices == {"meta"}


# --- the distributed paths of split_embeddings and split_shard ----------------------------------------------------
@pytest.mark.parametrize("split", ["train", "val"])
def test_split_embeddings_and_shards_under_ddp(split: str) -> None:
    """Under DDP: ``across_ranks`` gathers the shares (each rank embeds only its own) to the single-process
    result; the default embeds the whole split on each rank, reusing a gathered entry of the step; split_shard
    is this rank's share, memoised under ``(split, "shard", step)``; the module's device is used."""
    data = _Data()
    loader = data.eval_train_dataloader() if split == "train" else data.val_dataloader()
    ref_f, ref_l = _reference(loader)
    n = len(ref_l)

    def rank_fn(rank: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        plain = _Model()
        out["local"] = split_embeddings(plain, data, split)
        out["local_rows"] = plain.rows()
        model = _in_trainer(_Model())
        out["local_memo"] = split_embeddings(model, data, split)
        out["local_memo_rows"] = model.rows()
        assert split_embeddings(model, data, split) is out["local_memo"]
        out["keys_local"] = set(model.__dict__[_ATTR])
        _set_step(model, 1)
        out["all"] = split_embeddings(model, data, split, across_ranks=True)
        out["all_rows"] = model.rows() - out["local_memo_rows"]
        out["reused"] = split_embeddings(model, data, split) is out["all"]
        out["keys_all"] = set(model.__dict__[_ATTR])
        out["shard"] = split_shard(model, data, split)
        out["shard_again"] = split_shard(model, data, split) is out["shard"]
        out["keys_shard"] = set(model.__dict__[_ATTR])
        out["total_rows"] = model.rows()
        meta = _Model()
        meta._device = torch.device("meta")
        split_embeddings(meta, data, split)
        split_embeddings(meta, data, split, across_ranks=True)
        split_shard(meta, data, split)
        out["devices"] = {s[2] for s in meta.seen}
        return out

    results = run_ranks(rank_fn)
    shares = [(0, 4), (4, 10)] if split == "train" else [(0, 4), (4, 5)]
    for rank, out in enumerate(results):
        for name in ("local", "local_memo", "all"):
            torch.testing.assert_close(out[name][0], ref_f)
            assert torch.equal(out[name][1], ref_l)
        assert out["local_rows"] == out["local_memo_rows"] == n
        assert out["keys_local"] == {(split, "local", 0)}
        start, end = shares[rank]
        assert out["all_rows"] == end - start
        assert out["reused"]
        assert out["keys_all"] == {(split, "all", 1)}
        torch.testing.assert_close(out["shard"][0], ref_f[start:end])
        assert torch.equal(out["shard"][1], ref_l[start:end])
        assert out["shard_again"]
        assert out["keys_shard"] == {(split, "all", 1), (split, "shard", 1)}
        assert out["total_rows"] == n + 2 * (end - start)
        assert out["devices"] == {"meta"}


def test_split_shard_under_ddp_refuses_a_bad_split() -> None:
    """The distributed split_shard checks the split too (through the loader lookup)."""

    def rank_fn(rank: int) -> None:
        split_shard(_Model(), _Data(), "test")

    with pytest.raises(ValueError, match=r"split must be one of \['train', 'val'\], got 'test'"):
        run_ranks(rank_fn)
