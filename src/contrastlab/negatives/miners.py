"""Online triplet miners: choose triplets from a distance matrix in O(N*M) memory.

Queries (anchors, N rows) are compared with keys (M columns: the batch itself, possibly gathered
from every rank, plus memory-bank or ANN-mined rows). Key ``j`` is a *positive* of query ``i`` when
their targets (labels, or image ids for view positives) are equal and ``j`` is not ``i``'s own row;
a *negative* when the targets differ. Targets < 0 (unknown) are neither.

Strategies (``d`` = distance, ``m`` = margin):

* ``batch_hard`` — per anchor with a positive and a negative: its farthest positive and nearest
  negative (Hermans et al. 2017). One triplet per anchor.
* ``semi_hard`` — per positive pair ``(a, p)``: the nearest negative farther than the positive,
  ``d_an > d_ap`` (FaceNet; it is *semi-hard*, i.e. active, when also ``d_an < d_ap + m``, and gives
  zero loss otherwise). **Fallback** when every negative is at least as close as the positive (no
  ``d_an > d_ap``): the farthest negative, the least hard of the hard ones — never the hardest,
  which is what collapses early training. One triplet per positive pair.
* ``batch_all`` — every valid ``(a, p, n)`` with a positive loss ``d_ap - d_an + m > 0``. Training
  uses it as masks (:func:`~contrastlab.losses.batch_all_triplet_margin`, O(N*M)); :func:`mine_triplets`
  can also enumerate the triplets, whose number itself can be O(N * K * M).

Ties are broken towards the lowest key index. Anchors (or pairs) without a positive or without any
negative yield no triplet. Nothing here builds an (N, M, M) tensor: each block of anchor rows is
sorted once and ``searchsorted`` finds the semi-hard / active negatives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from contrastlab import distributed
from contrastlab.errors import check_choice
from contrastlab.losses.triplet import pairwise_distance, rowwise_searchsorted
from contrastlab.negatives.candidates import MinedTriplets, TripletCandidates
from contrastlab.negatives.kinds import Miner

Strategy = Literal["batch_hard", "semi_hard", "batch_all"]
STRATEGIES = get_args(Strategy)


def check_strategy(strategy: str) -> None:
    check_choice(strategy, Strategy, "sampler.strategy")


def target_masks(query_targets: Tensor, key_targets: Tensor, self_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(positive_mask, negative_mask)`` (N, M) bool: same / different known target (>= 0); with
    ``self_index`` (N,), each query's own key is no positive."""
    q, k = query_targets[:, None], key_targets[None, :]
    known = (q >= 0) & (k >= 0)
    pos, neg = known & (q == k), known & (q != k)
    if self_index is not None:
        rows = torch.arange(q.shape[0], device=q.device)
        pos[rows, self_index] = False
    return pos, neg


def _row_blocks(n: int, m: int, budget: int | None) -> int:
    """Rows per block so a block's (rows, M) work tensors stay within ``budget`` elements (default
    N*M/4, and at least 2^22: a training batch of up to 2,048 rows is one block)."""
    budget = budget if budget is not None else max(n * m // 4, 1 << 22)
    return max(1, min(n, budget // max(1, m)))


@torch.no_grad()
def mine_from_distances(
    dist: Tensor,
    query_targets: Tensor,
    key_targets: Tensor,
    strategy: str,
    margin: float = 0.2,
    self_index: Tensor | None = None,
    block_elements: int | None = None,
) -> MinedTriplets:
    """Mine on a (detached) distance matrix ``dist`` (N, M). Batch-hard and semi-hard return index
    triplets; batch-all returns the masks (see the module docstring). Anchor rows are processed in
    blocks of at most ``block_elements`` matrix entries, so the extra memory is a fraction of N*M."""
    check_strategy(strategy)
    n, m = dist.shape
    if query_targets.shape != (n,) or key_targets.shape != (m,):
        raise ValueError(
            f"targets must be (N,)=({n},) and (M,)=({m},), "
            f"got {tuple(query_targets.shape)} and {tuple(key_targets.shape)}"
        )
    dist = dist.detach()
    rows_per_block = _row_blocks(n, m, block_elements)
    a_parts, p_parts, n_parts = [], [], []
    pos_masks, neg_masks = [], []
    # statistics stay on the device (read only when logged)
    num, active, hardest_sum, hardest_count = (dist.new_zeros((), dtype=torch.float64) for _ in range(4))
    for r0 in range(0, n, rows_per_block):
        d = dist[r0 : r0 + rows_per_block]
        sidx = None if self_index is None else self_index[r0 : r0 + rows_per_block]
        pos, neg = target_masks(query_targets[r0 : r0 + rows_per_block], key_targets, sidx)
        inf = torch.tensor(float("inf"), dtype=d.dtype, device=d.device)
        d_neg = torch.where(neg, d, inf)
        nearest_neg, nearest_idx = d_neg.min(1)  # first occurrence on ties
        has_neg, has_pos = neg.any(1), pos.any(1)
        hardest_sum += torch.where(has_neg, nearest_neg, torch.zeros_like(nearest_neg)).double().sum()
        hardest_count += has_neg.sum()
        if strategy == "batch_hard":
            valid = has_pos & has_neg
            far_pos = torch.where(pos, d, -inf).argmax(1)
            a = torch.nonzero(valid).squeeze(1)
            p, ng = far_pos[a], nearest_idx[a]
            loss = d[a, p] - d[a, ng] + margin
        elif strategy == "semi_hard":
            neg_sorted, order = d_neg.sort(dim=1, stable=True)
            a, p = torch.nonzero(pos & has_neg[:, None], as_tuple=True)
            d_ap = d[a, p]
            first_farther = rowwise_searchsorted(neg_sorted, a, d_ap, right=True)  # first s_j > d_ap
            farthest = torch.where(neg, d, -inf).argmax(1)
            farther_exists = first_farther < neg.sum(1)[a]
            ng = torch.where(farther_exists, order[a, first_farther.clamp_max(m - 1)], farthest[a])
            loss = d_ap - d[a, ng] + margin
        else:  # batch_all: masks, counted with one sort per block
            neg_sorted = d_neg.sort(dim=1).values
            a, p = torch.nonzero(pos, as_tuple=True)
            count = rowwise_searchsorted(neg_sorted, a, d[a, p] + margin, right=False)  # s_j < d_ap + m
            num += (pos.sum(1) * neg.sum(1)).double().sum()
            active += count.double().sum()
            pos_masks.append(pos)
            neg_masks.append(neg)
            continue
        a_parts.append(a + r0)
        p_parts.append(p)
        n_parts.append(ng)
        num += a.numel()
        active += (loss > 0).double().sum()
    stats = {
        "num_triplets": num,
        "active_fraction": active / num.clamp_min(1),  # 0 without triplets
        "hardest_negative_distance": hardest_sum / hardest_count.clamp_min(1),
    }
    if strategy == "batch_all":
        return MinedTriplets(positive_mask=torch.cat(pos_masks), negative_mask=torch.cat(neg_masks), stats=stats)
    return MinedTriplets(torch.cat(a_parts), torch.cat(p_parts), torch.cat(n_parts), stats=stats)


@torch.no_grad()
def enumerate_batch_all(
    dist: Tensor,
    positive_mask: Tensor,
    negative_mask: Tensor,
    margin: float = 0.2,
    block_elements: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Every ``(a, p, n)`` of the masks with ``d_ap - d_an + margin > 0``, in (a, p, n) order.

    Positive pairs are processed in blocks whose (pairs, M) comparison stays within ``block_elements``
    (default N*M); the output has one entry per active triplet and can itself be O(N * K * M)."""
    n, m = dist.shape
    pa, pp = torch.nonzero(positive_mask, as_tuple=True)
    step = max(1, (block_elements or n * m) // max(1, m))
    out_a, out_p, out_n = [], [], []
    for s in range(0, pa.numel(), step):
        a, p = pa[s : s + step], pp[s : s + step]
        active = negative_mask[a] & (dist[a, p][:, None] - dist[a] + margin > 0)
        k, ng = torch.nonzero(active, as_tuple=True)
        out_a.append(a[k])
        out_p.append(p[k])
        out_n.append(ng)
    empty = torch.zeros(0, dtype=torch.long, device=dist.device)
    cat = lambda xs: torch.cat(xs) if xs else empty  # noqa: E731
    return cat(out_a), cat(out_p), cat(out_n)


def mine_triplets(
    embeddings: Tensor,
    labels: Tensor,
    strategy: str = "semi_hard",
    margin: float = 0.2,
    distance: str = "cosine",
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    block_elements: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(anchor_idx, positive_idx, negative_idx)`` (T,) long for ``embeddings`` (N, D) with ``labels`` (N,).

    Anchors are rows of ``embeddings``; positives and negatives index ``ref_embeddings`` (M, D) with
    ``ref_labels`` when given (e.g. a memory bank), else ``embeddings`` itself (an anchor is never its
    own positive). Labels < 0 are unknown (never positive nor negative). See the module docstring for
    the strategies; for ``batch_all`` the active triplets are enumerated.
    """
    check_strategy(strategy)
    keys, key_labels = (embeddings, labels) if ref_embeddings is None else (ref_embeddings, ref_labels)
    if key_labels is None:
        raise ValueError("ref_labels is required with ref_embeddings")
    with torch.no_grad():
        dist = pairwise_distance(embeddings.detach(), keys.detach(), distance)
    self_index = torch.arange(embeddings.shape[0], device=embeddings.device) if ref_embeddings is None else None
    mined = mine_from_distances(dist, labels, key_labels, strategy, margin, self_index, block_elements)
    if strategy == "batch_all":
        return enumerate_batch_all(dist, mined.positive_mask, mined.negative_mask, margin, block_elements)  # type: ignore[arg-type]
    return mined.anchor_idx, mined.positive_idx, mined.negative_idx  # type: ignore[return-value]


class TripletMiner(Miner):
    """The ``sampler=batch_hard|semi_hard|batch_all`` strategy for the triplet objective.

    :meth:`candidates` builds the candidate set (the local batch against the batch gathered from
    every rank when ``gather_across_ranks``); :meth:`mine` picks triplets on its distance matrix.
    """

    def __init__(self, strategy: Strategy = "semi_hard", gather_across_ranks: bool = True) -> None:
        super().__init__()
        check_strategy(strategy)
        self.strategy, self.gather_across_ranks = strategy, gather_across_ranks

    def batch_candidates(self, z: Tensor, targets: Tensor) -> TripletCandidates:
        """Queries ``z`` (R, D) with ``targets`` (R,); keys: the same rows from every rank (rank-major)."""
        keys, key_targets, offset = z, targets, 0
        if self.gather_across_ranks and distributed.is_distributed():
            keys = distributed.gather(z)
            key_targets = distributed.gather(targets, with_grad=False)
            offset = distributed.rank_offset(z.shape[0])
        self_index = offset + torch.arange(z.shape[0], device=z.device)
        return TripletCandidates(z, keys, targets, key_targets, self_index)

    def candidates(
        self,
        z: Tensor,
        ids: Tensor,
        labels: Tensor,
        positives: str,
        batch: dict[str, Any],
        embed: Callable[[Tensor], Tensor] | None = None,
    ) -> TripletCandidates:
        return self.batch_candidates(z, labels if positives == "labels" else ids)

    def mine(self, dist: Tensor, cands: TripletCandidates, margin: float) -> MinedTriplets:
        return mine_from_distances(
            dist, cands.query_targets, cands.key_targets, self.strategy, margin, cands.self_index
        )

    def extra_repr(self) -> str:
        return f"strategy={self.strategy}, gather_across_ranks={self.gather_across_ranks}"
