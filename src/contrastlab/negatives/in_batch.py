"""In-batch negatives, optionally gathered across ranks."""

from __future__ import annotations

import torch
from torch import Tensor

from contrastlab import distributed
from contrastlab.negatives.candidates import Candidates
from contrastlab.negatives.kinds import CandidateSampler, PairKeys


class InBatch(CandidateSampler, PairKeys):
    """Every other view in the (global) batch is a negative (a candidate-set sampler for SimCLR, the
    keys of a pair loss for the two-tower objectives).

    For two views ``z1, z2`` (N, D) the queries are the local ``[z1; z2]`` (2N rows); the keys
    are the same rows from every rank when ``gather_across_ranks`` (rank-major blocks of 2N),
    so each anchor sees ``2N * world_size - 2`` negatives.
    """

    def __init__(self, gather_across_ranks: bool = True) -> None:
        super().__init__()
        self.gather_across_ranks = gather_across_ranks

    def pairs(self, z1: Tensor, z2: Tensor, labels: Tensor | None = None) -> Candidates:
        n = z1.shape[0]
        queries = torch.cat([z1, z2], dim=0)
        keys, offset = queries, 0
        if self.gather_across_ranks and distributed.is_distributed():
            keys = distributed.gather(queries)
            offset = distributed.rank_offset(2 * n)
        idx = torch.arange(2 * n, device=queries.device)
        return Candidates(queries, keys, positive_index=offset + (idx + n) % (2 * n), exclude_index=offset + idx)

    def forward(self, z1: Tensor, z2: Tensor, labels: Tensor | None = None, ids: Tensor | None = None) -> Candidates:
        """:meth:`pairs` (``ids`` are not needed: the positive is the other view)."""
        return self.pairs(z1, z2, labels)

    def two_tower_keys(self, a: Tensor, b: Tensor, b_negatives: Tensor | None = None) -> dict[str, Tensor | int]:
        """Keyword arguments of :func:`~contrastlab.losses.clip_loss` for matched rows ``a``, ``b`` (N, D) of two
        towers and optional extra ``b`` keys (K, D): with ``gather_across_ranks`` under DDP the keys are every
        rank's rows (this rank's start at ``offset``); otherwise the batch's own."""
        kw: dict[str, Tensor | int] = {}
        if self.gather_across_ranks and distributed.is_distributed():
            kw = {
                "all_image_features": distributed.gather(a),
                "all_text_features": distributed.gather(b),
                "offset": distributed.rank_offset(a.shape[0]),
            }
            b_negatives = distributed.gather(b_negatives) if b_negatives is not None else None
        if b_negatives is not None:
            kw["text_negatives"] = b_negatives
        return kw
