"""The text hard-negative selection (rank window, positives dropped, margin / ratio false-negative filters)
against a naive loop, in float32 and float64."""

from __future__ import annotations

import pytest
import torch

from contrastlab.errors import ConfigError
from contrastlab.negatives.text_mining import check_window, positive_mask, select_negatives


def ranked_case(dtype: torch.dtype, n_queries: int = 30, k: int = 25, n_docs: int = 60, seed: int = 0):
    """Each query's top-k neighbours (distinct corpus rows, descending scores), 1-3 positives per query (some of
    them among the neighbours), the positive's score (anywhere from the top to the bottom of the list)."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(n_queries, k, generator=gen, dtype=torch.float64).sort(dim=1, descending=True).values
    indices = torch.stack([torch.randperm(n_docs, generator=gen)[:k] for _ in range(n_queries)])
    positives = []
    for q in range(n_queries):
        inside = indices[q, torch.randint(0, k, (int(torch.randint(0, 3, (1,), generator=gen)),), generator=gen)]
        positives.append(sorted({*inside.tolist(), n_docs + q}))  # n_docs + q: a positive never retrieved
    at = torch.randint(0, k, (n_queries,), generator=gen)  # the positive scores like some neighbour, +- noise
    pos_scores = scores[torch.arange(n_queries), at] + torch.rand(n_queries, generator=gen, dtype=torch.float64) * 0.1
    indices[3, -2:] = -1  # empty slots (a corpus smaller than k)
    return scores.to(dtype), indices, pos_scores.to(dtype), positives


def naive(scores, indices, pos_scores, positives, rank_min, rank_max, margin, max_ratio, num):
    out = []
    for q in range(scores.shape[0]):
        kept = []
        for r in range(1, scores.shape[1] + 1):
            s, d = float(scores[q, r - 1]), int(indices[q, r - 1])
            if num is not None and len(kept) == num:
                break
            if not rank_min <= r <= rank_max or d < 0 or d in positives[q]:
                continue
            if not s < float(pos_scores[q]) - margin:
                continue
            if max_ratio is not None and not s <= max_ratio * float(pos_scores[q]):
                continue
            kept.append(d)
        out.append(kept)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("rank_min", "rank_max", "margin", "max_ratio", "num"),
    [
        (1, 50, 0.05, None, 4),
        (3, 12, 0.0, None, None),
        (2, 25, 0.1, 0.9, 3),
        (5, 5, -1.0, None, 2),
        (1, 25, 0.0, 0.8, 30),
    ],
)
def test_selection_equals_a_naive_loop(dtype, rank_min, rank_max, margin, max_ratio, num):
    scores, indices, pos_scores, positives = ranked_case(dtype)
    mask = positive_mask(indices, positives)
    got = select_negatives(scores, indices, pos_scores, mask, rank_min, rank_max, margin, max_ratio, num)
    want = naive(scores, indices, pos_scores, positives, rank_min, rank_max, margin, max_ratio, num)
    assert got.shape == (scores.shape[0], min(num or scores.shape[1], scores.shape[1]))
    assert [[d for d in row if d >= 0] for row in got.tolist()] == want
    window = min(rank_max, scores.shape[1]) - rank_min + 1
    assert any(want)
    if margin >= 0:  # the false-negative filter bites: some rows keep fewer than asked
        assert any(len(w) < min(num or window, window) for w in want)


def test_positive_mask_is_membership():
    indices = torch.tensor([[4, 2, -1], [0, 1, 2]])
    mask = positive_mask(indices, [[2, 9], []])
    assert mask.tolist() == [[False, True, False], [False, False, False]]
    assert positive_mask(indices, [[], []]).sum() == 0


def test_random_sampling_draws_from_the_survivors():
    scores, indices, pos_scores, positives = ranked_case(torch.float32, n_queries=200)
    mask = positive_mask(indices, positives)
    survivors = naive(scores, indices, pos_scores, positives, 1, 25, 0.0, None, None)
    draw = lambda seed: select_negatives(  # noqa: E731
        scores, indices, pos_scores, mask, 1, 25, 0.0, None, 3, "random", torch.Generator().manual_seed(seed)
    )
    a, b = draw(0), draw(0)
    assert torch.equal(a, b) and not torch.equal(a, draw(1))  # seeded
    top = select_negatives(scores, indices, pos_scores, mask, 1, 25, 0.0, None, 3)
    assert not torch.equal(a, top)
    for row, ok in zip(a.tolist(), survivors, strict=True):
        picked = [d for d in row if d >= 0]
        assert len(picked) == min(3, len(ok)) and set(picked) <= set(ok) and len(set(picked)) == len(picked)


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="rank_min <= rank_max"):
        check_window(5, 2, 1, "top")
    with pytest.raises(ConfigError, match="num_negatives=0 must be >= 1"):
        check_window(1, 2, 0, "top")
    with pytest.raises(ConfigError, match="sampling must be top or random"):
        check_window(1, 2, 1, "hardest")
