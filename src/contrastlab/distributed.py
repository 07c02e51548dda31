"""Everything that talks to ``torch.distributed`` lives here; the rest of contrastlab calls it.

* :func:`gather` — all-gather along dim 0 **with gradients**: the backward pass sums the
  gradient of every rank's copy and returns the owner's slice, so each rank's loss over the
  global candidate set back-propagates into the rank that produced each row.
* :func:`rank_offset` — where this rank's rows start in the gathered tensor (to shift
  positive/exclude indices and ids).
* :func:`check_equal_batches` — gathered tensors must have the same size on every rank (compared on
  the host, over a gloo group: the check never waits for the GPU).
* :func:`shard_bounds`, :func:`gather_rows`, :func:`gather_lists`, :func:`max_over_ranks` — evaluation
  split across ranks:
  each rank takes a contiguous slice of a dataset, and the slices' rows (of any, unequal, lengths) are
  concatenated back in rank order.
* :func:`launched_by_torchrun` — for start-up checks that must trust the launcher's GPU view.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def launched_by_torchrun() -> bool:
    """Started by torchrun (TorchElastic), which may show each process only its own GPU."""
    return dist.is_available() and dist.is_torchelastic_launched()


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather(x: Tensor, *, with_grad: bool = True) -> Tensor:
    """Concatenate ``x`` (B, ...) from all ranks in rank order -> (world_size * B, ...).

    Identity when not distributed. With ``with_grad`` the result is differentiable.
    """
    if not is_distributed():
        return x
    check_equal_batches(x.shape[0])
    if with_grad and x.requires_grad:
        return _GatherWithGrad.apply(x)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, dim=0)


def rank_offset(local_size: int) -> int:
    """Index of this rank's first row in a tensor gathered with :func:`gather`."""
    return rank() * local_size


_host_groups: dict[int, object] = {}


def host_group() -> object | None:
    """A process group over every rank that exchanges CPU tensors: the default group under gloo (``None``),
    else a gloo group created once (collectively, at the first call of every rank). Host integers sent
    through it never wait for a device's queued kernels."""
    if dist.get_backend() == "gloo":
        return None
    world = id(dist.group.WORLD)
    if world not in _host_groups:
        _host_groups[world] = dist.new_group(backend="gloo")
    return _host_groups[world]


def _host_all_gather_ints(value: int) -> list[int]:
    """``value`` of every rank, in rank order (CPU tensors over :func:`host_group`)."""
    size = torch.tensor([value], dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size, group=host_group())
    return torch.cat(sizes).tolist()


def check_equal_batches(local_size: int) -> None:
    """Raise when ranks hold different numbers of rows (gathers need equal sizes). The sizes are host
    integers compared over a CPU group, so the check costs no device synchronisation."""
    if not is_distributed():
        return
    values = _host_all_gather_ints(local_size)
    if len(set(values)) != 1:
        raise RuntimeError(
            f"per-rank batch sizes differ ({values}); cross-rank negatives need equal batches: set data.drop_last=true."
        )


# --------------------------------------------------------------------------- evaluation split across ranks
def shard_bounds(n: int) -> tuple[int, int]:
    """``[start, end)`` of this rank's contiguous share of ``n`` items (shares differ by at most one;
    ``(0, n)`` in a single process). Concatenating every rank's share in rank order gives ``0..n-1``."""
    r, w = rank(), world_size()
    return r * n // w, (r + 1) * n // w


def max_over_ranks(value: int) -> int:
    """The largest ``value`` of any rank (host integers over :func:`host_group`)."""
    if not is_distributed():
        return value
    return max(_host_all_gather_ints(value))


def gather_rows(x: Tensor) -> Tensor:
    """Every rank's ``x`` (B_r, ...) concatenated in rank order -> (sum_r B_r, ...), on ``x``'s device; the
    row counts may differ across ranks (the other dimensions and the dtype must not). CPU tensors travel
    over :func:`host_group`, device tensors over the default group. Identity in a single process."""
    if not is_distributed():
        return x
    counts = _host_all_gather_ints(x.shape[0])
    group = host_group() if x.device.type == "cpu" else None
    padded = x.new_zeros((max(counts), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


def gather_lists(items: list) -> list:
    """Every rank's list (of picklable items, e.g. captions) concatenated in rank order (over
    :func:`host_group`). Identity in a single process."""
    if not is_distributed():
        return items
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, list(items), group=host_group())
    return [x for part in parts for x in part]
