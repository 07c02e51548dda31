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

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastlab.losses import checks
from contrastlab.losses.fused_info_nce import fused_info_nce


def _check_temperature(temperature: float | Tensor) -> None:
    """A clear error when ``temperature`` is not a positive finite number. A tensor (a learnable temperature) is
    read on the host only with the debug checks on (:mod:`contrastlab.losses.checks`)."""
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"temperature must have one element, got shape {tuple(temperature.shape)}")
        if not checks.enabled():
            return
    value = float(temperature.detach()) if isinstance(temperature, Tensor) else float(temperature)
    if not value > 0 or math.isinf(value):
        raise ValueError(f"temperature must be > 0, got {value}; set loss.temperature to a positive value.")


def info_nce(
    queries: Tensor,
    keys: Tensor,
    positive_index: Tensor | None = None,
    temperature: float | Tensor = 0.1,
    *,
    positive_mask: Tensor | None = None,
    exclude_index: Tensor | None = None,
    normalize: bool = True,
    chunk_size: int | None = None,
    key_mask: Tensor | None = None,
) -> Tensor:
    """InfoNCE of ``queries`` (N, D) against ``keys`` (M, D); returns a scalar.

    Args:
        positive_index: (N,) long, the key index of each query's positive. Default: ``arange(N)``
            (key ``i`` is the positive of query ``i``; needs ``M >= N``).
        temperature: float or a tensor with one element (e.g. ``1 / logit_scale.exp()``; gets a gradient).
        positive_mask: (N, M) bool, several positives per query (overrides ``positive_index``).
            Queries without any positive are left out of the mean.
        exclude_index: (N,) long, one key per query removed from the denominator (its own copy).
        normalize: L2-normalise queries and keys first.
        chunk_size: query rows per chunk of the similarity matrix in the memory-efficient mode.
            Setting it selects that mode; ``None`` selects it automatically when ``N * M`` exceeds
            :data:`contrastlab.losses.fused_info_nce.RECOMPUTE_ABOVE` (2**26). Only for single
            positives (``positive_mask`` always uses the plain autograd path).
        key_mask: (M,) bool, ``False`` for keys that are no candidate of any query (e.g. the empty slots of a
            memory bank): left out of every denominator and never a positive. Uses the plain autograd path.

    Index ranges, a tensor temperature's sign and ``exclude_index != positive_index`` are checked only with
    the debug checks on (:mod:`contrastlab.losses.checks`): they read tensors on the host.

    Logits are computed in float32 even under autocast; the result has the dtype of the
    float32/float64 inputs' promotion (float64 stays float64). Pass the same tensor as ``queries``
    and ``keys`` (e.g. with ``exclude_index`` the diagonal) to get the symmetric NT-Xent fast path.
    """
    _check_temperature(temperature)
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(
            f"queries (N, D) and keys (M, D) must share D, got {tuple(queries.shape)} and {tuple(keys.shape)}"
        )
    n, m = queries.shape[0], keys.shape[0]
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows or None, got {chunk_size}")
    _check_index("exclude_index", exclude_index, n, m)
    exclude_index = None if exclude_index is None else exclude_index.long()
    compute_dtype = torch.promote_types(torch.promote_types(queries.dtype, keys.dtype), torch.float32)
    same = queries is keys
    q = queries.to(compute_dtype)
    if normalize:
        q = F.normalize(q, dim=1)
    k = q if same else keys.to(compute_dtype)
    if normalize and not same:
        k = F.normalize(k, dim=1)
    if key_mask is not None and key_mask.shape != (m,):
        raise ValueError(f"key_mask must be (M,) = ({m},), got {tuple(key_mask.shape)}")
    if positive_mask is None and key_mask is not None:  # one positive per query, some keys masked out
        index = _default_positives(positive_index, n, m, q.device)
        positive_mask = torch.zeros(n, m, dtype=torch.bool, device=q.device).scatter_(1, index[:, None], True)
    if positive_mask is not None:
        if positive_mask.shape != (n, m):
            raise ValueError(f"positive_mask must be (N, M) = {(n, m)}, got {tuple(positive_mask.shape)}")
        return _info_nce_mask(q, k, positive_mask, temperature, exclude_index, key_mask)
    positive_index = _default_positives(positive_index, n, m, q.device)
    if checks.enabled() and exclude_index is not None and bool((exclude_index == positive_index).any()):
        raise ValueError("exclude_index equals positive_index for some query; keep positives as candidates")
    return fused_info_nce(
        q,
        k,
        positive_index,
        temperature,
        exclude_index=exclude_index,
        chunk_size=chunk_size,
        unit_norm=normalize,
    )


def _default_positives(positive_index: Tensor | None, n: int, m: int, device: torch.device) -> Tensor:
    """``positive_index`` checked and as long, or ``arange(N)`` (key ``i`` for query ``i``) when None."""
    if positive_index is None:
        if m < n:
            raise ValueError(
                f"default positives (key i for query i) need at least as many keys as queries, "
                f"got {m} < {n}; pass positive_index"
            )
        return torch.arange(n, device=device)
    _check_index("positive_index", positive_index, n, m)
    return positive_index.long()


def _check_index(name: str, index: Tensor | None, n: int, m: int) -> None:
    if index is None:
        return
    if index.shape != (n,) or index.dtype not in (torch.int64, torch.int32):
        got = f"{index.dtype} of shape {tuple(index.shape)}"
        raise ValueError(f"{name} must be an (N,) = ({n},) integer tensor, got {got}")
    if checks.enabled() and n and (int(index.min()) < 0 or int(index.max()) >= m):
        raise ValueError(f"{name} must index the {m} keys (0 <= index < {m})")


def _neg_inf(like: Tensor) -> Tensor:
    return torch.full((), float("-inf"), device=like.device, dtype=like.dtype)


def _info_nce_mask(
    q: Tensor,
    k: Tensor,
    positive_mask: Tensor,
    temperature: float | Tensor,
    exclude_index: Tensor | None,
    key_mask: Tensor | None = None,
) -> Tensor:
    """Plain autograd InfoNCE with a positive mask: ``L_i = lse_i - mean_{p in P(i)} l_ip``, averaged over the
    queries with a positive (zero, with a graph, when none has one). Nothing is read on the host."""
    n = q.shape[0]
    with torch.autocast(device_type=q.device.type, enabled=False):
        logits = (q @ k.T) / temperature
        rows = torch.arange(n, device=q.device)
        pos = positive_mask.to(torch.bool)
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask.to(torch.bool)[None, :], float("-inf"))
            pos = pos & key_mask.to(torch.bool)[None, :]
        if exclude_index is not None:
            logits = logits.index_put((rows, exclude_index), _neg_inf(logits))
            pos = pos.index_put((rows, exclude_index), torch.zeros((), device=q.device, dtype=torch.bool))
        lse = torch.logsumexp(logits, dim=1)
        n_pos = pos.sum(1)
        has_pos = n_pos > 0
        pos_logit = torch.where(pos, logits, torch.zeros_like(logits)).sum(1)
        per_query = torch.where(has_pos, lse - pos_logit / n_pos.clamp_min(1), torch.zeros_like(lse))
        return per_query.sum() / has_pos.sum().clamp_min(1).to(per_query.dtype)


def info_nce_plain(
    queries: Tensor,
    keys: Tensor,
    positive_index: Tensor | None = None,
    temperature: float | Tensor = 0.1,
    *,
    exclude_index: Tensor | None = None,
    normalize: bool = True,
) -> Tensor:
    """Single-positive InfoNCE written with plain autograd ops (the reference the fused kernel must equal)."""
    _check_temperature(temperature)
    compute_dtype = torch.promote_types(torch.promote_types(queries.dtype, keys.dtype), torch.float32)
    q, k = queries.to(compute_dtype), keys.to(compute_dtype)
    if normalize:
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    n = q.shape[0]
    rows = torch.arange(n, device=q.device)
    if positive_index is None:
        positive_index = rows
    with torch.autocast(device_type=q.device.type, enabled=False):
        logits = (q @ k.T) / temperature
        if exclude_index is not None:
            logits = logits.index_put((rows, exclude_index), _neg_inf(logits))
        return (torch.logsumexp(logits, dim=1) - logits[rows, positive_index]).mean()


def nt_xent(z1: Tensor, z2: Tensor, temperature: float | Tensor = 0.5, *, chunk_size: int | None = None) -> Tensor:
    """SimCLR's NT-Xent over 2N views: ``z1``, ``z2`` (N, D) are two views of the same N items.

    Mean over all 2N anchors; each anchor's positive is its other view and the remaining
    2N-2 views are its negatives. Inputs need not be normalised. Identical embeddings give
    ``log(2N - 1)``. ``chunk_size`` as in :func:`info_nce` (memory-efficient mode).
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(
            f"z1 and z2 must both be (N, D) with the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    n = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    idx = torch.arange(2 * n, device=z.device)
    return info_nce(z, z, (idx + n) % (2 * n), temperature, exclude_index=idx, chunk_size=chunk_size)


class InfoNCELoss(nn.Module):
    """Module form of :func:`info_nce` holding the temperature (and the optional ``chunk_size``)."""

    def __init__(self, temperature: float = 0.1, chunk_size: int | None = None) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature
        self.chunk_size = chunk_size

    def forward(
        self, queries: Tensor, keys: Tensor, positive_index: Tensor | None = None, **kw: Tensor | int | None
    ) -> Tensor:
        kw.setdefault("chunk_size", self.chunk_size)
        return info_nce(queries, keys, positive_index, self.temperature, **kw)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, chunk_size={self.chunk_size}"


class NTXentLoss(InfoNCELoss):
    """NT-Xent (SimCLR); the same math as :class:`InfoNCELoss`, default temperature 0.5."""

    def __init__(self, temperature: float = 0.5, chunk_size: int | None = None) -> None:
        super().__init__(temperature, chunk_size)
