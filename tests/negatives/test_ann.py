"""ANN-mined hard negatives (faiss) against a brute-force loop: rank window, false-negative filtering."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from contrastlab.negatives import AnnMined, MinedNegativesDataset, MiningDataSource, mine_ann_negatives


def data(n: int = 60, d: int = 8, classes: int = 4, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random embeddings and labels; item 1 is a near-duplicate of item 0 with another label."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g)
    labels = torch.randint(classes, (n,), generator=g)
    emb[1] = emb[0] + 1e-3 * torch.randn(d, generator=g)
    labels[1] = (labels[0] + 1) % classes
    return emb, labels


def cosines(emb: Tensor) -> list[list[float]]:
    x = torch.nn.functional.normalize(emb.double(), dim=1)
    return (x @ x.T).tolist()


def reference(
    emb: Tensor, labels: Tensor | None, rank_min: int, rank_max: int, margin: float
) -> list[list[tuple[int, bool]]]:
    """Per item: its ``rank_max`` nearest other items in rank order, each with whether it is a valid negative
    (rank >= rank_min, another label, cosine below the nearest positive's minus ``margin``), in float64."""
    sims, n = cosines(emb), emb.shape[0]
    lab = None if labels is None else labels.tolist()
    out = []
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: -sims[i][j])
        same = [sims[i][j] for j in others if lab is not None and lab[j] == lab[i]]
        pos = max(same) if same else 1.0
        row = []
        for r, j in enumerate(others[:rank_max], start=1):
            ok = r >= rank_min and (lab is None or lab[j] != lab[i]) and sims[i][j] < pos - margin
            row.append((j, ok))
        out.append(row)
    return out


def brute_force(emb: Tensor, labels: Tensor | None, rank_min: int, rank_max: int, margin: float) -> list[list[int]]:
    """The valid window candidates of every item, in rank order: the valid entries of :func:`reference`."""
    return [[j for j, ok in row if ok] for row in reference(emb, labels, rank_min, rank_max, margin)]


@pytest.mark.parametrize("use_labels", [True, False])
def test_top_sampling_matches_brute_force(use_labels):
    emb, labels = data()
    lab = labels if use_labels else None
    table, stats = mine_ann_negatives(emb, lab, num_negatives=2, rank_min=2, rank_max=12, margin=0.05, progress=False)
    ref = brute_force(emb, lab, 2, 12, 0.05)
    filled = 0
    for i, valid in enumerate(ref):
        k = min(2, len(valid))
        assert table[i, :k].tolist() == valid[:k], i
        for j in table[i, k:].tolist():  # too few survivors: random valid negatives
            filled += 1
            assert j != i and (lab is None or labels[j] != labels[i])
    assert stats["ann/random_fill_fraction"] == pytest.approx(filled / table.numel())


def test_false_negatives_are_skipped():
    emb, labels = data()
    # rank 1 of item 0 is its near-duplicate (item 1, another label): too close to be a real negative
    table, _ = mine_ann_negatives(emb, labels, num_negatives=3, rank_min=1, rank_max=10, margin=0.05, progress=False)
    assert 1 not in table[0].tolist() and 0 not in table[1].tolist()
    views, _ = mine_ann_negatives(emb, None, num_negatives=3, rank_min=1, rank_max=10, margin=0.05, progress=False)
    assert 1 not in views[0].tolist()  # view positives: within the margin of the item itself
    no_filter, _ = mine_ann_negatives(emb, None, num_negatives=1, rank_min=1, rank_max=10, margin=-1.0, progress=False)
    assert no_filter[0].item() == 1  # without the margin it would have been picked


def test_random_sampling_stays_in_the_filtered_window():
    emb, labels = data(seed=1)
    mine = dict(num_negatives=2, rank_min=3, rank_max=15, margin=0.0, sampling="random", seed=3, progress=False)
    table, _ = mine_ann_negatives(emb, labels, **mine)
    ref = brute_force(emb, labels, 3, 15, 0.0)
    for i, valid in enumerate(ref):
        picks = table[i].tolist()
        assert len(set(picks[: min(2, len(valid))]) - set(valid)) == 0
    again, _ = mine_ann_negatives(emb, labels, **mine)  # the same seed: the same picks
    assert torch.equal(table, again)


def test_bad_windows_name_the_key():
    emb, labels = data(n=10)
    with pytest.raises(ValueError, match="sampler.rank_min"):
        mine_ann_negatives(emb, labels, rank_min=5, rank_max=3, progress=False)
    with pytest.raises(ValueError, match="sampler.rank_max"):
        mine_ann_negatives(emb, labels, rank_max=10, progress=False)
    with pytest.raises(ValueError, match="sampler.num_negatives"):
        mine_ann_negatives(emb, labels, num_negatives=4, rank_min=1, rank_max=3, progress=False)


class _Views(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict:
        return {
            "views": [torch.full((1, 2, 2), float(i)), torch.full((1, 2, 2), -float(i))],
            "label": i % 2,
            "index": i,
        }


def test_dataset_serves_each_items_mined_negatives():
    table = torch.tensor([[1, 3], [0, 2], [5, 1], [0, 4], [3, 5], [2, 4]])
    item = MinedNegativesDataset(_Views(), table)[2]
    assert item["negatives"].shape == (2, 1, 2, 2)
    assert item["negatives"][:, 0, 0, 0].tolist() == [5.0, 1.0]  # first view of items 5 and 1
    assert item["negative_index"].tolist() == [5, 1] and item["negative_label"].tolist() == [1, 1]
    with pytest.raises(RuntimeError, match="before the first ANN mining"):
        MinedNegativesDataset(_Views(), torch.full((6, 2), -1))[0]


class _Source:
    """A :class:`MiningDataSource` of ``n`` items: records the table it is handed to serve."""

    def __init__(self, n: int) -> None:
        self.n, self.served = n, None

    def train_loader_for_mining(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(list(range(self.n)))

    def set_mined_negatives(self, table: Tensor) -> None:
        self.served = table


def test_refresh_fills_the_shared_table_and_the_checkpointed_buffer():
    emb, labels = data(n=40)
    loader = [{"image": emb[s : s + 16], "label": labels[s : s + 16]} for s in range(0, 40, 16)]
    ann = AnnMined(num_negatives=2, rank_min=1, rank_max=8, margin=0.05, use_gpu=False)
    source = _Source(40)
    assert isinstance(source, MiningDataSource)
    ann.attach(source, "labels")
    assert source.served is ann.shared_table and source.served.shape == (40, 2) and bool((source.served < 0).all())
    assert ann.due(0, fit_start=True)  # nothing mined yet
    stats = ann.refresh(lambda x: x, loader, "cpu", epoch=0, progress=False)
    expected, _ = mine_ann_negatives(emb, labels, 2, 1, 8, 0.05, seed=0, progress=False)
    assert torch.equal(ann.table, expected) and torch.equal(ann.shared_table, expected)
    assert torch.equal(source.served, expected)  # the datamodule serves the table refreshed in place
    assert int(ann.mined_epoch) == 0
    valid = brute_force(emb, labels, 1, 8, 0.05)  # the statistics, counted from the brute-force window
    assert stats["ann/random_fill_fraction"] == pytest.approx(sum(max(0, 2 - len(v)) for v in valid) / (40 * 2))
    assert stats["ann/window_kept_fraction"] == pytest.approx(sum(len(v) for v in valid) / (40 * 8))
    x = torch.nn.functional.normalize(emb.double(), dim=1)
    cos = [float(x[i] @ x[j]) for i in range(40) for j in expected[i].tolist()]
    assert stats["ann/negative_similarity"] == pytest.approx(sum(cos) / len(cos), abs=1e-6)
    assert 0 < stats["ann/random_fill_fraction"] < 1  # both kinds of entry occur: the counts are exercised
    fresh = AnnMined(num_negatives=2, rank_min=1, rank_max=8)
    fresh.load_state_dict(ann.state_dict())  # table size unknown until loaded
    assert torch.equal(fresh.table, expected) and int(fresh.mined_epoch) == 0


def test_a_restored_table_is_served_and_refreshed_only_when_due():
    emb, labels = data(n=40)
    loader = [{"image": emb[s : s + 16], "label": labels[s : s + 16]} for s in range(0, 40, 16)]
    ann = AnnMined(num_negatives=2, rank_min=1, rank_max=8, refresh_every_n_epochs=2, use_gpu=False)
    ann.attach(_Source(40), "labels")
    ann.refresh(lambda x: x, loader, "cpu", epoch=0, progress=False)
    resumed, source = AnnMined(num_negatives=2, rank_min=1, rank_max=8, refresh_every_n_epochs=2), _Source(40)
    resumed.attach(source, "labels")  # set-up runs before the checkpoint is restored
    resumed.load_state_dict(ann.state_dict())
    assert torch.equal(source.served, ann.table)  # served as restored, without mining again
    assert not resumed.due(1, fit_start=True)
    assert [resumed.due(e, fit_start=False) for e in (0, 1, 2, 3, 4)] == [False, False, True, False, True]
    with pytest.raises(ValueError, match="resume with the data settings"):
        other = AnnMined(num_negatives=2, rank_min=1, rank_max=8)
        other.attach(_Source(30), "labels")
        other.load_state_dict(ann.state_dict())
