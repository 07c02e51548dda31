"""Embedding health: the collapse indicators of a representation.

All functions take embeddings ``z`` of shape (N, D) (any float dtype; computed in float64 for
the spectrum, float32 otherwise) and return Python floats.

* ``alignment(z1, z2)`` (Wang & Isola 2020): ``E ||f(x) - f(y)||_2^alpha`` over positive pairs
  ``(x, y)`` of L2-normalised embeddings; 0 is perfect alignment (lower is better).
* ``uniformity(z)`` (Wang & Isola 2020): ``log E_{i<j} exp(-t ||f(x_i) - f(x_j)||^2)`` over distinct
  pairs of L2-normalised embeddings; lower is more uniform (about ``-t * 2`` at best on a
  high-dimensional sphere), exactly 0 when every embedding is identical (collapse).
* ``effective_rank(z)`` (RankMe, Garrido et al. 2023): ``exp(H(p))`` with ``p_k = s_k / sum(s)`` the
  normalised singular values of ``z`` (not centred) and ``0 log 0 = 0``; between 1 (rank one, e.g.
  all rows identical) and ``min(N, D)``; 0 for an all-zero matrix.
* ``dimension_std(z)``: mean over dimensions of the (unbiased) std over samples of the
  L2-normalised embeddings; ``1/sqrt(D)`` for embeddings spread isotropically, 0 when collapsed
  (the one embedding-std metric: the collapse monitor's ``val/dim_std`` and the collapse guard's
  ``train/embedding_spread``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastlab.errors import ContrastlabWarning


class CollapseWarning(ContrastlabWarning):
    """The embedding space has collapsed (a watched health metric, e.g. :func:`dimension_std`, fell below
    its threshold); issued by the collapse monitor and the triplet objective's collapse guard."""


def _normalize(z: Tensor) -> Tensor:
    return F.normalize(z.float() if z.dtype in (torch.float16, torch.bfloat16) else z, dim=1)


@torch.no_grad()
def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> float:
    """Mean ``||n(z1_i) - n(z2_i)||^alpha`` over the N positive pairs (rows of ``z1``, ``z2``: (N, D))."""
    if z1.shape != z2.shape:
        raise ValueError(
            f"alignment needs paired embeddings of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    return float((_normalize(z1) - _normalize(z2)).norm(dim=1).pow(alpha).mean())


@torch.no_grad()
def uniformity(z: Tensor, t: float = 2.0) -> float:
    """``log mean_{i<j} exp(-t ||n(z_i) - n(z_j)||^2)`` over the N(N-1)/2 distinct pairs of ``z`` (N, D)."""
    if z.shape[0] < 2:
        raise ValueError("uniformity needs at least 2 embeddings")
    sq = torch.pdist(_normalize(z), p=2).pow(2)
    return float(torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel()))


@torch.no_grad()
def effective_rank(z: Tensor) -> float:
    """RankMe: ``exp(-sum_k p_k log p_k)``, ``p = s / s.sum()``, ``s`` the singular values of ``z`` (N, D)."""
    s = torch.linalg.svdvals(z.double())
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    return float(torch.exp(-torch.special.xlogy(p, p).sum()))


@torch.no_grad()
def dimension_std(z: Tensor) -> float:
    """Mean over the D dimensions of the unbiased std over the N samples of L2-normalised ``z``."""
    return float(dimension_std_tensor(z))


@torch.no_grad()
def dimension_std_tensor(z: Tensor) -> Tensor:
    """:func:`dimension_std` as a 0-d tensor on ``z``'s device (nothing read back: for training steps)."""
    if z.shape[0] < 2:
        raise ValueError("dimension_std needs at least 2 embeddings")
    return _normalize(z).std(dim=0).mean()


def embedding_health(
    z: Tensor,
    pairs: tuple[Tensor, Tensor] | None = None,
    alpha: float = 2.0,
    t: float = 2.0,
    max_samples: int | None = 4096,
    seed: int = 0,
) -> dict[str, float]:
    """``{"alignment" (when ``pairs`` is given), "uniformity", "effective_rank", "dim_std"}``.

    Uniformity is O(N^2): above ``max_samples`` rows it is computed on a fixed random subset
    (``seed``); the other metrics always use all rows.
    """
    out: dict[str, float] = {}
    if pairs is not None:
        out["alignment"] = alignment(pairs[0], pairs[1], alpha)
    sub = z
    if max_samples is not None and z.shape[0] > max_samples:
        g = torch.Generator().manual_seed(seed)
        sub = z[torch.randperm(z.shape[0], generator=g)[:max_samples]]
    out["uniformity"] = uniformity(sub, t)
    out["effective_rank"] = effective_rank(z)
    out["dim_std"] = dimension_std(z)
    return out
