"""Pins what the surviving mutants of ``contrastlab.negatives.ann`` and ``contrastlab.negatives.text_mining`` changed.

The ANN mining is compared with a naive per-item loop in float64 (:func:`reference`): each item's ``rank_max``
nearest other items in rank order, each flagged as a valid negative or not; ``sampling="random"`` with the same
seeded draw, the statistics counted from those lists. faiss's GPU path is checked with a fake two-function faiss GPU
API, device placement on the ``meta`` device (which, like an accelerator, refuses to be mixed with CPU tensors).
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np
import pytest
import torch
from test_ann import _Source, cosines, data, reference
from torch import Tensor

from contrastlab import distributed
from contrastlab.errors import ConfigError
from contrastlab.negatives import AnnMined, MinedNegativesDataset, mine_ann_negatives
from contrastlab.negatives.ann import _index, _random_negatives
from contrastlab.negatives.text_mining import check_window, positive_mask, select_negatives

META = torch.device("meta")
STAT_KEYS = {"ann/window_kept_fraction", "ann/random_fill_fraction", "ann/negative_similarity"}


def top_picks(ref: list[list[tuple[int, bool]]], m: int) -> list[list[int]]:
    """The first ``m`` valid negatives of each item, best rank first."""
    return [[j for j, ok in row if ok][:m] for row in ref]


def random_picks(ref: list[list[tuple[int, bool]]], m: int, seed: int) -> list[list[int]]:
    """The valid negatives of each item ordered by a uniform key, the first ``m`` (the documented random draw)."""
    n, rank_max = len(ref), len(ref[0])
    u = torch.rand(n, rank_max, generator=torch.Generator().manual_seed(seed)).tolist()
    out = []
    for i, row in enumerate(ref):
        cols = sorted((c for c, (_, ok) in enumerate(row) if ok), key=lambda c: u[i][c])
        out.append([row[c][0] for c in cols[:m]])
    return out


def check_table(table: Tensor, picks: list[list[int]], labels: Tensor | None) -> int:
    """``table`` starts with each item's ``picks``; the rest are random valid negatives; returns how many."""
    filled = 0
    for i, want in enumerate(picks):
        row = table[i].tolist()
        assert row[: len(want)] == want, i
        for j in row[len(want) :]:
            filled += 1
            assert j != i and (labels is None or int(labels[j]) != int(labels[i])), i
    return filled


def expected_stats(emb: Tensor, table: Tensor, ref: list[list[tuple[int, bool]]], rank_min: int) -> dict[str, float]:
    """The statistics counted naively: valid window entries, random fills, mean cosine of the served negatives."""
    n, m, rank_max = table.shape[0], table.shape[1], len(ref[0])
    kept = sum(ok for row in ref for _, ok in row)
    fills = sum(max(0, m - sum(ok for _, ok in row)) for row in ref)
    sims = cosines(emb)
    cos = [sims[i][j] for i in range(n) for j in table[i].tolist()]
    return {
        "ann/window_kept_fraction": kept / (n * (rank_max - rank_min + 1)),
        "ann/random_fill_fraction": fills / (n * m),
        "ann/negative_similarity": sum(cos) / len(cos),
    }


def assert_stats(stats: dict[str, float], want: dict[str, float]) -> None:
    assert set(stats) == STAT_KEYS
    for key, value in want.items():
        assert stats[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """A faiss with one GPU: records the indexes moved to it (and keeps searching them on the CPU)."""
    moved: list[Any] = []

    def to_gpus(index: Any) -> Any:
        moved.append(index)
        return index

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_gpus, raising=False)
    return moved


# --- _index ---------------------------------------------------------------------------------------------------------
def test_index_goes_to_the_gpu_when_faiss_has_one(fake_gpu: list[Any]) -> None:
    """With ``use_gpu`` and one GPU the exact inner-product index is moved to it; without ``use_gpu`` it is not."""
    index = _index(4, use_gpu=True)
    assert len(fake_gpu) == 1 and index is fake_gpu[0]
    assert isinstance(index, faiss.IndexFlatIP) and index.d == 4
    cpu = _index(3, use_gpu=False)
    assert len(fake_gpu) == 1 and isinstance(cpu, faiss.IndexFlatIP) and cpu.d == 3


def test_index_quiets_only_the_faiss_loader_logger() -> None:
    """faiss's CPU-feature probing (logger ``faiss.loader``) is raised to WARNING; the root logger is untouched."""
    loader, root = logging.getLogger("faiss.loader"), logging.getLogger()
    saved = loader.level, root.level
    try:
        loader.setLevel(logging.DEBUG)
        root.setLevel(logging.INFO)
        _index(3, use_gpu=False)
        assert loader.level == logging.WARNING and root.level == logging.INFO
    finally:
        loader.setLevel(saved[0])
        root.setLevel(saved[1])


def test_mining_uses_the_gpu_by_default_and_only_when_asked(fake_gpu: list[Any]) -> None:
    """``use_gpu`` defaults to True and is handed to the index (True: moved, False: not)."""
    emb, labels = data(n=20)
    mine_ann_negatives(emb, labels, rank_max=5, progress=False)
    assert len(fake_gpu) == 1
    mine_ann_negatives(emb, labels, rank_max=5, use_gpu=True, progress=False)
    assert len(fake_gpu) == 2
    mine_ann_negatives(emb, labels, rank_max=5, use_gpu=False, progress=False)
    assert len(fake_gpu) == 2


# --- mine_ann_negatives ---------------------------------------------------------------------------------------------
def test_defaults_against_the_reference() -> None:
    """Defaults: one negative, ranks 1..50, margin 0.05, top sampling; the statistics and their keys (view
    positives: with labels a rank-1 neighbour of another label is always within the margin of the positive)."""
    emb, _ = data(n=60)
    table, stats = mine_ann_negatives(emb, None, use_gpu=False, progress=False)
    ref = reference(emb, None, 1, 50, 0.05)
    assert table.shape == (60, 1) and table.dtype == torch.long
    check_table(table, top_picks(ref, 1), None)
    assert sum(row[0][1] for row in ref) > 0  # rank 1 is a valid negative for some items (rank_min=1 matters)
    assert_stats(stats, expected_stats(emb, table, ref, 1))


def test_default_rank_max_is_50() -> None:
    """51 items allow the default ``rank_max=50``; 50 do not (the message names the values and the key)."""
    emb, labels = data(n=51)
    table, _ = mine_ann_negatives(emb, labels, use_gpu=False, progress=False)
    assert table.shape == (51, 1)
    msg = "sampler.rank_max=50 must be below the 50 training items; lower sampler.rank_max."
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        mine_ann_negatives(emb[:50], labels[:50], use_gpu=False, progress=False)


@pytest.mark.parametrize("use_labels", [True, False])
@pytest.mark.parametrize(
    ("rank_min", "rank_max", "num", "margin"),
    [
        (1, 20, 4, 0.05),  # a window of 20 (>16: the rank order must survive the self-removal sort)
        (3, 3, 1, 0.05),  # rank_min == rank_max: a one-rank window
        (2, 17, 17, 0.0),  # num_negatives == rank_max
    ],
)
def test_top_sampling_and_stats_match_the_reference(
    use_labels: bool, rank_min: int, rank_max: int, num: int, margin: float
) -> None:
    """Top sampling keeps the best-ranked valid negatives of each item (random valid fills beyond them); the
    statistics equal the naive counts."""
    emb, labels = data(n=60, seed=2)
    lab = labels if use_labels else None
    table, stats = mine_ann_negatives(emb, lab, num, rank_min, rank_max, margin, use_gpu=False, progress=False)
    ref = reference(emb, lab, rank_min, rank_max, margin)
    filled = check_table(table, top_picks(ref, num), lab)
    assert table.shape == (60, num)
    assert stats["ann/random_fill_fraction"] == pytest.approx(filled / table.numel())
    assert_stats(stats, expected_stats(emb, table, ref, rank_min))


def test_random_sampling_is_the_seeded_uniform_draw() -> None:
    """``sampling="random"`` orders each item's valid negatives by ``torch.rand(n, rank_max)`` of a generator seeded
    with ``seed`` (default 0); another seed gives another draw."""
    emb, labels = data(n=60, seed=3)
    ref = reference(emb, labels, 2, 20, 0.0)
    assert all(sum(ok for _, ok in row) >= 3 for row in ref)  # no random fills: the picks are the draw
    default, _ = mine_ann_negatives(emb, labels, 3, 2, 20, 0.0, "random", use_gpu=False, progress=False)
    assert default.tolist() == random_picks(ref, 3, seed=0)
    seeded, _ = mine_ann_negatives(emb, labels, 3, 2, 20, 0.0, "random", seed=7, use_gpu=False, progress=False)
    assert seeded.tolist() == random_picks(ref, 3, seed=7)
    assert not torch.equal(default, seeded) and default.tolist() != top_picks(ref, 3)


@functools.cache
def seed_with_a_tie(shape: tuple[int, int]) -> int:
    """A seed whose ``torch.rand(shape)`` has two bitwise-equal draws in a row that an unstable sort orders
    differently from a stable one (float32 draws take 2**24 values: such ties occur)."""
    for seed in range(100_000):
        u = torch.rand(*shape, generator=torch.Generator().manual_seed(seed))
        if not torch.equal(u.argsort(dim=1, stable=True), u.argsort(dim=1, stable=False)):
            return seed
    raise AssertionError("no tie found")


def test_random_sampling_breaks_ties_by_rank() -> None:
    """Equal random keys keep rank order (a stable sort): with a tied draw the whole permuted window of every
    item (all valid: view positives, margin -1) is the reference's."""
    emb, _ = data(n=60, seed=8)
    seed = seed_with_a_tie((60, 20))
    ref = reference(emb, None, 1, 20, -1.0)
    table, _ = mine_ann_negatives(emb, None, 20, 1, 20, -1.0, "random", seed=seed, use_gpu=False, progress=False)
    assert table.tolist() == random_picks(ref, 20, seed)


def test_chunked_search_equals_one_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """Searching in chunks of 4 rows (n > 2 chunks) gives the table and statistics of one search. The result
    buffers start poisoned (not ``np.empty``, which may hand back the memory of the previous, correct search),
    so a row the chunks never reach shows."""
    emb, labels = data(n=30, seed=4)
    whole, s1 = mine_ann_negatives(emb, labels, 2, 1, 6, 0.05, use_gpu=False, progress=False)
    empty = np.empty
    monkeypatch.setattr(np, "empty", lambda shape, dtype=float: np.full(shape, -7, dtype=dtype))
    chunked, s2 = mine_ann_negatives(emb, labels, 2, 1, 6, 0.05, use_gpu=False, chunk_size=4, progress=False)
    monkeypatch.setattr(np, "empty", empty)
    assert torch.equal(whole, chunked)
    check_table(chunked, top_picks(reference(emb, labels, 1, 6, 0.05), 2), labels)
    assert s1 == pytest.approx(s2)


def test_each_chunk_is_searched_once_for_the_item_and_its_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The index is searched once per chunk of ``chunk_size`` rows (default 4096), in row order, for ``rank_max + 1``
    neighbours (the item itself and its window): 10 items in chunks of 4 are searches of 4, 4 and 2 rows; 4097 items
    with the default chunk are searches of 4096 and 1 rows."""
    calls: list[tuple[int, int, int]] = []

    class Recorder:
        def __init__(self, index: Any) -> None:
            self.index, self.added = index, np.zeros((0, index.d), dtype=np.float32)

        def add(self, x: np.ndarray) -> None:
            self.added = x
            self.index.add(x)

        def search(self, q: np.ndarray, k: int) -> Any:
            start = int(np.flatnonzero((self.added == q[0]).all(1))[0])  # the chunk's first row
            calls.append((start, len(q), k))
            return self.index.search(q, k)

    monkeypatch.setattr("contrastlab.negatives.ann._index", lambda dim, use_gpu: Recorder(_index(dim, use_gpu)))
    emb, labels = data(n=10, seed=9)
    table, _ = mine_ann_negatives(emb, labels, 1, 1, 4, 0.05, use_gpu=False, chunk_size=4, progress=False)
    assert calls == [(0, 4, 5), (4, 4, 5), (8, 2, 5)]
    check_table(table, top_picks(reference(emb, labels, 1, 4, 0.05), 1), labels)
    calls.clear()
    big = torch.randn(4097, 2, generator=torch.Generator().manual_seed(10))
    mine_ann_negatives(big, None, rank_max=1, use_gpu=False, progress=False)
    assert calls == [(0, 4096, 2), (4096, 1, 2)]


def test_a_negative_exactly_at_the_margin_is_a_false_negative() -> None:
    """``sim == sim(pos) - margin`` is filtered (the comparison is strict): item 0's rank-2 neighbour sits exactly
    there, so its negative is the rank-3 one."""
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.45], [0.7, 0.7], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    x = torch.nn.functional.normalize(emb, dim=1)
    p, s = x[1, 0], x[2, 0]  # item 0 is (1, 0): its cosines are the first coordinates, exactly
    assert p / 2 <= s <= p  # p - s is exact in float32 (Sterbenz)
    margin = float(p - s)
    assert float(s) == float(p) - margin
    table, _ = mine_ann_negatives(emb, labels, 1, 1, 3, margin, use_gpu=False, progress=False)
    assert table[0].tolist() == [3]
    loose, _ = mine_ann_negatives(emb, labels, 1, 1, 3, margin * 0.999, use_gpu=False, progress=False)
    assert loose[0].tolist() == [2]  # just inside the margin it is the negative


def test_the_margin_filter_is_computed_in_float32() -> None:
    """``sim(pos) - margin`` is computed in float32, the precision of the similarities (as text mining compares in
    the scores' precision): a margin just below ``p - s`` that rounds to it in float32 still filters the neighbour at
    ``s`` (in float64 ``s`` would lie below the threshold), so item 0's negative is the rank-3 one."""
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.45], [0.7, 0.7], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    x = torch.nn.functional.normalize(emb, dim=1)
    p, s = x[1, 0], x[2, 0]  # item 0 is (1, 0): its cosines are the first coordinates, exactly
    margin = float(p - s) * (1 - 1e-9)
    assert float(s) < float(p) - margin  # float64: s survives
    assert not bool(s < p - margin)  # float32: s == p - margin, filtered
    table, _ = mine_ann_negatives(emb, labels, 1, 1, 3, margin, use_gpu=False, progress=False)
    assert table[0].tolist() == [3]


def test_nearest_positive_beyond_the_window_sets_the_filter() -> None:
    """An item whose nearest same-label item lies beyond rank_max takes that item's similarity as ``sim(pos)``
    (one product with its class): with a negative margin some of its window survives, as in the reference."""
    emb, labels = data(n=40, classes=8, seed=5)
    ref = reference(emb, labels, 1, 3, -0.3)
    table, _ = mine_ann_negatives(emb, labels, 2, 1, 3, -0.3, use_gpu=False, progress=False)
    check_table(table, top_picks(ref, 2), labels)
    far = [  # items without a classmate in their window that still keep a negative
        i for i, row in enumerate(ref) if all(labels[j] != labels[i] for j, _ in row) and any(ok for _, ok in row)
    ]
    assert far and all(any(labels[j] == labels[i] for j in range(40) if j != i) for i in far)  # a classmate exists


def test_an_item_alone_in_its_class_has_positive_similarity_one() -> None:
    """An item without any classmate uses ``sim(pos) = 1``: its near-duplicate (cosine > 0.95, another label) is a
    false negative at margin 0.05."""
    emb, labels = data(n=30, seed=6)
    labels[1] = 99  # item 1: alone in its class; item 0 (cosine ~1) is its rank-1 neighbour
    ref = reference(emb, labels, 1, 5, 0.05)
    assert ref[1][0] == (0, False)
    table, _ = mine_ann_negatives(emb, labels, 1, 1, 5, 0.05, use_gpu=False, progress=False)
    check_table(table, top_picks(ref, 1), labels)
    assert table[1, 0] != 0


def test_random_fills_for_view_positives_are_other_items() -> None:
    """Nothing in the window survives margin 5: every entry is a random fill, never the item itself."""
    emb, _ = data(n=20)
    table, stats = mine_ann_negatives(emb, None, 3, 1, 5, 5.0, use_gpu=False, progress=False)
    assert all(j != i for i in range(20) for j in table[i].tolist())
    assert stats["ann/random_fill_fraction"] == 1.0 and stats["ann/window_kept_fraction"] == 0.0


def test_one_class_has_no_negatives() -> None:
    """A training set of one class cannot be mined: the exact message."""
    emb, _ = data(n=6)
    msg = "ANN mining found no possible negative for some items: does the training set have one class?"
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        mine_ann_negatives(emb, torch.zeros(6, dtype=torch.long), rank_max=2, use_gpu=False, progress=False)


def test_random_fill_gives_up_after_100_draws() -> None:
    """The rejection sampling checks exactly 100 draws: with one valid negative among 101 items (item 100), a seed
    whose first hit is draw 100 (0-based) raises; one whose first hit is draw 99 returns it."""
    n, labels, rows = 101, torch.zeros(101, dtype=torch.long), torch.tensor([0])
    labels[100] = 1

    def first_hit(seed: int) -> int:
        g = torch.Generator().manual_seed(seed)
        return next((t for t in range(102) if int(torch.randint(n, (1,), generator=g)) == 100), 102)

    hits = {}
    for seed in range(100_000):
        hits.setdefault(first_hit(seed), seed)
        if 99 in hits and 100 in hits:
            break
    got = _random_negatives(labels, n, rows, torch.Generator().manual_seed(hits[99]))
    assert got.tolist() == [100]
    with pytest.raises(ValueError, match="does the training set have one class"):
        _random_negatives(labels, n, rows, torch.Generator().manual_seed(hits[100]))


def test_bad_sampling_names_the_key_and_choices() -> None:
    """An unknown ``sampling`` is a ConfigError naming the key, the choices and a fix (exact text)."""
    emb, labels = data(n=10)
    msg = "sampler.sampling must be one of top, random, got 'hardest'; set e.g. sampler.sampling=top."
    with pytest.raises(ConfigError, match="^" + re.escape(msg) + "$"):
        mine_ann_negatives(emb, labels, rank_max=3, sampling="hardest", use_gpu=False, progress=False)


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    """By default a bar "ANN mining" is shown on stderr and cleared at the end; ``progress=False`` writes nothing."""
    emb, labels = data(n=20)
    mine_ann_negatives(emb, labels, rank_max=5, use_gpu=False)
    err = capsys.readouterr().err
    assert "ANN mining:" in err and err.endswith("\r") and "100%" not in err
    mine_ann_negatives(emb, labels, rank_max=5, use_gpu=False, progress=False)
    assert capsys.readouterr().err == ""


# --- MinedNegativesDataset ------------------------------------------------------------------------------------------
class _Views(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"views": [torch.full((1, 2, 2), float(i))], "label": i % 2, "index": i}


def test_dataset_serves_item_zero_and_refuses_unmined_rows() -> None:
    """Index 0 is a valid mined negative; a -1 entry (not mined yet) raises the exact message."""
    table = torch.tensor([[1, 3], [0, 2], [0, 0], [-1, 2]])
    item = MinedNegativesDataset(_Views(), table)[1]
    assert item["negative_index"].tolist() == [0, 2] and item["negatives"][:, 0, 0, 0].tolist() == [0.0, 2.0]
    msg = "mined negatives requested before the first ANN mining; call refresh first"
    with pytest.raises(RuntimeError, match="^" + re.escape(msg) + "$"):
        MinedNegativesDataset(_Views(), table)[3]


# --- AnnMined: construction, checkpoint state, attach ---------------------------------------------------------------
def _loader(emb: Tensor, labels: Tensor) -> list[dict[str, Tensor]]:
    return [{"image": emb[s : s + 16], "label": labels[s : s + 16]} for s in range(0, emb.shape[0], 16)]


def test_constructor_errors_name_the_key() -> None:
    """Bad ``refresh_every_n_epochs`` / ``num_negatives``: the exact messages."""
    with pytest.raises(ValueError, match=r"^sampler\.refresh_every_n_epochs must be >= 1, got 0\.$"):
        AnnMined(refresh_every_n_epochs=0)
    with pytest.raises(ValueError, match=r"^sampler\.num_negatives must be >= 1, got 0\.$"):
        AnnMined(num_negatives=0)
    with pytest.raises(ConfigError, match=r"^sampler\.sampling must be one of top, random, got 'banana'; "):
        AnnMined(sampling="banana")  # type: ignore[arg-type]


def test_a_fresh_miner_has_mined_nothing() -> None:
    """The checkpointed state of a fresh miner: an empty (0, num_negatives) long table, ``mined_epoch`` -1; it is
    due at fit start and (refresh every epoch by default) at every epoch."""
    ann = AnnMined()
    state = ann.state_dict()
    assert state["table"].shape == (0, 1) and state["table"].dtype == torch.long
    assert state["mined_epoch"].dtype == torch.long and int(state["mined_epoch"]) == -1
    assert ann.due(0, fit_start=True)
    assert [ann.due(e, fit_start=False) for e in range(4)] == [True, True, True, True]


def test_defaults_drive_a_refresh_after_a_restore(fake_gpu: list[Any]) -> None:
    """Restored (not attached) and refreshed: the defaults (one negative, ranks 5..50, margin 0.05, top, labels as
    positives, faiss on the GPU, seed 0 + epoch) decide the table, as in the reference."""
    emb, labels = data(n=60, seed=7)
    ann = AnnMined()
    ann.load_state_dict({"table": torch.full((60, 1), -1), "mined_epoch": torch.tensor(-1)})
    stats = ann.refresh(lambda x: x, _loader(emb, labels), "cpu", epoch=2, progress=False)
    assert len(fake_gpu) == 1
    ref = reference(emb, labels, 5, 50, 0.05)
    check_table(ann.table, top_picks(ref, 1), labels)
    assert any(row[4][1] for row in ref)  # rank 5 is a valid negative for some items
    assert_stats(stats, expected_stats(emb, ann.table, ref, 5))
    views = mine_ann_negatives(emb, None, 1, 5, 50, 0.05, seed=2, use_gpu=False, progress=False)[0]
    assert not torch.equal(ann.table, views) and int(ann.mined_epoch) == 2


def test_reattaching_keeps_the_mined_table_and_a_new_size_resets_it() -> None:
    """Attaching again to a training set of the same size serves the mined table as it is; another size gives a
    table of -1 and ``mined_epoch`` -1 (due again at fit start)."""
    emb, labels = data(n=40)
    ann = AnnMined(num_negatives=2, rank_min=1, rank_max=8, use_gpu=False)
    first = _Source(40)
    ann.attach(first, "labels")
    assert torch.equal(first.served, torch.full((40, 2), -1)) and torch.equal(ann.table, torch.full((40, 2), -1))
    ann.refresh(lambda x: x, _loader(emb, labels), "cpu", epoch=3, progress=False)
    mined = ann.table.clone()
    again = _Source(40)
    ann.attach(again, "labels")
    assert torch.equal(ann.table, mined) and torch.equal(again.served, mined) and int(ann.mined_epoch) == 3
    assert not ann.due(3, fit_start=True)
    other = _Source(30)
    ann.attach(other, "labels")
    assert torch.equal(ann.table, torch.full((30, 2), -1)) and ann.table.dtype == torch.long
    assert torch.equal(other.served, torch.full((30, 2), -1)) and int(ann.mined_epoch) == -1


def test_partial_state_without_a_table_loads() -> None:
    """``load_state_dict(strict=False)`` of a state without the table keeps the table and loads the rest."""
    ann = AnnMined(num_negatives=2)
    result = ann.load_state_dict({"mined_epoch": torch.tensor(4)}, strict=False)
    assert result.missing_keys == ["table"] and ann.table.shape == (0, 2) and int(ann.mined_epoch) == 4


def test_a_restored_table_stays_on_the_modules_device() -> None:
    """A miner on another device (``meta``) restoring a CPU checkpoint of another size keeps its table there."""
    src = AnnMined(num_negatives=2)
    src.load_state_dict({"table": torch.arange(10).view(5, 2), "mined_epoch": torch.tensor(0)})
    ann = AnnMined(num_negatives=2).to(META)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # copying into meta tensors is a no-op (torch warns)
        ann.load_state_dict(src.state_dict())
    assert ann.table.device == META and ann.table.shape == (5, 2)


def test_a_restored_table_of_another_training_set_is_refused_with_both_sizes() -> None:
    """The refusal names the checkpoint's and the training set's item counts (rows, not negatives per item)."""
    emb, labels = data(n=40)
    ann = AnnMined(num_negatives=2, rank_min=1, rank_max=8, use_gpu=False)
    ann.attach(_Source(40), "labels")
    ann.refresh(lambda x: x, _loader(emb, labels), "cpu", epoch=0, progress=False)
    other = AnnMined(num_negatives=2, rank_min=1, rank_max=8)
    other.attach(_Source(30), "labels")
    msg = (
        "the checkpoint's mined negatives cover 40 training items but the training set has 30; "
        "resume with the data settings the run was trained with."
    )
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        other.load_state_dict(ann.state_dict())


# --- AnnMined.candidates --------------------------------------------------------------------------------------------
def _batch(device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor], Tensor]:
    """z (3, 4), labels, ids, a batch with 2 mined negatives (3x2x2 images) per item, the embedding weight."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, dtype=torch.float64, generator=g)
    batch = {
        "negatives": torch.randn(3, 2, 3, 2, 2, dtype=torch.float64, generator=g),
        "negative_label": torch.tensor([[1, 2], [0, 2], [1, 1]]),
        "negative_index": torch.tensor([[4, 5], [6, 7], [8, 9]]),
    }
    w = torch.randn(12, 4, dtype=torch.float64, generator=g)
    return z, torch.tensor([0, 1, 0]), torch.tensor([10, 11, 12]), batch, w


def _embed(w: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda images: images.flatten(1) @ w


def _naive_negative_keys(batch: dict[str, Tensor], w: Tensor) -> Tensor:
    """Each item's mined negatives embedded one at a time, item-major."""
    return torch.stack([batch["negatives"][b, j].flatten() @ w for b in range(3) for j in range(2)])


@pytest.mark.parametrize("positives", ["labels", "views"])
def test_candidates_are_the_batch_then_the_embedded_mined_negatives(positives: str) -> None:
    """Queries: the batch; keys: the batch then every item's negatives (embedded, item-major); targets: labels
    and the negatives' labels (``labels``), else ids and the negatives' indices."""
    z, labels, ids, batch, w = _batch()
    cands = AnnMined(num_negatives=2).candidates(z, ids, labels, positives, batch, _embed(w))
    targets, neg = (labels, batch["negative_label"]) if positives == "labels" else (ids, batch["negative_index"])
    assert torch.equal(cands.queries, z) and torch.equal(cands.query_targets, targets)
    assert torch.allclose(cands.keys, torch.cat([z, _naive_negative_keys(batch, w)]), rtol=1e-12, atol=0)
    assert cands.keys.shape == (9, 4) and cands.keys.dtype == torch.float64
    assert cands.key_targets.tolist() == targets.tolist() + [t for row in neg.tolist() for t in row]
    assert cands.self_index.tolist() == [0, 1, 2]


def test_candidates_need_mined_negatives_and_an_embed_function() -> None:
    """Either missing (the negatives or the embed function) is refused with the exact message."""
    z, labels, ids, batch, w = _batch()
    msg = "^" + re.escape("sampler=ann_mined needs batches with mined 'negatives' and an embed function") + "$"
    ann = AnnMined(num_negatives=2)
    with pytest.raises(ValueError, match=msg):
        ann.candidates(z, ids, labels, "labels", {k: v for k, v in batch.items() if k != "negatives"}, _embed(w))
    with pytest.raises(ValueError, match=msg):
        ann.candidates(z, ids, labels, "labels", batch, None)


def test_candidate_keys_take_the_batchs_dtype() -> None:
    """Negatives embedded in float32 join half-precision batch keys as half precision."""
    z, labels, ids, batch, w = _batch()
    z16 = z.half()
    cands = AnnMined(num_negatives=2).candidates(z16, ids, labels, "labels", batch, lambda x: _embed(w)(x).float())
    assert cands.keys.dtype == torch.float16
    assert torch.equal(cands.keys[3:], _embed(w)(batch["negatives"].flatten(0, 1)).float().half())


def test_candidate_targets_move_to_the_keys_device() -> None:
    """Negative labels left on the CPU join key targets on the batch's device (``meta``)."""
    z, labels, ids, batch, w = _batch()
    meta_batch = {"negatives": batch["negatives"].to(META), "negative_label": batch["negative_label"]}
    cands = AnnMined(num_negatives=2).candidates(
        z.to(META), ids.to(META), labels.to(META), "labels", meta_batch, _embed(w.to(META))
    )
    assert cands.key_targets.device == META and cands.key_targets.shape == (9,)
    assert cands.keys.device == META and cands.keys.shape == (9, 4)


def test_candidates_gather_the_batch_across_ranks_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under DDP (a fake second rank whose rows are this rank's + 100) the default miner's keys are both ranks'
    batches then the local mined negatives; ``gather_across_ranks=False`` keeps the local batch only."""
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "gather", lambda x, with_grad=True: torch.cat([x, x + 100]))
    monkeypatch.setattr(distributed, "rank_offset", lambda size: 0)
    z, labels, ids, batch, w = _batch()
    neg_keys, neg_labels = _naive_negative_keys(batch, w), batch["negative_label"].flatten().tolist()
    cands = AnnMined(num_negatives=2).candidates(z, ids, labels, "labels", batch, _embed(w))
    assert torch.allclose(cands.keys, torch.cat([z, z + 100, neg_keys]), rtol=1e-12, atol=0)
    assert cands.key_targets.tolist() == labels.tolist() + (labels + 100).tolist() + neg_labels
    local = AnnMined(num_negatives=2, gather_across_ranks=False).candidates(z, ids, labels, "labels", batch, _embed(w))
    assert torch.allclose(local.keys, torch.cat([z, neg_keys]), rtol=1e-12, atol=0)
    assert local.key_targets.tolist() == labels.tolist() + neg_labels


# --- text_mining ----------------------------------------------------------------------------------------------------
def test_window_error_message_in_full() -> None:
    """The bad-window message, both sentences, exactly."""
    msg = (
        "need 1 <= rank_min <= rank_max, got rank_min=5 and rank_max=2; "
        "set them to a window of neighbour ranks such as rank_min=3 rank_max=50."
    )
    with pytest.raises(ConfigError, match="^" + re.escape(msg) + "$"):
        check_window(5, 2, 1, "top")


def test_positive_mask_of_no_queries() -> None:
    """No queries (and so no positives lists): an empty (0, K) mask."""
    mask = positive_mask(torch.zeros(0, 4, dtype=torch.long), [])
    assert mask.shape == (0, 4) and mask.dtype == torch.bool


def test_select_negatives_defaults_against_a_naive_loop() -> None:
    """Defaults: ranks 1..50, margin 0.05, every survivor (``m = K``, padded with -1), top order."""
    g = torch.Generator().manual_seed(0)
    k = 55
    scores = 0.9 * torch.rand(4, k, dtype=torch.float64, generator=g).sort(dim=1, descending=True).values
    indices = torch.stack([torch.randperm(100, generator=g)[:k] for _ in range(4)])
    pos = torch.tensor([1.0, 0.7, 0.5, 1.02], dtype=torch.float64)
    is_pos = torch.zeros(4, k, dtype=torch.bool)
    is_pos[1, 2] = True
    got = select_negatives(scores, indices, pos, is_pos)
    want = []
    for q in range(4):
        kept = [
            int(indices[q, r - 1])
            for r in range(1, k + 1)
            if 1 <= r <= 50 and not is_pos[q, r - 1] and float(scores[q, r - 1]) < float(pos[q]) - 0.05
        ]
        want.append(kept + [-1] * (k - len(kept)))
    assert got.tolist() == want
    assert float(scores[0, 0]) < 0.95 and float(scores[3, 50]) < 0.97  # rank 1 and rank 51 would survive the margin


def test_select_negatives_refuses_zero_negatives() -> None:
    """``num_negatives=0`` is checked (not treated as "every survivor")."""
    s = torch.tensor([[0.5, 0.4]])
    with pytest.raises(ConfigError, match=r"^num_negatives=0 must be >= 1"):
        select_negatives(
            s, torch.tensor([[1, 2]]), torch.tensor([1.0]), torch.zeros(1, 2, dtype=torch.bool), 1, 2, num_negatives=0
        )


def test_select_negatives_filter_edges() -> None:
    """``s_r < s_+ - margin`` is strict; ``s_r <= max_ratio * s_+`` is not (dyadic values: exact arithmetic)."""
    scores = torch.tensor([[0.875, 0.5, 0.375, 0.25]], dtype=torch.float64)
    indices, no_pos = torch.tensor([[7, 8, 9, 6]]), torch.zeros(1, 4, dtype=torch.bool)
    pos = torch.tensor([0.75], dtype=torch.float64)
    got = select_negatives(scores, indices, pos, no_pos, 1, 4, margin=0.25, num_negatives=4)
    assert got.tolist() == [[9, 6, -1, -1]]  # 0.5 == 0.75 - 0.25: filtered
    got = select_negatives(scores, indices, pos, no_pos, 1, 4, margin=0.0, max_ratio=0.5, num_negatives=4)
    assert got.tolist() == [[9, 6, -1, -1]]  # 0.375 == 0.5 * 0.75: kept


def test_select_negatives_compares_in_the_scores_precision() -> None:
    """The positive's score is cast to the scores' dtype first: a half-precision neighbour scoring exactly the
    positive's (float32) score rounded to half is filtered at margin 0."""
    scores = torch.tensor([[0.9, 0.1, 0.05]], dtype=torch.float16)
    pos = torch.tensor([0.1], dtype=torch.float32)
    assert float(scores[0, 1]) < float(pos[0])  # the half rounding of 0.1 lies below the float32 one
    got = select_negatives(scores, torch.tensor([[4, 5, 6]]), pos, torch.zeros(1, 3, dtype=torch.bool), 1, 3, 0.0)
    assert got.tolist() == [[6, -1, -1]]


def test_text_random_sampling_breaks_ties_by_rank() -> None:
    """Equal random keys keep rank order (a stable sort), as in a naive sort by (key, rank)."""
    seed = seed_with_a_tie((60, 20))
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(60, 20, dtype=torch.float64, generator=g).sort(dim=1, descending=True).values
    indices = torch.stack([torch.randperm(100, generator=g)[:20] for _ in range(60)])
    pos, no_pos = torch.ones(60, dtype=torch.float64), torch.zeros(60, 20, dtype=torch.bool)
    got = select_negatives(
        scores, indices, pos, no_pos, 1, 20, -1.0, sampling="random", generator=torch.Generator().manual_seed(seed)
    )
    u = torch.rand(60, 20, generator=torch.Generator().manual_seed(seed)).tolist()
    want = [[int(indices[q, c]) for c in sorted(range(20), key=lambda c: (u[q][c], c))] for q in range(60)]
    assert got.tolist() == want


@pytest.mark.parametrize("sampling", ["top", "random"])
def test_text_selection_stays_on_the_scores_device(sampling: str) -> None:
    """Every tensor the selection and the positive mask make is on the inputs' device (``meta``)."""
    indices = torch.zeros(3, 5, dtype=torch.long, device=META)
    mask = positive_mask(indices, [[1], [2, 3], []])
    assert mask.device == META and mask.shape == (3, 5)
    scores, pos = torch.rand(3, 5, device=META), torch.rand(3, device=META)
    out = select_negatives(scores, indices, pos, mask, num_negatives=2, sampling=sampling)
    assert out.device == META and out.shape == (3, 2)
