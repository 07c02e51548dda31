"""Clustering quality of an embedding: k-means (scikit-learn) with k = number of classes, scored by
NMI (arithmetic-mean normalisation) and ARI against the labels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch import Tensor


def kmeans_assign(
    features: Tensor, n_clusters: int, n_init: int = 10, seed: int = 0, normalize: bool = True
) -> np.ndarray:
    """Cluster ids (N,) of k-means on ``features`` (N, D), L2-normalised first when ``normalize``
    (so Euclidean k-means ranks by cosine similarity, as the other metrics do)."""
    if n_clusters < 1 or n_clusters > features.shape[0]:
        raise ValueError(f"n_clusters must be in [1, {features.shape[0]}], got {n_clusters}")
    x = F.normalize(features.double(), dim=1) if normalize else features.double()
    km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed)
    return km.fit_predict(x.cpu().numpy())


def cluster_scores(assignment: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> dict[str, float]:
    """``{"nmi", "ari"}`` of a cluster assignment against labels (both (N,))."""
    a, y = np.asarray(assignment), np.asarray(labels)
    return {"nmi": float(normalized_mutual_info_score(y, a)), "ari": float(adjusted_rand_score(y, a))}


def clustering_metrics(
    features: Tensor, labels: Tensor, n_clusters: int | None = None, n_init: int = 10, seed: int = 0
) -> dict[str, float]:
    """k-means with ``n_clusters`` (default: the number of distinct labels) scored by NMI and ARI.
    Unlabelled rows (label < 0) are left out."""
    keep = labels >= 0
    feats, labs = features[keep], labels[keep]
    k = n_clusters or int(torch.unique(labs).numel())
    return cluster_scores(kmeans_assign(feats, k, n_init, seed), labs.cpu().numpy())
