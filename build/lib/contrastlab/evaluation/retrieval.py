"""Label-based retrieval metrics on cosine similarity, computed in chunks of queries.

A gallery item is *relevant* to a query when it has the query's label. Each query ranks the
gallery by cosine similarity, descending; ties are broken by gallery order (lower index first), so
results are deterministic. With no separate gallery, the queries are their own gallery and each
query's own row is excluded (leave-one-out).

* ``precision@1``: the top-ranked item is relevant.
* ``recall@k`` (the metric-learning convention, e.g. Oh Song et al. 2016): at least one of the top
  ``k`` items is relevant, averaged over queries. ``recall@1`` therefore equals ``precision@1``.
* ``map@r`` (Musgrave et al. 2020, "A Metric Learning Reality Check"): with ``R`` the number of
  relevant gallery items of a query, ``AP@R = (1/R) sum_{i<=R} P(i) rel(i)`` where ``P(i)`` is the
  precision of the top ``i`` and ``rel(i)`` says whether the i-th item is relevant.

Queries with a negative label (unlabelled) or no relevant gallery item are skipped; the count of
queries used is returned as ``num_queries``. Memory: a (chunk, N_gallery) block at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def retrieval_metrics(
    queries: Tensor,
    query_labels: Tensor,
    gallery: Tensor | None = None,
    gallery_labels: Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Returns ``{"precision@1", "recall@k" for k in ks, "map@r", "num_queries"}``.

    Args:
        queries: (Q, D) embeddings; query_labels: (Q,) long.
        gallery: (G, D) embeddings and gallery_labels (G,), or None for leave-one-out on the queries.
    """
    self_gallery = gallery is None
    if self_gallery:
        gallery, gallery_labels = queries, query_labels
    assert gallery is not None and gallery_labels is not None
    if any(k < 1 for k in ks):
        raise ValueError(f"retrieval ks must be >= 1, got {list(ks)}")
    q_all = F.normalize(queries.float() if queries.dtype != torch.float64 else queries, dim=1)
    g = F.normalize(gallery.to(q_all.dtype), dim=1)
    ql, gl = query_labels.long().cpu(), gallery_labels.long().cpu()
    # relevant counts per label present in the gallery
    counts = torch.bincount(gl[gl >= 0], minlength=int(max(ql.max(), gl.max(), 0)) + 1)
    n_rel = torch.where(ql >= 0, counts[ql.clamp(min=0)], torch.zeros_like(ql))
    if self_gallery:
        n_rel = n_rel - (ql >= 0).long()  # the query itself is not in its own gallery
    depth = min(max(max(ks), int(n_rel.max()) if n_rel.numel() else 1), g.shape[0] - int(self_gallery))

    hits = dict.fromkeys(ks, 0.0)
    top1, ap_sum, used = 0.0, 0.0, 0
    ranks = torch.arange(1, depth + 1, dtype=torch.float64)
    for start in range(0, q_all.shape[0], chunk_size):
        q = q_all[start : start + chunk_size]
        sim = q @ g.T
        if self_gallery:
            rows = torch.arange(q.shape[0])
            sim[rows, rows + start] = -float("inf")
        order = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :depth].cpu()
        lab = ql[start : start + q.shape[0]]
        r = n_rel[start : start + q.shape[0]]
        keep = (lab >= 0) & (r > 0)
        if not keep.any():
            continue
        rel = (gl[order[keep]] == lab[keep, None]).to(torch.float64)  # (kept, depth)
        r = r[keep].to(torch.float64)
        used += int(keep.sum())
        top1 += float(rel[:, 0].sum())
        for k in ks:
            hits[k] += float((rel[:, :k].sum(1) > 0).sum())
        within_r = ranks[None, :] <= r[:, None]
        precision_at_i = rel.cumsum(1) / ranks
        ap_sum += float(((precision_at_i * rel * within_r).sum(1) / r).sum())
    if used == 0:
        raise ValueError("no query has a relevant gallery item (are the labels all -1, or every label unique?)")
    out = {"precision@1": top1 / used}
    out.update({f"recall@{k}": hits[k] / used for k in ks})
    out["map@r"] = ap_sum / used
    out["num_queries"] = float(used)
    return out
