"""Triplet margin loss (Schroff et al. 2015, FaceNet; Hermans et al. 2017 for the soft margin).

For an anchor ``a``, a positive ``p`` (same identity) and a negative ``n``, with a distance ``d``::

    hinge:        l(a, p, n) = max(d(a, p) - d(a, n) + margin, 0)
    soft margin:  l(a, p, n) = softplus(d(a, p) - d(a, n)) = log(1 + exp(d(a, p) - d(a, n)))
    loss = mean over the triplets

``d`` is ``"cosine"`` (``1 - cos(x, y)``, in [0, 2]) or ``"euclidean"`` (``||x - y||_2``).

Three entry points compute the same numbers from different inputs:

* :func:`triplet_margin` — from embedding rows ``anchor, positive, negative`` (T, D);
* :func:`triplet_margin_from_distances` — from a distance matrix (N, M) and index triplets (what the
  online miners return), so the (T, D) rows are never materialised;
* :func:`batch_all_triplet_margin` — from a distance matrix and positive/negative masks: the mean
  over *every* valid triplet with a positive loss, in O(N*M) memory (sort + prefix sums), never
  enumerating the O(N * K * M) triplets.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastlab.errors import check_choice

Distance = Literal["cosine", "euclidean"]
DISTANCES = get_args(Distance)


def _check(margin: float, distance: str) -> None:
    check_choice(distance, Distance, "loss.distance")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}; set loss.margin to a non-negative value.")


def _safe_sqrt(sq: Tensor) -> Tensor:
    """sqrt with value 0 and gradient 0 at 0 (where sqrt's derivative is infinite)."""
    positive = sq > 0
    return torch.where(positive, sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt(), torch.zeros_like(sq))


def rowwise_distance(x: Tensor, y: Tensor, distance: str = "cosine") -> Tensor:
    """Distance between matching rows of ``x`` and ``y`` (T, D) -> (T,)."""
    _check(0.0, distance)
    if distance == "cosine":
        return 1.0 - (F.normalize(x, dim=1) * F.normalize(y, dim=1)).sum(1)
    return _safe_sqrt((x - y).pow(2).sum(1))


def pairwise_distance(x: Tensor, y: Tensor, distance: str = "cosine") -> Tensor:
    """All distances between rows of ``x`` (N, D) and ``y`` (M, D) -> (N, M), one matrix product.

    Euclidean uses ``||x||^2 + ||y||^2 - 2 x.y`` clamped at 0 (so it can differ from the row-wise
    formula by rounding, about 1e-3 in float32 for near-identical rows), with a zero gradient at 0.
    """
    _check(0.0, distance)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x (N, D) and y (M, D) must share D, got {tuple(x.shape)} and {tuple(y.shape)}")
    if distance == "cosine":
        return 1.0 - F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
    sq = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1)[None, :] - 2.0 * (x @ y.T)
    return _safe_sqrt(sq.clamp_min(0.0))


def rowwise_searchsorted(
    sorted_rows: Tensor, row: Tensor, values: Tensor, right: bool = False, max_per_row: int | None = None
) -> Tensor:
    """``searchsorted(sorted_rows[row[t]], values[t])`` for every entry ``t`` -> (P,) long.

    ``sorted_rows`` (R, M) is sorted along dim 1; ``row`` (P,) is non-decreasing (the order of
    ``nonzero``) with at most ``max_per_row`` entries per row (default M: e.g. one per (anchor, key)
    pair). The values are laid out as an (R, max_per_row) matrix padded with +inf, so the work is one
    batched ``searchsorted`` of at most the size of ``sorted_rows``, and its width is known without
    reading anything back from the device."""
    if row.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=row.device)
    width = sorted_rows.shape[1] if max_per_row is None else max_per_row
    counts = torch.bincount(row, minlength=sorted_rows.shape[0])
    slot = torch.arange(row.numel(), device=row.device) - (counts.cumsum(0) - counts)[row]
    padded = values.new_full((sorted_rows.shape[0], width), float("inf"))
    padded[row, slot] = values
    return torch.searchsorted(sorted_rows, padded, right=right)[row, slot]


def _hinge(d_ap: Tensor, d_an: Tensor, margin: float, soft_margin: bool) -> Tensor:
    if d_ap.numel() == 0:
        return d_ap.sum() + d_an.sum()  # no triplets: zero loss, graph still attached
    z = d_ap - d_an
    return (F.softplus(z) if soft_margin else F.relu(z + margin)).mean()


def triplet_margin(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 0.2,
    distance: str = "cosine",
    soft_margin: bool = False,
) -> Tensor:
    """Mean over the T triplets of ``max(d(a, p) - d(a, n) + margin, 0)`` (or the soft margin).

    ``anchor``, ``positive``, ``negative``: (T, D). Returns a scalar; zero (with a graph) when T = 0.
    """
    _check(margin, distance)
    if not (anchor.shape == positive.shape == negative.shape) or anchor.ndim != 2:
        raise ValueError(
            "anchor, positive and negative must all be (T, D), got "
            f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}"
        )
    d_ap = rowwise_distance(anchor, positive, distance)
    d_an = rowwise_distance(anchor, negative, distance)
    return _hinge(d_ap, d_an, margin, soft_margin)


def triplet_margin_from_distances(
    dist: Tensor,
    anchor_idx: Tensor,
    positive_idx: Tensor,
    negative_idx: Tensor,
    margin: float = 0.2,
    soft_margin: bool = False,
) -> Tensor:
    """The triplet loss of index triplets into a distance matrix ``dist`` (N, M):
    anchors index rows, positives and negatives index columns. Equals :func:`triplet_margin` on
    the corresponding embedding rows."""
    _check(margin, "cosine")
    return _hinge(dist[anchor_idx, positive_idx], dist[anchor_idx, negative_idx], margin, soft_margin)


def batch_all_triplet_margin(dist: Tensor, positive_mask: Tensor, negative_mask: Tensor, margin: float = 0.2) -> Tensor:
    """Mean of ``d_ap - d_an + margin`` over every triplet ``(a, p, n)`` with ``positive_mask[a, p]``,
    ``negative_mask[a, n]`` and a positive loss (Hermans et al.'s "batch all", non-zero average).

    For an anchor row, sort its negative distances ``s_1 <= s_2 <= ...``; for each positive ``p`` the
    active negatives are the first ``c = #{s_j < d_ap + margin}`` (a ``searchsorted``) and their total
    loss is ``c * (d_ap + margin) - (s_1 + ... + s_c)`` (a prefix sum). Memory and time are those of
    sorting the (N, M) matrix. Returns zero (with a graph) when no triplet is active.
    """
    _check(margin, "cosine")
    if not (dist.shape == positive_mask.shape == negative_mask.shape):
        raise ValueError(
            f"dist, positive_mask, negative_mask must share a shape, got {tuple(dist.shape)}, "
            f"{tuple(positive_mask.shape)}, {tuple(negative_mask.shape)}"
        )
    inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)
    neg_sorted = torch.where(negative_mask, dist, inf).sort(dim=1).values
    a, p = torch.nonzero(positive_mask, as_tuple=True)
    d_ap = dist[a, p]
    count = rowwise_searchsorted(neg_sorted.detach(), a, (d_ap + margin).detach(), right=False)  # s_j < d_ap + m
    prefix = torch.where(torch.isinf(neg_sorted), torch.zeros_like(neg_sorted), neg_sorted).cumsum(1)
    taken = prefix[a, (count - 1).clamp_min(0)]
    per_pair = torch.where(count > 0, count.to(dist.dtype) * (d_ap + margin) - taken, torch.zeros_like(d_ap))
    active = count.sum()  # no active triplet: every per_pair is 0, so the loss is 0 (with a graph)
    return per_pair.sum() / active.clamp_min(1).to(dist.dtype)


class TripletMarginLoss(nn.Module):
    """Module form holding ``margin``, ``distance`` and ``soft_margin``.

    ``forward(anchor, positive, negative)`` is :func:`triplet_margin`; :meth:`from_distances` scores
    what a miner returns — index triplets, or (batch-all) positive/negative masks — on a distance
    matrix computed once with :meth:`distances`.
    """

    #: what it scores: mined triplets (InfoNCE losses score candidate sets); start-up checks read it
    consumes = "triplets"

    def __init__(self, margin: float = 0.2, distance: Distance = "cosine", soft_margin: bool = False) -> None:
        super().__init__()
        _check(margin, distance)
        self.margin, self.distance, self.soft_margin = float(margin), distance, soft_margin

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return triplet_margin(anchor, positive, negative, self.margin, self.distance, self.soft_margin)

    def distances(self, queries: Tensor, keys: Tensor) -> Tensor:
        return pairwise_distance(queries, keys, self.distance)

    def from_distances(
        self,
        dist: Tensor,
        anchor_idx: Tensor | None = None,
        positive_idx: Tensor | None = None,
        negative_idx: Tensor | None = None,
        positive_mask: Tensor | None = None,
        negative_mask: Tensor | None = None,
    ) -> Tensor:
        if positive_mask is not None and negative_mask is not None:
            if self.soft_margin:
                raise ValueError(
                    "the soft margin has no inactive triplets, so batch-all would score all O(N^3) of them; "
                    "set loss.soft_margin=false or use sampler=batch_hard."
                )
            return batch_all_triplet_margin(dist, positive_mask, negative_mask, self.margin)
        if anchor_idx is None or positive_idx is None or negative_idx is None:
            raise ValueError("from_distances needs index triplets or positive_mask and negative_mask")
        return triplet_margin_from_distances(
            dist, anchor_idx, positive_idx, negative_idx, self.margin, self.soft_margin
        )

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance={self.distance}, soft_margin={self.soft_margin}"
