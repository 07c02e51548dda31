"""Cross-modal retrieval (image→text, text→image; query→document for bi-encoders), computed in chunks.

Two sets of L2-normalised features, ``A`` (N_a, D) (e.g. images) and ``B`` (N_b, D) (e.g. captions),
and ``owner`` (N_b,): the row of ``A`` each row of ``B`` belongs to (several captions per image share
an owner; ``-1`` marks a distractor that belongs to no row of ``A``). For a query, the relevant
gallery items are those with the same id, and its rank is::

    rank(q) = 1 + #{ g : s(q, g) > max_{g' relevant} s(q, g') }       (1 = a relevant item is first)

ties with the best relevant item count in the query's favour. ``recall@k = mean(rank <= k)``, and
the median rank is the usual median of the ranks (mean of the two middle values for an even count).
Only a ``chunk_size x N_gallery`` block of the similarity matrix exists at any time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def retrieval_ranks(
    queries: Tensor, gallery: Tensor, query_ids: Tensor, gallery_ids: Tensor, chunk_size: int = 1024
) -> Tensor:
    """(Q,) long: the 1-based rank of each query's best-ranked relevant gallery item (same id); scored in
    float32, or float64 when both sets are float64."""
    dtype = torch.float64 if queries.dtype == gallery.dtype == torch.float64 else torch.float32
    q = F.normalize(queries.to(dtype), dim=1)
    g = F.normalize(gallery.to(dtype), dim=1)
    gallery_ids = gallery_ids.to(g.device)
    ranks = []
    for qc, idc in zip(q.split(chunk_size), query_ids.to(q.device).split(chunk_size), strict=True):
        sims = qc @ g.T
        relevant = idc[:, None] == gallery_ids[None, :]
        if not bool(relevant.any(1).all()):
            raise ValueError("every query needs at least one relevant gallery item (an item with its id).")
        best = sims.masked_fill(~relevant, float("-inf")).amax(1)
        ranks.append((sims > best[:, None]).sum(1) + 1)
    return torch.cat(ranks).cpu()


def median_rank(ranks: Tensor) -> float:
    """The median of ``ranks`` (mean of the two middle values when their count is even)."""
    r = ranks.double().sort().values
    n = r.numel()
    return float((r[(n - 1) // 2] + r[n // 2]) / 2)


def chance_recall(n_relevant: Tensor, gallery_size: int, k: int) -> float:
    """Expected recall@k of a random ranking: ``mean_q 1 - C(G - m_q, k) / C(G, k)`` for ``m_q`` relevant
    items among ``G``."""
    k = min(k, gallery_size)
    m = n_relevant.double()
    miss = torch.ones_like(m)
    for j in range(k):  # P(no relevant item among the first k) = prod_j (G - m - j) / (G - j)
        miss = miss * ((gallery_size - m - j).clamp_min(0) / (gallery_size - j))
    return float((1 - miss).mean())


def cross_modal_retrieval(
    a: Tensor,
    b: Tensor,
    owner: Tensor,
    names: tuple[str, str] = ("i2t", "t2i"),
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
    with_chance: bool = True,
) -> dict[str, float]:
    """Recall@k both ways, median ranks, their chance levels, and ``mean_recall`` (mean of all recalls).

    Args:
        a: (N_a, D) features of the first set (images / queries); every row must own some row of ``b``.
        b: (N_b, D) features of the second set (captions / documents).
        owner: (N_b,) long, the row of ``a`` each row of ``b`` belongs to, or -1 (distractor).
        names: metric prefixes for a→b and b→a.
    Returns keys ``{a2b}_recall@{k}``, ``{a2b}_median_rank``, ``{a2b}_recall@{k}_chance`` and the same
    for b→a (over the rows of ``b`` with an owner), and ``mean_recall``.
    """
    owner = owner.long().cpu()
    if owner.shape[0] != b.shape[0]:
        raise ValueError(f"owner must have one entry per row of b, got {owner.shape[0]} for {b.shape[0]} rows")
    a_ids = torch.arange(a.shape[0])
    owned = owner >= 0
    ranks = {
        names[0]: retrieval_ranks(a, b, a_ids, owner, chunk_size),
        names[1]: retrieval_ranks(b[owned.to(b.device)], a, owner[owned], a_ids, chunk_size),
    }
    n_relevant = {
        names[0]: torch.bincount(owner[owned], minlength=a.shape[0]),
        names[1]: torch.ones(int(owned.sum())),
    }
    gallery = {names[0]: b.shape[0], names[1]: a.shape[0]}
    out: dict[str, float] = {}
    recalls = []
    for name, r in ranks.items():
        for k in ks:
            out[f"{name}_recall@{k}"] = float((r <= k).double().mean())
            recalls.append(out[f"{name}_recall@{k}"])
            if with_chance:
                out[f"{name}_recall@{k}_chance"] = chance_recall(n_relevant[name], gallery[name], k)
        out[f"{name}_median_rank"] = median_rank(r)
    out["mean_recall"] = sum(recalls) / len(recalls)
    return out
