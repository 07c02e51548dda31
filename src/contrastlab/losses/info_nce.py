"""InfoNCE / NT-Xent.

For queries ``q_i`` and keys ``k_j`` (both L2-normalised) with temperature ``t``::

    l_ij  = q_i . k_j / t                       (logits, float32)
    L_i   = logsumexp_{j not excluded} l_ij - mean_{p in P(i)} l_ip
    loss  = mean_i L_i                           (over queries with at least one positive)

``P(i)`` is a single key (``positive_index[i]``) or a set (``positive_mask[i]``, the
supervised-contrastive "L_out" form). Excluded keys (``exclude_index``, e.g. a query's own
copy among the keys) leave the denominator. NT-Xent (SimCLR) is the special case
``queries = keys = [z1; z2]``, positive of row ``i`` is row ``(i + N) mod 2N``, row ``i`` excluded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_temperature(temperature: float | Tensor) -> None:
    if not isinstance(temperature, Tensor) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; set loss.temperature to a positive value.")


def info_nce(
    queries: Tensor,
    keys: Tensor,
    positive_index: Tensor | None = None,
    temperature: float | Tensor = 0.1,
    *,
    positive_mask: Tensor | None = None,
    exclude_index: Tensor | None = None,
    normalize: bool = True,
) -> Tensor:
    """InfoNCE of ``queries`` (N, D) against ``keys`` (M, D); returns a scalar.

    Args:
        positive_index: (N,) long, the key index of each query's positive. Default: ``arange(N)``
            (key ``i`` is the positive of query ``i``; needs ``M >= N``).
        positive_mask: (N, M) bool, several positives per query (overrides ``positive_index``).
            Queries without any positive are left out of the mean.
        exclude_index: (N,) long, one key per query removed from the denominator (its own copy).
        normalize: L2-normalise queries and keys first.

    Logits are computed in float32 even under autocast; the result has the dtype of the
    float32/float64 inputs' promotion (float64 stays float64).
    """
    _check_temperature(temperature)
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries (N, D) and keys (M, D) must share D, got {tuple(queries.shape)} and {tuple(keys.shape)}")
    n, m = queries.shape[0], keys.shape[0]
    compute_dtype = torch.promote_types(torch.promote_types(queries.dtype, keys.dtype), torch.float32)
    q, k = queries.to(compute_dtype), keys.to(compute_dtype)
    if normalize:
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    with torch.autocast(device_type=q.device.type, enabled=False):
        logits = (q @ k.T) / temperature
        rows = torch.arange(n, device=q.device)
        if exclude_index is not None:
            logits = logits.index_put((rows, exclude_index), torch.tensor(float("-inf"), device=q.device, dtype=logits.dtype))
        lse = torch.logsumexp(logits, dim=1)
        if positive_mask is None:
            if positive_index is None:
                if m < n:
                    raise ValueError(f"default positives need at least as many keys as queries, got {m} < {n}")
                positive_index = rows
            return (lse - logits[rows, positive_index]).mean()
        pos = positive_mask.to(logits.dtype)
        if exclude_index is not None:
            pos = pos.index_put((rows, exclude_index), torch.zeros((), device=q.device, dtype=pos.dtype))
        n_pos = pos.sum(1)
        has_pos = n_pos > 0
        if not bool(has_pos.any()):
            return logits.sum() * 0.0  # no positives anywhere: zero loss, graph still attached
        pos_logit = torch.where(pos.bool(), logits, torch.zeros_like(logits)).sum(1)
        per_query = lse - pos_logit / n_pos.clamp_min(1)
        return per_query[has_pos].mean()


def nt_xent(z1: Tensor, z2: Tensor, temperature: float | Tensor = 0.5) -> Tensor:
    """SimCLR's NT-Xent over 2N views: ``z1``, ``z2`` (N, D) are two views of the same N items.

    Mean over all 2N anchors; each anchor's positive is its other view and the remaining
    2N-2 views are its negatives. Inputs need not be normalised. Identical embeddings give
    ``log(2N - 1)``.
    """
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    idx = torch.arange(2 * n, device=z.device)
    return info_nce(z, z, (idx + n) % (2 * n), temperature, exclude_index=idx)


class InfoNCELoss(nn.Module):
    """Module form of :func:`info_nce` holding the temperature."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    def forward(self, queries: Tensor, keys: Tensor, positive_index: Tensor | None = None, **kw: Tensor) -> Tensor:
        return info_nce(queries, keys, positive_index, self.temperature, **kw)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class NTXentLoss(InfoNCELoss):
    """NT-Xent (SimCLR); the same math as :class:`InfoNCELoss`, default temperature 0.5."""

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__(temperature)
