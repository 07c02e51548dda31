"""Weighted k-nearest-neighbour classification on cosine similarity (Wu et al. 2018).

For a query ``q`` with top-k neighbours ``j`` (cosine similarity ``s_j``) the score of class
``c`` is ``sum_j exp(s_j / T) * [y_j == c]``; the prediction is the arg-max. Queries are
processed in chunks so the (Q, N) similarity matrix never needs to exist whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> Tensor:
    """Class scores (Q, C) of each query from its k nearest training items."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    num_classes = num_classes or int(train_labels.max()) + 1
    bank = F.normalize(train_features.float(), dim=1)
    k = min(k, bank.shape[0])
    out = []
    for q in F.normalize(query_features.float(), dim=1).split(chunk_size):
        sim, idx = (q @ bank.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        scores = torch.zeros(q.shape[0], num_classes, dtype=weights.dtype)
        scores.scatter_add_(1, train_labels[idx], weights)
        out.append(scores)
    return torch.cat(out)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    query_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    top: tuple[int, ...] = (1,),
) -> dict[int, float]:
    """Top-``t`` accuracy for each ``t`` in ``top`` of :func:`knn_predict`."""
    num_classes = int(max(train_labels.max(), query_labels.max())) + 1
    scores = knn_predict(train_features, train_labels, query_features, k, temperature, num_classes)
    result = {}
    for t in top:
        pred = scores.topk(min(t, num_classes), dim=1).indices
        result[t] = float((pred == query_labels[:, None]).any(1).float().mean())
    return result
