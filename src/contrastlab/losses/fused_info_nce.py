"""Single-positive InfoNCE as one custom ``autograd.Function``: fast, and chunked when large.

Inputs are already L2-normalised (or not, see ``unit_norm``) queries ``q`` (N, D) and keys
``k`` (M, D), a positive key per query ``p`` (N,), optionally one excluded key per query ``x``
(N,), and ``1/t``. With logits ``L = q k^T / t`` and ``E_ij = exp(L_ij - c_i)`` (``E_ij = 0``
for excluded keys)::

    s_i    = sum_j E_ij,   lse_i = log s_i + c_i,   loss = mean_i (lse_i - L_{i p_i})
    dL     = (diag(1/s) E - onehot(p)) * g / N                       (g: upstream gradient)
    dq     = dL k / t = (diag(1/s) E k - k[p]) * g / (N t)
    dk     = dL^T q / t = (E^T (q / s) - scatter_add_p(q)) * g / (N t)
    dt     = -<dq, q> / t                                             (since sum dL * L = t <dq, q>)

so the backward is two (N, M) x (M, D)-sized products and nothing else of size N x M; the
temperature gradient costs one (N, D) dot product.

Two modes:

* ``recompute=False`` keeps ``E`` (N x M) from the forward for the backward (fastest: forward
  one product + one in-place ``exp``, backward two products).
* ``recompute=True`` never holds more than ``chunk`` rows of the N x M matrix: the forward keeps
  only ``s`` and ``c`` (N,), the backward recomputes each chunk of ``E`` (one extra product).

Shift ``c``: with unit-norm inputs every logit lies in ``[-1/t, 1/t]``, so when
``1/t + log M`` is below the dtype's exp range no shift is needed (``c = 0``); otherwise ``c``
is the row maximum. A tensor temperature (learnable, e.g. CLIP's) is never read on the host, so it
always gets the row-maximum shift.

With ``c = 0`` and ``q is k`` (NT-Xent) the unexcluded matrix ``F = exp(q q^T / t)`` is symmetric and
``E = F - X`` with ``X`` the excluded entries ``X_{i x_i} = F_{i x_i}``, so
``E^T v = E v + X v - X^T v``: the backward is one product ``E [k, q/s]`` plus an O(N D) correction,
which is exactly zero for the diagonal (``x_i = i``). Nothing in here reads a tensor on the host.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# Largest |exponent| used without a per-row shift: exp(80) and exp(700) are finite in float32 / float64
# with head-room for the row sum.
_EXP_LIMIT = {torch.float32: 80.0, torch.float64: 700.0}

#: Above this many similarity entries (N * M) the memory-efficient (recomputing) mode is used.
RECOMPUTE_ABOVE = 2**26
#: Default chunk: rows such that one chunk holds about this many similarity entries.
CHUNK_ELEMENTS = 2**25


def default_chunk_rows(num_keys: int) -> int:
    """Rows per chunk so that a chunk of the similarity matrix holds ~``CHUNK_ELEMENTS`` entries."""
    return max(1, CHUNK_ELEMENTS // max(num_keys, 1))


def _exp_chunk(
    buf: Tensor,
    qs: Tensor,
    k: Tensor,
    exclude: Tensor | None,
    shift: Tensor | None,
    *,
    find_shift: bool = False,
) -> Tensor:
    """``buf <- exp(qs k^T - shift)`` in place, excluded entries 0; ``buf`` (rows, M) contiguous.

    With ``find_shift`` the row maxima are first written into ``shift`` (rows,).
    """
    torch.mm(qs, k.T, out=buf)
    if exclude is not None:
        rows = torch.arange(buf.shape[0], device=buf.device)
        buf.view(-1).index_fill_(0, rows * buf.shape[1] + exclude, float("-inf"))
    if shift is not None:
        if find_shift:
            torch.amax(buf, dim=1, out=shift)
        buf.sub_(shift.unsqueeze(1))
    return buf.exp_()


class SinglePositiveInfoNCE(torch.autograd.Function):
    """``apply(q, k, temperature, positive_index, exclude_index, inv_t, chunk, recompute, symmetric,
    unit_norm)`` -> scalar loss. ``temperature`` is a tensor (gets a gradient) or ``None``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        q: Tensor,
        k: Tensor,
        temperature: Tensor | None,
        positive_index: Tensor,
        exclude_index: Tensor | None,
        inv_t: float | Tensor,
        chunk: int,
        recompute: bool,
        symmetric: bool,
        unit_norm: bool,
    ) -> Tensor:
        with torch.autocast(q.device.type, enabled=False):
            n, m = q.shape[0], k.shape[0]
            row_shift = not unit_norm or isinstance(inv_t, Tensor) or inv_t + math.log(max(m, 1)) > _EXP_LIMIT[q.dtype]
            symmetric = symmetric and not row_shift
            qs = q * inv_t
            s = torch.empty(n, dtype=q.dtype, device=q.device)
            shift = torch.empty(n, dtype=q.dtype, device=q.device) if row_shift else None
            if recompute:
                chunk = max(1, min(chunk, n))
                scratch = torch.empty(chunk, m, dtype=q.dtype, device=q.device)
            else:
                chunk = n
                scratch = torch.empty(n, m, dtype=q.dtype, device=q.device)
            for a in range(0, n, chunk):
                b = min(a + chunk, n)
                excl = None if exclude_index is None else exclude_index[a:b]
                sh = None if shift is None else shift[a:b]
                e = _exp_chunk(scratch[: b - a], qs[a:b], k, excl, sh, find_shift=True)
                torch.sum(e, dim=1, out=s[a:b])
            lse = s.log() if shift is None else s.log().add_(shift)
            pos_logit = (qs * k[positive_index]).sum(1)
            loss = (lse - pos_logit).mean()
        ctx.save_for_backward(q, k, temperature, positive_index, exclude_index, s, shift)
        ctx.kept = None if recompute else scratch
        ctx.inv_t, ctx.chunk, ctx.symmetric = inv_t, chunk, symmetric
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        q, k, temperature, positive_index, exclude_index, s, shift = ctx.saved_tensors
        inv_t, chunk, symmetric, kept = ctx.inv_t, ctx.chunk, ctx.symmetric, ctx.kept
        ctx.kept = None
        n, m, d = q.shape[0], k.shape[0], q.shape[1]
        with torch.autocast(q.device.type, enabled=False):
            r = s.reciprocal().unsqueeze(1)  # (N, 1): softmax normaliser per row
            q_over_s = q * r
            scratch = torch.empty(min(chunk, n), m, dtype=q.dtype, device=q.device) if kept is None else None
            qs = q * inv_t if kept is None else None

            def e_rows(a: int, b: int) -> Tensor:
                if kept is not None:
                    return kept[a:b]
                excl = None if exclude_index is None else exclude_index[a:b]
                sh = None if shift is None else shift[a:b]
                return _exp_chunk(scratch[: b - a], qs[a:b], k, excl, sh)

            if symmetric:  # E symmetric: E^T (q/s) = E (q/s); one product per chunk
                rhs = torch.cat([k, q_over_s], dim=1)  # (M, 2D)
                out = torch.empty(n, 2 * d, dtype=q.dtype, device=q.device)
                for a in range(0, n, chunk):
                    b = min(a + chunk, n)
                    torch.mm(e_rows(a, b), rhs, out=out[a:b])
                ek, et_q = out[:, :d], out[:, d:]
                if exclude_index is not None:
                    # E^T v = E v + X v - X^T v (module docstring); X v - X^T v summed first, so that it is
                    # exactly zero for the diagonal
                    f = (q[exclude_index] * q).sum(1).mul_(inv_t).exp_().unsqueeze(1)  # F_{i x_i}, (N, 1)
                    corr = (f * q_over_s[exclude_index]).index_add_(0, exclude_index, f * q_over_s, alpha=-1)
                    et_q = et_q + corr
            else:  # skip the product a gradient nobody asked for needs (e.g. detached memory-bank keys)
                need_dq = ctx.needs_input_grad[0] or ctx.needs_input_grad[2]  # dt is computed from dq
                ek = torch.empty(n, d, dtype=q.dtype, device=q.device) if need_dq else None
                et_q = torch.zeros(m, d, dtype=q.dtype, device=q.device) if ctx.needs_input_grad[1] else None
                for a in range(0, n, chunk):
                    b = min(a + chunk, n)
                    e = e_rows(a, b)
                    if ek is not None:
                        torch.mm(e, k, out=ek[a:b])
                    if et_q is not None:
                        et_q.addmm_(e.T, q_over_s[a:b])
            scale = grad * (inv_t / n)
            dq = None if ek is None else (ek * r).sub_(k[positive_index]).mul_(scale)
            dk = None if et_q is None else et_q.index_add_(0, positive_index, q, alpha=-1).mul_(scale)
            dt = None
            if temperature is not None and ctx.needs_input_grad[2]:
                dt = (-(dq * q).sum() * inv_t).reshape(temperature.shape).to(temperature.dtype)
        if symmetric:  # q is k: one gradient for the shared tensor
            return dq.add_(dk), None, dt, None, None, None, None, None, None, None
        dq_out = dq if ctx.needs_input_grad[0] else None
        return dq_out, dk, dt, None, None, None, None, None, None, None


def fused_info_nce(
    q: Tensor,
    k: Tensor,
    positive_index: Tensor,
    temperature: float | Tensor,
    *,
    exclude_index: Tensor | None = None,
    chunk_size: int | None = None,
    recompute: bool | None = None,
    unit_norm: bool = True,
) -> Tensor:
    """InfoNCE with one positive per query via :class:`SinglePositiveInfoNCE`.

    ``q`` (N, D) and ``k`` (M, D) in float32/float64 (normalised when ``unit_norm``);
    ``positive_index``/``exclude_index`` (N,) long. ``recompute=None`` chooses the memory-efficient
    mode when ``chunk_size`` is given or ``N * M > RECOMPUTE_ABOVE``. Pass the *same* tensor as
    ``q`` and ``k`` with ``exclude_index`` the diagonal (or ``None``) for the symmetric NT-Xent fast path.
    """
    n, m = q.shape[0], k.shape[0]
    if recompute is None:
        recompute = chunk_size is not None or n * m > RECOMPUTE_ABOVE
    chunk = chunk_size if chunk_size is not None else default_chunk_rows(m)
    t_tensor = temperature if isinstance(temperature, Tensor) else None
    # a tensor temperature stays on the device (reading it would wait for the queued kernels)
    inv_t = t_tensor.detach().to(q.dtype).reciprocal() if t_tensor is not None else 1.0 / float(temperature)
    symmetric = q is k and n == m
    return SinglePositiveInfoNCE.apply(
        q, k, t_tensor, positive_index, exclude_index, inv_t, chunk, recompute, symmetric, unit_norm
    )
