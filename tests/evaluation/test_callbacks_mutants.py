"""Mutation-killing tests of ``contrastlab.evaluation.callbacks``: ``KNNMonitor`` against a naive weighted kNN
written with explicit loops, in one process and with ranks as threads (:func:`ranks.run_ranks`), where every rank
must log the numbers one process computes on the whole data; and its Lightning hooks with stand-in objects.

The embedding cache is replaced by stand-ins that hand out fixed features: ``split_shard`` gives each rank its
contiguous share of the train split, ``split_embeddings`` gives every row only when asked ``across_ranks``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from ranks import run_ranks
from torch import Tensor

from contrastlab import distributed
from contrastlab.data.base import DataCapabilities
from contrastlab.evaluation import callbacks
from contrastlab.evaluation.callbacks import KNNMonitor

Split = tuple[Tensor, Tensor]


class _DM(DataCapabilities):
    """A datamodule stand-in: fixed ``(features, labels)`` per split."""

    def __init__(self, splits: dict[str, Split], has_labels: bool = True) -> None:
        self.splits = splits
        self.has_labels = has_labels


def _share(x: Tensor, y: Tensor) -> Split:
    start, end = distributed.shard_bounds(len(x))
    return x[start:end], y[start:end]


def _fake_split_shard(pl_module: Any, dm: _DM, split: str) -> Split:
    assert pl_module is not None, "the module that embeds is passed on"
    return _share(*dm.splits[split])


def _fake_split_embeddings(pl_module: Any, dm: _DM, split: str, across_ranks: bool = False) -> Split:
    assert pl_module is not None, "the module that embeds is passed on"
    x, y = dm.splits[split]
    if distributed.is_distributed() and not across_ranks:
        return _share(x, y)
    return x, y


@pytest.fixture(autouse=True)
def _stand_in_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(callbacks, "split_shard", _fake_split_shard)
    monkeypatch.setattr(callbacks, "split_embeddings", _fake_split_embeddings)


def _naive_knn(tr_x: Tensor, tr_y: Tensor, va_x: Tensor, va_y: Tensor, k: int, t: float) -> tuple[float, float]:
    """Top-1 / top-5 of a weighted kNN by loops: the k most cosine-similar bank items, class score sum exp(s/T)."""
    num_classes = int(max(tr_y.max(), va_y.max())) + 1
    top1 = top5 = 0
    for q in range(len(va_x)):
        sims = []
        for i in range(len(tr_x)):
            a, b = va_x[q].double(), tr_x[i].double()
            sims.append((float(a @ b / (a.norm() * b.norm())), int(tr_y[i])))
        sims.sort(key=lambda s: -s[0])
        scores = [0.0] * num_classes
        for s, c in sims[:k]:
            scores[c] += math.exp(s / t)
        order = sorted(range(num_classes), key=lambda c: -scores[c])
        top1 += int(order[0] == int(va_y[q]))
        # classes never among the neighbours tie at 0: ranked like torch.topk does, to compare like with like
        top5 += int(
            int(va_y[q]) in torch.tensor(scores, dtype=torch.float32).topk(min(5, num_classes)).indices.tolist()
        )
    return top1 / len(va_x), top5 / len(va_x)


def _data(n_train: int, n_val: int, classes: int, seed: int) -> dict[str, Split]:
    g = torch.Generator().manual_seed(seed)
    tr_y = torch.randint(0, classes, (n_train,), generator=g)
    va_y = torch.randint(0, classes, (n_val,), generator=g)
    centres = torch.randn(classes, 6, generator=g)
    tr_x = centres[tr_y] + 1.5 * torch.randn(n_train, 6, generator=g)
    va_x = centres[va_y] + 1.5 * torch.randn(n_val, 6, generator=g)
    return {"train": (tr_x, tr_y), "val": (va_x, va_y)}


def _check_against_naive(out: dict[str, float], splits: dict[str, Split], k: int, t: float) -> None:
    ref1, ref5 = _naive_knn(*splits["train"], *splits["val"], k, t)
    assert set(out) == {"val/knn_top1", "val/knn_top5"}
    assert out["val/knn_top1"] == pytest.approx(ref1, abs=1e-6)
    assert out["val/knn_top5"] == pytest.approx(ref5, abs=1e-6)


def _check_ranks_against_one_process(splits: dict[str, Split], k: int, t: float, world: int) -> dict[str, float]:
    """compute() in one process equals the loop reference, and every one of ``world`` ranks (threads) returns those
    numbers too; the single-process numbers."""
    single = KNNMonitor(k=k, temperature=t).compute(SimpleNamespace(), _DM(splits))
    _check_against_naive(single, splits, k, t)
    for out in run_ranks(lambda r: KNNMonitor(k=k, temperature=t).compute(SimpleNamespace(), _DM(splits)), world):
        assert out == pytest.approx(single, abs=1e-6)
    return single


@pytest.mark.parametrize(("k", "t"), [(3, 0.5), (9, 0.1), (40, 1.0)])
def test_compute_single_process_matches_naive_knn(k: int, t: float) -> None:
    """In one process compute() and score() give the loop reference's top-1 and top-5 (k, T respected)."""
    splits = _data(30, 25, 9, seed=k)
    monitor = KNNMonitor(k=k, temperature=t)
    _check_against_naive(monitor.compute(SimpleNamespace(), _DM(splits)), splits, k, t)
    _check_against_naive(monitor.score(*splits["train"], *splits["val"]), splits, k, t)


def test_score_top1_and_top5_exact_on_hand_made_data() -> None:
    """Hand-made bank: each query's nearest item decides top-1, top-5 counts the true class among 5 of 7."""
    tr_x = torch.eye(7)
    tr_y = torch.arange(7)
    # query 0 points at class 0 (right); query 1 at class 2 but is class 1 (top-1 wrong, still in top 5);
    # query 2 is class 6, pointing at 0, then 1..5 in turn, and 6 weakest of all (outside top 5)
    va_x = torch.tensor([[1.0, 0, 0, 0, 0, 0, 0], [0, 0.3, 1.0, 0, 0, 0, 0], [1.0, 0.5, 0.45, 0.4, 0.35, 0.3, 0.01]])
    va_y = torch.tensor([0, 1, 6])
    out = KNNMonitor(k=7, temperature=0.1).score(tr_x, tr_y, va_x, va_y)
    assert out == {"val/knn_top1": pytest.approx(1 / 3), "val/knn_top5": pytest.approx(2 / 3)}


@pytest.mark.parametrize(
    ("world", "n_train", "k", "t", "classes"),
    [(2, 30, 5, 0.5, 9), (3, 7, 5, 0.2, 8), (3, 40, 4, 1.0, 7), (4, 3, 6, 0.3, 7), (2, 70, 25, 0.5, 9)],
)
def test_compute_across_ranks_equals_one_process(world: int, n_train: int, k: int, t: float, classes: int) -> None:
    """Ranks as threads (parts smaller than k, empty parts when train items < ranks, and k = 25 above the
    neighbour search's default of 20): every rank returns
    the single-process numbers on the whole data, which equal the loop reference."""
    _check_ranks_against_one_process(_data(n_train, 21, classes, seed=world * 100 + n_train), k, t, world)


def test_compute_embeds_the_bank_as_shards_and_every_query_on_every_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """The train split is this rank's shard (the bank stays split) and the val split is asked for with
    ``across_ranks=True`` (every rank holds all queries; otherwise the ranks' neighbour lists would not line up)."""
    calls: list[tuple] = []

    def shard(pl_module: Any, dm: _DM, split: str) -> Split:
        calls.append(("shard", split))
        return _fake_split_shard(pl_module, dm, split)

    def embeddings(pl_module: Any, dm: _DM, split: str, across_ranks: bool = False) -> Split:
        calls.append(("embeddings", split, across_ranks))
        return _fake_split_embeddings(pl_module, dm, split, across_ranks)

    monkeypatch.setattr(callbacks, "split_shard", shard)
    monkeypatch.setattr(callbacks, "split_embeddings", embeddings)
    KNNMonitor(k=3).compute(SimpleNamespace(), _DM(_data(12, 6, 3, seed=0)))
    assert calls == [("shard", "train"), ("embeddings", "val", True)]


def test_compute_across_ranks_highest_class_only_in_one_part() -> None:
    """The class count is the maximum over every rank's bank part and the queries: the top class lives only in
    the last rank's train part; its items are near the queries, so dropping it changes the answer."""
    tr_x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.7, 0.7], [0.95, 0.05], [0.99, 0.02]])
    tr_y = torch.tensor([0, 1, 0, 1, 5, 5])
    va_x = torch.tensor([[1.0, 0.02], [0.0, 1.0], [0.98, 0.03]])
    va_y = torch.tensor([5, 1, 5])
    _check_ranks_against_one_process({"train": (tr_x, tr_y), "val": (va_x, va_y)}, 2, 0.05, 3)


def test_compute_across_ranks_counts_classes_of_the_bank_alone() -> None:
    """A class present only in the train parts (no query has it) still counts, and padded neighbours of parts
    smaller than k carry a class that exists even when the data has one class only."""
    tr_x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.9, 0.1], [0.2, 1.0], [0.5, 0.9]])
    bank_only = {"train": (tr_x, torch.tensor([0, 1, 3, 0, 1, 3])), "val": (tr_x[:3] + 0.05, torch.tensor([0, 1, 1]))}
    one_class = {
        "train": (tr_x[:3], torch.zeros(3, dtype=torch.long)),
        "val": (tr_x[3:], torch.zeros(3, dtype=torch.long)),
    }
    _check_ranks_against_one_process(bank_only, 2, 0.1, 3)
    single = _check_ranks_against_one_process(one_class, 5, 0.1, 2)
    assert single == {"val/knn_top1": 1.0, "val/knn_top5": 1.0}


def test_defaults() -> None:
    """Defaults: k = 20 neighbours, temperature 0.07, the baseline logged, nothing computed yet."""
    m = KNNMonitor()
    assert (m.k, m.temperature, m.log_init, m.init_value) == (20, 0.07, True, None)
    assert (KNNMonitor(log_init=False).log_init, KNNMonitor(k=3, temperature=0.2).k) == (False, 3)
    assert KNNMonitor(k=3, temperature=0.2).temperature == 0.2


class _Logger:
    def __init__(self) -> None:
        self.calls: list[tuple[dict, int]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.calls.append((dict(metrics), step))


class _Module:
    def __init__(self) -> None:
        self.logged: list[tuple[str, float, dict]] = []

    def log(self, name: str, value: float, **kw: Any) -> None:
        self.logged.append((name, value, kw))


def _trainer(dm: Any, sanity: bool = False, step: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        datamodule=dm, sanity_checking=sanity, global_step=step, loggers=[_Logger()], callback_metrics={}
    )


def _splits() -> dict[str, Split]:
    return _data(24, 16, 7, seed=3)


def test_enabled_conditions() -> None:
    """Enabled only for a DataCapabilities datamodule with labels, outside the sanity check."""
    m = KNNMonitor()
    assert m._enabled(_trainer(_DM(_splits()))) is True
    assert m._enabled(_trainer(_DM(_splits()), sanity=True)) is False
    assert m._enabled(_trainer(_DM(_splits(), has_labels=False))) is False
    assert m._enabled(_trainer(SimpleNamespace(has_labels=True, splits=_splits()))) is False


def test_on_train_start_logs_baseline_once() -> None:
    """At step 0 the top-1 of the starting weights is stored and logged as val/knn_top1_init, once."""
    splits = _splits()
    m = KNNMonitor(k=5, temperature=0.3)
    tr = _trainer(_DM(splits))
    m.on_train_start(tr, _Module())
    ref1, _ = _naive_knn(*splits["train"], *splits["val"], 5, 0.3)
    assert m.init_value == pytest.approx(ref1)
    assert tr.loggers[0].calls == [({"val/knn_top1_init": m.init_value}, 0)]
    assert float(tr.callback_metrics["val/knn_top1_init"]) == pytest.approx(ref1)
    tr2 = _trainer(_DM(splits))
    m.on_train_start(tr2, _Module())  # already set: nothing again
    assert tr2.loggers[0].calls == [] and tr2.callback_metrics == {}


@pytest.mark.parametrize(
    ("kw", "trainer_kw", "labels"),
    [
        ({"log_init": False}, {}, True),
        ({}, {"step": 1}, True),
        ({}, {"sanity": True}, True),
        ({}, {}, False),
    ],
)
def test_on_train_start_skips(kw: dict, trainer_kw: dict, labels: bool) -> None:
    """No baseline when disabled, on a resumed run (global_step > 0), in the sanity check or without labels."""
    m = KNNMonitor(**kw)
    tr = _trainer(_DM(_splits(), has_labels=labels), **trainer_kw)
    m.on_train_start(tr, _Module())
    assert m.init_value is None
    assert tr.loggers[0].calls == [] and tr.callback_metrics == {}


def test_on_validation_epoch_end_logs_both_numbers() -> None:
    """Each validation logs top-1 (on the progress bar) and top-5, unsynced, on every rank."""
    splits = _splits()
    m, mod = KNNMonitor(k=4, temperature=0.2), _Module()
    m.on_validation_epoch_end(_trainer(_DM(splits)), mod)
    ref1, ref5 = _naive_knn(*splits["train"], *splits["val"], 4, 0.2)
    opts = {"sync_dist": False, "rank_zero_only": False}
    assert [n for n, _, _ in mod.logged] == ["val/knn_top1", "val/knn_top5"]
    assert mod.logged[0][1] == pytest.approx(ref1) and mod.logged[1][1] == pytest.approx(ref5)
    assert mod.logged[0][2] == {"prog_bar": True, **opts}
    assert mod.logged[1][2] == {"prog_bar": False, **opts}


@pytest.mark.parametrize(("sanity", "labels"), [(True, True), (False, False)])
def test_on_validation_epoch_end_skips(sanity: bool, labels: bool) -> None:
    """Nothing is logged in the sanity check or for a datamodule without labels."""
    mod = _Module()
    KNNMonitor().on_validation_epoch_end(_trainer(_DM(_splits(), has_labels=labels), sanity=sanity), mod)
    assert mod.logged == []


def test_compute_across_ranks_k_above_default_from_one_part() -> None:
    """k = 25 (above the neighbour search's default of 20) with all 25 nearest items in rank 0's part: every
    rank still uses all 25 neighbours of that part, as one process does."""
    g = torch.Generator().manual_seed(7)
    near = torch.tensor([1.0, 0, 0, 0]) + 0.3 * torch.randn(30, 4, generator=g)
    far = torch.tensor([-1.0, 0, 0, 0]) + 0.3 * torch.randn(30, 4, generator=g)
    tr_y = torch.cat([torch.randint(0, 6, (30,), generator=g), torch.full((30,), 6)])  # far items: class 6
    va_x = torch.tensor([1.0, 0, 0, 0]) + 0.3 * torch.randn(12, 4, generator=g)
    va_y = torch.randint(0, 6, (12,), generator=g)
    _check_ranks_against_one_process({"train": (torch.cat([near, far]), tr_y), "val": (va_x, va_y)}, 25, 1.0, 2)
