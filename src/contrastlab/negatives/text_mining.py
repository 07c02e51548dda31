"""Hard negatives for text pairs, mined with the model: a pure selection over each query's ranked neighbours.

For a query ``q`` with its corpus neighbours ``d_1, d_2, ...`` ranked by similarity (rank 1 = the most similar
document; the query's positives count in the ranks), scores ``s_r = s(q, d_r)`` and ``s_+`` the similarity of
the query's positive, a candidate ``d_r`` is kept when

* ``rank_min <= r <= rank_max`` (skip the very top, often unlabelled positives; stay among the hard ones),
* it is none of the query's positives,
* ``s_r < s_+ - margin`` (false-negative filter: a document about as similar as the positive is likely
  relevant too), and, when ``max_ratio`` is set, ``s_r <= max_ratio * s_+`` (the same filter as a ratio).

``sampling="top"`` keeps the ``num_negatives`` best-ranked survivors, ``"random"`` a uniform draw among them.
No I/O here: :mod:`contrastlab.cli.mine` embeds, searches and writes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from contrastlab.errors import ConfigError


def check_window(rank_min: int, rank_max: int, num_negatives: int | None, sampling: str) -> None:
    """The mining settings are usable (``ConfigError`` naming the key otherwise)."""
    if not 1 <= rank_min <= rank_max:
        raise ConfigError(
            f"need 1 <= rank_min <= rank_max, got rank_min={rank_min} and rank_max={rank_max}; "
            "set them to a window of neighbour ranks such as rank_min=3 rank_max=50."
        )
    if num_negatives is not None and num_negatives < 1:
        raise ConfigError(f"num_negatives={num_negatives} must be >= 1 (or null: every survivor of the window).")
    if sampling not in ("top", "random"):
        raise ConfigError(f"sampling must be top or random, got sampling={sampling}.")


def positive_mask(indices: Tensor, positives: Sequence[Sequence[int]]) -> Tensor:
    """(Q, K) bool: ``indices[q, r]`` is one of ``positives[q]`` (the corpus rows relevant to query ``q``)."""
    width = max((len(p) for p in positives), default=0)
    table = torch.full((len(positives), max(width, 1)), -1, dtype=torch.long)
    for q, p in enumerate(positives):
        if len(p):
            table[q, : len(p)] = torch.as_tensor(list(p), dtype=torch.long)
    table = table.to(indices.device)
    return ((indices[:, :, None] == table[:, None, :]) & (table[:, None, :] >= 0)).any(-1)


def select_negatives(
    scores: Tensor,
    indices: Tensor,
    positive_scores: Tensor,
    is_positive: Tensor,
    rank_min: int = 1,
    rank_max: int = 50,
    margin: float = 0.05,
    max_ratio: float | None = None,
    num_negatives: int | None = None,
    sampling: str = "top",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mined negatives, ``(Q, m)`` long corpus rows padded with -1 (best rank first for ``"top"``).

    Args:
        scores, indices: (Q, K) each query's neighbours, column ``r - 1`` holding rank ``r`` (descending scores);
            an index of -1 is an empty slot.
        positive_scores: (Q,) ``s_+`` per query. is_positive: (Q, K) bool (:func:`positive_mask`).
        num_negatives: ``m``; None: every survivor (``m = K``).
    """
    check_window(rank_min, rank_max, num_negatives, sampling)
    q, k = scores.shape
    rank = torch.arange(1, k + 1, device=scores.device)
    pos = positive_scores.to(scores.dtype)[:, None]
    valid = ((rank >= rank_min) & (rank <= rank_max))[None, :] & ~is_positive & (indices >= 0)
    valid &= scores < pos - margin
    if max_ratio is not None:
        valid &= scores <= max_ratio * pos
    if sampling == "random":
        key = torch.rand((q, k), generator=generator).to(scores.device)
    else:
        key = rank[None, :].expand(q, k).to(torch.float32)
    key = key.masked_fill(~valid, float("inf"))
    m = min(num_negatives or k, k)
    order = key.argsort(dim=1, stable=True)[:, :m]
    return indices.gather(1, order).masked_fill(~valid.gather(1, order), -1)
