"""Chunked cross-modal retrieval against a full-matrix, loop-based reference (several captions per image)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contrastlab.evaluation.cross_modal import (
    chance_recall,
    cross_modal_retrieval,
    median_rank,
    retrieval_ranks,
)


def reference_ranks(queries, gallery, query_ids, gallery_ids):
    """Full similarity matrix; for each query, sort the gallery and find the first relevant item.
    Ties with the best relevant item are counted in the query's favour."""
    q = torch.nn.functional.normalize(queries.double(), dim=1)
    g = torch.nn.functional.normalize(gallery.double(), dim=1)
    sims = (q @ g.T).tolist()
    ranks = []
    for i, row in enumerate(sims):
        best = max(s for s, gid in zip(row, gallery_ids.tolist(), strict=True) if gid == int(query_ids[i]))
        order = sorted(row, reverse=True)
        ranks.append(order.index(best) + 1)  # position of the first score equal to the best relevant one
    return ranks


def reference_metrics(images, texts, owner, ks=(1, 5, 10)):
    n_img = images.shape[0]
    keep = [j for j in range(len(owner)) if owner[j] >= 0]
    i2t = reference_ranks(images, texts, torch.arange(n_img), owner)
    t2i = reference_ranks(texts[keep], images, owner[keep], torch.arange(n_img))
    out = {}
    for name, r in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_recall@{k}"] = sum(x <= k for x in r) / len(r)
        out[f"{name}_median_rank"] = float(np.median(r))
    out["mean_recall"] = float(np.mean([v for k, v in out.items() if "recall@" in k]))
    return out


def _data(n_img=23, caps_per_img=(1, 2, 3, 5), n_distractors=4, d=6, seed=0, quantise=False):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n_img, d, generator=g)
    owner = []
    for i in range(n_img):
        owner += [i] * caps_per_img[i % len(caps_per_img)]
    owner += [-1] * n_distractors
    owner = torch.tensor(owner)
    texts = torch.randn(len(owner), d, generator=g)
    texts[owner >= 0] += 1.5 * images[owner[owner >= 0]]  # captions lean towards their image
    if quantise:  # many exact ties
        images, texts = images.round(), texts.round()
        images[images.norm(dim=1) == 0, 0] = 1.0
        texts[texts.norm(dim=1) == 0, 0] = 1.0
    return images, texts, owner


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 10_000])
@pytest.mark.parametrize("quantise", [False, True])
def test_cross_modal_equals_full_matrix_reference(chunk_size, quantise):
    images, texts, owner = _data(quantise=quantise)
    fast = cross_modal_retrieval(images, texts, owner, chunk_size=chunk_size, with_chance=False)
    ref = reference_metrics(images, texts, owner)
    assert set(fast) == set(ref)
    for key, value in ref.items():
        assert fast[key] == pytest.approx(value, abs=1e-12), key
    assert 0.0 < fast["i2t_recall@1"] < fast["i2t_recall@10"] <= 1.0  # the data is neither trivial nor random


def test_ranks_are_exact_per_query():
    images, texts, owner = _data(n_img=11, seed=3)
    ranks = retrieval_ranks(images, texts, torch.arange(11), owner, chunk_size=3)
    assert ranks.tolist() == reference_ranks(images, texts, torch.arange(11), owner)


def test_perfect_and_median():
    x = torch.eye(5)
    m = cross_modal_retrieval(x, x, torch.arange(5))
    assert m["i2t_recall@1"] == m["t2i_recall@1"] == m["mean_recall"] == 1.0
    assert m["i2t_median_rank"] == m["t2i_median_rank"] == 1.0
    assert median_rank(torch.tensor([1, 2, 3, 10])) == 2.5
    assert median_rank(torch.tensor([4, 1, 9])) == 4.0


def test_chance_recall_matches_combinatorics():
    for m, g, k in [(1, 10, 1), (1, 10, 5), (5, 40, 5), (3, 7, 10), (2, 2, 1)]:
        expected = 1 - math.comb(g - m, min(k, g)) / math.comb(g, min(k, g))
        assert chance_recall(torch.tensor([m]), g, k) == pytest.approx(expected, abs=1e-12)
    # averaged over queries with different numbers of relevant items
    mixed = chance_recall(torch.tensor([1, 3]), 20, 5)
    assert mixed == pytest.approx(((5 / 20) + 1 - math.comb(17, 5) / math.comb(20, 5)) / 2)


def test_chance_is_reported_for_random_features():
    images, texts, owner = _data(n_img=30, caps_per_img=(5,), n_distractors=0, seed=1)
    texts = torch.randn_like(texts)  # unrelated
    m = cross_modal_retrieval(images, texts, owner)
    assert m["t2i_recall@5_chance"] == pytest.approx(5 / 30)
    assert m["i2t_recall@5_chance"] == pytest.approx(1 - math.comb(145, 5) / math.comb(150, 5))


def test_query_without_relevant_item_is_refused():
    with pytest.raises(ValueError, match="relevant"):
        retrieval_ranks(torch.randn(3, 2), torch.randn(2, 2), torch.arange(3), torch.tensor([0, 1]))
