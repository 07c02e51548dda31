"""Online miners against naive loops over anchors, positives and negatives (chosen indices and stats)."""

from __future__ import annotations

import math

import pytest
import torch

from contrastlab.losses import batch_all_triplet_margin, pairwise_distance, triplet_margin
from contrastlab.negatives import TripletCandidates, TripletMiner, mine_from_distances, mine_triplets


def naive_dist(x, y, distance):
    """Pair by pair in Python floats (float64)."""

    def one(u, v):
        if distance == "cosine":
            dot = sum(a * b for a, b in zip(u, v, strict=True))
            return 1 - dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v, strict=True)))

    xs, ys = x.double().tolist(), y.double().tolist()
    return [[one(u, v) for v in ys] for u in xs]


def roles(labels, key_labels, a, self_rows):
    pos = [
        j
        for j in range(len(key_labels))
        if labels[a] >= 0 and key_labels[j] == labels[a] and not (self_rows and j == a)
    ]
    neg = [j for j in range(len(key_labels)) if labels[a] >= 0 and key_labels[j] >= 0 and key_labels[j] != labels[a]]
    return pos, neg


def first_arg(values, idx, better):
    best = None
    for j in idx:  # index order: the first of tied values wins
        if best is None or better(values[j], values[best]):
            best = j
    return best


def naive_mine(d, labels, key_labels, strategy, margin, self_rows):
    out = []
    for a in range(len(labels)):
        pos, neg = roles(labels, key_labels, a, self_rows)
        if not pos or not neg:
            continue
        row = d[a]
        if strategy == "batch_hard":
            out.append((a, first_arg(row, pos, lambda u, v: u > v), first_arg(row, neg, lambda u, v: u < v)))
        elif strategy == "semi_hard":
            for p in pos:
                farther = [n for n in neg if row[n] > row[p]]
                n = first_arg(row, farther, lambda u, v: u < v) if farther else first_arg(row, neg, lambda u, v: u > v)
                out.append((a, p, n))
        else:
            out += [(a, p, n) for p in pos for n in neg if row[p] - row[n] + margin > 0]
    return sorted(out)


def as_sorted(triplets):
    a, p, n = triplets
    return sorted(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))


def data(n=30, d=6, classes=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    labels = torch.randint(classes, (n,), generator=g)
    labels[0], labels[1] = 100, 101  # singleton classes: anchors without a positive
    labels[2] = -1  # unknown label: neither positive nor negative
    return z, labels


@pytest.mark.parametrize("strategy", ["batch_hard", "semi_hard", "batch_all"])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mine_triplets_matches_naive(strategy, distance, dtype):
    z, labels = data(dtype=dtype)
    got = as_sorted(mine_triplets(z, labels, strategy, margin=0.3, distance=distance))
    ref = naive_mine(naive_dist(z, z, distance), labels.tolist(), labels.tolist(), strategy, 0.3, True)
    assert got == ref
    assert all(a not in (0, 1, 2) for a, _, _ in got)  # no positive / unknown label -> no triplet
    assert len(got) > 0


@pytest.mark.parametrize("strategy", ["batch_hard", "semi_hard", "batch_all"])
def test_blocks_of_rows_and_reference_set_match_naive(strategy):
    z, labels = data(n=25, seed=1)
    bank, bank_labels = data(n=17, seed=2)
    for block in (1, 7, None):  # row blocks of 1 and 7 rows, and the default
        got = as_sorted(
            mine_triplets(
                z,
                labels,
                strategy,
                0.2,
                "cosine",
                ref_embeddings=bank,
                ref_labels=bank_labels,
                block_elements=None if block is None else block * 17,
            )
        )
        ref = naive_mine(naive_dist(z, bank, "cosine"), labels.tolist(), bank_labels.tolist(), strategy, 0.2, False)
        assert got == ref


def test_ties_go_to_the_lowest_key_index():
    # rows 3 and 4 are identical negatives of anchor 0; rows 1 and 2 identical positives
    z = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, 0.6], [0.6, 0.8], [0.6, 0.8], [-1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    for strategy in ("batch_hard", "semi_hard"):
        got = as_sorted(mine_triplets(z, labels, strategy, 0.5))
        assert got == naive_mine(naive_dist(z, z, "cosine"), labels.tolist(), labels.tolist(), strategy, 0.5, True)
    a, p, n = mine_triplets(z, labels, "batch_hard", 0.5)
    assert (p[a == 0].item(), n[a == 0].item()) == (1, 3)


def test_semi_hard_fallback_is_the_farthest_negative():
    # anchor 0: positive at distance 1.0 (row 1), negatives closer (rows 2, 3): none farther -> farthest (3)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.99, 0.14], [0.9, 0.43]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    a, p, n = mine_triplets(z, labels, "semi_hard", 0.1)
    assert (0, 1, 3) in as_sorted((a, p, n))


def naive_stats(d, labels, strategy, margin):
    trip = naive_mine(d, labels, labels, strategy, margin, True)
    active = sum(d[a][p] - d[a][n] + margin > 0 for a, p, n in trip)
    hardest = [
        min(d[a][j] for j in roles(labels, labels, a, True)[1])
        for a in range(len(labels))
        if roles(labels, labels, a, True)[1]
    ]
    if strategy == "batch_all":
        valid = sum(
            len(roles(labels, labels, a, True)[0]) * len(roles(labels, labels, a, True)[1]) for a in range(len(labels))
        )
        return valid, len(trip) / valid, sum(hardest) / len(hardest)
    return len(trip), active / len(trip), sum(hardest) / len(hardest)


@pytest.mark.parametrize("strategy", ["batch_hard", "semi_hard", "batch_all"])
def test_mining_statistics_match_naive(strategy):
    z, labels = data(n=20, seed=3)
    dist = pairwise_distance(z, z)
    idx = torch.arange(20)
    mined = mine_from_distances(dist, labels, labels, strategy, 0.4, self_index=idx)
    num, frac, hardest = naive_stats(naive_dist(z, z, "cosine"), labels.tolist(), strategy, 0.4)
    assert mined.stats["num_triplets"].item() == num
    assert mined.stats["active_fraction"].item() == pytest.approx(frac)
    assert mined.stats["hardest_negative_distance"].item() == pytest.approx(hardest)


def test_batch_all_masks_give_the_mean_over_enumerated_active_triplets():
    z, labels = data(n=24, seed=4)
    z.requires_grad_(True)
    dist = pairwise_distance(z, z)
    mined = mine_from_distances(dist.detach(), labels, labels, "batch_all", 0.3, self_index=torch.arange(24))
    from_masks = batch_all_triplet_margin(dist, mined.positive_mask, mined.negative_mask, 0.3)
    a, p, n = mine_triplets(z, labels, "batch_all", 0.3)
    enumerated = triplet_margin(z[a], z[p], z[n], 0.3)
    torch.testing.assert_close(from_masks, enumerated)
    torch.testing.assert_close(torch.autograd.grad(from_masks, z)[0], torch.autograd.grad(enumerated, z)[0])


def test_batch_without_any_positive_yields_no_triplets():
    z = torch.randn(5, 3, dtype=torch.float64)
    labels = torch.arange(5)
    for strategy in ("batch_hard", "semi_hard", "batch_all"):
        a, _, _ = mine_triplets(z, labels, strategy)
        assert a.numel() == 0


def test_strategy_module_uses_its_own_row_as_never_positive():
    miner = TripletMiner("batch_hard", gather_across_ranks=True)
    z, labels = data(n=12, seed=5)
    cands = miner.candidates(z, torch.arange(12), labels, "labels", {})
    assert isinstance(cands, TripletCandidates) and torch.equal(cands.self_index, torch.arange(12))
    mined = miner.mine(pairwise_distance(z, z), cands, 0.2)
    assert as_sorted((mined.anchor_idx, mined.positive_idx, mined.negative_idx)) == as_sorted(
        mine_triplets(z, labels, "batch_hard", 0.2)
    )
    views = miner.candidates(z, torch.arange(6).repeat(2), labels, "views", {})
    assert torch.equal(views.key_targets, torch.arange(6).repeat(2))


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="batch_hard, semi_hard, batch_all"):
        TripletMiner("hardest")
