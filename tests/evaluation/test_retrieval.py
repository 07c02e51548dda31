"""Chunked retrieval metrics against a brute-force reference (python loops over a full ranking)."""

from __future__ import annotations

import math

import pytest
import torch

from contrastlab.evaluation.retrieval import retrieval_metrics


def ref_retrieval(q, ql, g=None, gl=None, ks=(1, 5, 10)) -> dict[str, float]:
    """Rank by cosine (descending, ties by gallery index), relevance = same label; loops only."""
    self_gallery = g is None
    if self_gallery:
        g, gl = q, ql
    q, g = q.double().tolist(), g.double().tolist()
    ql, gl = ql.tolist(), gl.tolist()

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True)) / (
            math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
        )

    hits, top1, aps, used = dict.fromkeys(ks, 0), 0, 0.0, 0
    for i, qi in enumerate(q):
        cands = [j for j in range(len(g)) if not (self_gallery and j == i)]
        r = sum(1 for j in cands if gl[j] == ql[i])
        if ql[i] < 0 or r == 0:
            continue
        used += 1
        ranking = sorted(cands, key=lambda j: (-cos(qi, g[j]), j))
        rel = [gl[j] == ql[i] for j in ranking]
        top1 += rel[0]
        for k in ks:
            hits[k] += any(rel[:k])
        ap, found = 0.0, 0
        for pos in range(r):
            if rel[pos]:
                found += 1
                ap += found / (pos + 1)
        aps += ap / r
    return {
        "precision@1": top1 / used,
        **{f"recall@{k}": hits[k] / used for k in ks},
        "map@r": aps / used,
        "num_queries": used,
    }


def check(out: dict, ref: dict, tol: float) -> None:
    assert set(out) == set(ref)
    for key in ref:
        assert out[key] == pytest.approx(ref[key], abs=tol), key


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_separate_gallery_matches_reference(dtype: torch.dtype, tol: float, chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(23, 6, generator=g, dtype=dtype), torch.randn(40, 6, generator=g, dtype=dtype)
    ql, gl = torch.randint(0, 4, (23,), generator=g), torch.randint(0, 4, (40,), generator=g)
    ql[3] = -1  # unlabelled query: skipped
    ql[5] = 7  # no relevant gallery item: skipped
    check(
        retrieval_metrics(q, ql, gal, gl, ks=(1, 2, 5), chunk_size=chunk),
        ref_retrieval(q, ql, gal, gl, ks=(1, 2, 5)),
        tol,
    )


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_leave_one_out_matches_reference(chunk: int) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=g)
    y[0] = 9  # a singleton class: no relevant item once the query itself is excluded
    out = retrieval_metrics(x, y, ks=(1, 5, 10), chunk_size=chunk)
    check(out, ref_retrieval(x, y), 1e-12)
    assert out["num_queries"] == 29


def test_ties_are_broken_by_gallery_order() -> None:
    """One-hot embeddings: many exactly equal similarities; the loop reference breaks ties the same way."""
    dirs = torch.eye(3, dtype=torch.float64)
    gal_idx = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 1, 0])
    gal = dirs[gal_idx]
    gl = torch.tensor([0, 1, 1, 2, 0, 0, 2, 1, 1, 0])  # directions and labels disagree on purpose
    q = dirs[torch.tensor([0, 1, 2, 0])]
    ql = torch.tensor([0, 1, 2, 1])
    out = retrieval_metrics(q, ql, gal, gl, ks=(1, 2, 3), chunk_size=2)
    check(out, ref_retrieval(q, ql, gal, gl, ks=(1, 2, 3)), 1e-12)
    # hand check of query 0 (direction 0, label 0): ranked gallery 0,2,5,9 (sim 1) then 1,3,4,6,7,8
    # labels 0,1,0,0 | ... ; R = 4 relevant (0,5,9,4) -> AP@R = (1/4)(1/1 + 2/3 + 3/4) = 0.6041666
    single = retrieval_metrics(q[:1], ql[:1], gal, gl, ks=(1,))
    assert single["map@r"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 4)


def test_collapsed_embedding_ranks_by_index() -> None:
    """All embeddings identical: every similarity ties, so the ranking is gallery order."""
    x = torch.ones(12, 4, dtype=torch.float64)
    y = torch.arange(12) % 3
    check(retrieval_metrics(x, y, ks=(1, 5)), ref_retrieval(x, y, ks=(1, 5)), 1e-12)


def test_perfect_clusters() -> None:
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    clustered = torch.eye(3, dtype=torch.float64)[y] + 0.01 * torch.arange(6, dtype=torch.float64)[:, None]
    out = retrieval_metrics(clustered, y, ks=(1, 2))
    assert out["precision@1"] == out["recall@1"] == out["map@r"] == 1.0


def test_errors() -> None:
    with pytest.raises(ValueError, match="no query"):
        retrieval_metrics(torch.randn(4, 2), torch.arange(4))
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(torch.randn(4, 2), torch.zeros(4, dtype=torch.long), ks=(0,))
