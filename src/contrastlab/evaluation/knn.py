"""Weighted k-nearest-neighbour classification on cosine similarity (Wu et al. 2018).

For a query ``q`` with top-k neighbours ``j`` (cosine similarity ``s_j``) the score of class
``c`` is ``sum_j exp(s_j / T) * [y_j == c]``; the prediction is the arg-max.

Memory is bounded whatever the bank's size: queries are processed in chunks of ``chunk_size`` rows and,
for each, the bank in chunks of ``bank_chunk_size`` rows, keeping a running top-k (the top-k of a union
is the top-k of the chunks' top-ks), so at most ``chunk_size x bank_chunk_size`` similarities exist at
once and the bank is never copied whole. The same merge combines the top-ks of banks split across ranks
(:func:`knn_neighbours` on each rank's part, then :func:`merge_neighbours`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: bank rows per similarity block (with 1,024 queries: 64 Mi float32 similarities, 256 MiB)
BANK_CHUNK = 65536


def merge_neighbours(sims: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` most similar of candidate neighbours ``sims``/``labels`` (Q, K') -> (Q, min(k, K')) each,
    sorted by decreasing similarity."""
    top, pos = sims.topk(min(k, sims.shape[1]), dim=1)
    return top, labels.gather(1, pos)


@torch.no_grad()
def knn_neighbours(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    k: int = 20,
    chunk_size: int = 1024,
    bank_chunk_size: int = BANK_CHUNK,
) -> tuple[Tensor, Tensor]:
    """``(similarities, labels)`` (Q, min(k, N)) of each query's ``k`` nearest training items (cosine),
    most similar first, computed chunk by chunk (see the module docstring)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = train_features.shape[0]
    k = min(k, n)
    queries = F.normalize(query_features.float(), dim=1)
    labels = train_labels.long()
    sims_out, labels_out = [], []
    for q in queries.split(chunk_size):
        best_s = q.new_empty(q.shape[0], 0)
        best_y = labels.new_empty(q.shape[0], 0)
        for start in range(0, n, bank_chunk_size):
            bank = F.normalize(train_features[start : start + bank_chunk_size].float(), dim=1)
            s, idx = (q @ bank.T).topk(min(k, bank.shape[0]), dim=1)
            y = labels[start : start + bank_chunk_size][idx]
            best_s, best_y = merge_neighbours(torch.cat([best_s, s], 1), torch.cat([best_y, y], 1), k)
        sims_out.append(best_s)
        labels_out.append(best_y)
    return torch.cat(sims_out), torch.cat(labels_out)


def knn_scores(sims: Tensor, labels: Tensor, num_classes: int, temperature: float = 0.07) -> Tensor:
    """Class scores (Q, C) from neighbours (Q, k): ``sum_j exp(s_j / T) [y_j == c]``."""
    weights = (sims / temperature).exp()
    scores = torch.zeros(sims.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    return scores.scatter_add_(1, labels, weights)


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    bank_chunk_size: int = BANK_CHUNK,
) -> Tensor:
    """Class scores (Q, C) of each query from its k nearest training items."""
    num_classes = num_classes or int(train_labels.max()) + 1
    sims, labels = knn_neighbours(train_features, train_labels, query_features, k, chunk_size, bank_chunk_size)
    return knn_scores(sims, labels, num_classes, temperature)


def topk_accuracy(scores: Tensor, labels: Tensor, top: tuple[int, ...] = (1,)) -> dict[int, float]:
    """Top-``t`` accuracy of class ``scores`` (Q, C) against ``labels`` (Q,) for each ``t`` in ``top``."""
    result = {}
    for t in top:
        pred = scores.topk(min(t, scores.shape[1]), dim=1).indices
        result[t] = float((pred == labels[:, None]).any(1).float().mean())
    return result


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    query_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    top: tuple[int, ...] = (1,),
    bank_chunk_size: int = BANK_CHUNK,
) -> dict[int, float]:
    """Top-``t`` accuracy for each ``t`` in ``top`` of :func:`knn_predict`."""
    num_classes = int(max(train_labels.max(), query_labels.max())) + 1
    scores = knn_predict(
        train_features, train_labels, query_features, k, temperature, num_classes, bank_chunk_size=bank_chunk_size
    )
    return topk_accuracy(scores, query_labels, top)
