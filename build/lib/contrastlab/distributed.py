"""Everything that talks to ``torch.distributed`` lives here; the rest of contrastlab calls it.

* :func:`gather` — all-gather along dim 0 **with gradients**: the backward pass sums the
  gradient of every rank's copy and returns the owner's slice, so each rank's loss over the
  global candidate set back-propagates into the rank that produced each row.
* :func:`rank_offset` — where this rank's rows start in the gathered tensor (to shift
  positive/exclude indices and ids).
* :func:`check_equal_batches` — gathered tensors must have the same size on every rank.
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


def check_equal_batches(local_size: int) -> None:
    """Raise when ranks hold different numbers of rows (gathers need equal sizes)."""
    if not is_distributed():
        return
    size = torch.tensor([local_size], dtype=torch.long)
    if dist.get_backend() == "nccl":
        size = size.cuda()
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    values = [int(s.item()) for s in sizes]
    if len(set(values)) != 1:
        raise RuntimeError(
            f"per-rank batch sizes differ ({values}); cross-rank negatives need equal batches: set data.drop_last=true."
        )
