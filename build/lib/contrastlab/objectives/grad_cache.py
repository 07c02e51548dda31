"""Gradient caching (GradCache; Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under
Memory Limited Setup"): a contrastive batch of B rows at the activation memory of m rows.

A contrastive loss couples every row of the batch, so it cannot be split into independent
micro-batches — but the *encoder* can. With embeddings ``Z = f_theta(X)`` (B, D) and a loss ``L(Z, s)``
(``s``: e.g. CLIP's ``logit_scale``)::

    dL/dtheta = sum_k  (dZ_k/dtheta)^T  dL/dZ_k          (Z_k: the rows of micro-batch k)

so one step is

1. embed every micro-batch without a graph (saving each one's RNG state) -> ``Z`` (B, D);
2. compute ``L(Z, s)`` with a graph to ``Z`` and ``s``; autograd gives ``dL/dZ`` and ``dL/ds``;
3. for each micro-batch: re-embed it *with* a graph under its saved RNG state (the same dropout
   masks / in-model augmentations) and back-propagate the cached ``dL/dZ_k`` into ``theta``.

Here steps 1 and 3 are the forward and backward of one :class:`torch.autograd.Function` whose inputs
are the module's trainable parameters, so the objective returns an ordinary loss and Lightning's
``loss.backward()`` drives everything:

* ``dL/ds`` flows through the ordinary graph exactly once (never once per micro-batch);
* AMP: step 3 re-enters the autocast state of step 1; the loss scale (fp16) and the
  ``1/accumulate_grad_batches`` factor arrive in the cached ``dL/dZ`` like in any backward;
* DDP: step 3 computes parameter gradients with ``torch.autograd.grad`` (summed over micro-batches in
  this function), and returns them as the function's input gradients, so every parameter's gradient
  is accumulated — and DDP's all-reduce hook fires — once per backward, as without caching
  (no ``no_sync`` needed; cross-rank negatives work because ``Z`` is gathered like any embedding).

Limits. BatchNorm in training mode normalises each micro-batch with its own statistics, so the
result equals a full-batch step only with BN-free encoders, BN in eval mode or frozen towers; the
running statistics are updated once per micro-batch in step 1 and restored after each replay in
step 3. Step 3 costs one more forward per micro-batch (about +30 % compute, like activation
checkpointing). Random numbers drawn in step 1 are replayed from the saved CPU (and CUDA) RNG states.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

#: one input stream: an embedding function and its batch (a tensor (B, ...) or a list of B items),
#: e.g. ``(model.encode_image, images)``; the function maps a slice of the batch to (b, D) rows.
Stream = tuple[Callable[[Any], Tensor], Any]


def _length(x: Any) -> int:
    return int(x.shape[0]) if isinstance(x, Tensor) else len(x)


@dataclass
class _Plan:
    """What the replay needs: the streams, their micro-batch slices and each slice's RNG states."""

    streams: Sequence[Stream]
    micro_batch_size: int
    device: torch.device
    slices: list[list[slice]] = field(default_factory=list)
    rng: list[list[tuple[Tensor, Tensor | None]]] = field(default_factory=list)
    autocast: tuple[bool, torch.dtype] | None = None

    def __post_init__(self) -> None:
        m = self.micro_batch_size
        self.slices = [[slice(i, i + m) for i in range(0, _length(x), m)] for _, x in self.streams]

    # --- random numbers ------------------------------------------------------------------------------
    def save_rng(self) -> tuple[Tensor, Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    @contextmanager
    def replay_rng(self, state: tuple[Tensor, Tensor | None]) -> Iterator[None]:
        """Run under ``state``; the global RNG is left as it was before."""
        cuda_devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices, device_type="cuda"):
            torch.set_rng_state(state[0])
            if state[1] is not None:
                torch.cuda.set_rng_state(state[1], self.device)
            yield

    # --- autocast ------------------------------------------------------------------------------------
    def save_autocast(self) -> None:
        kind = self.device.type
        self.autocast = (torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))

    def replay_autocast(self) -> torch.autocast:
        enabled, dtype = self.autocast or (False, torch.float32)
        return torch.autocast(self.device.type, dtype=dtype, enabled=enabled)


@contextmanager
def _keep_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """Restore every BatchNorm's running statistics on exit (the replay must not update them twice)."""
    saved = [
        (m, [b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)])
        for m in module.modules()
        if isinstance(m, _BatchNorm) and m.training and m.track_running_stats and m.running_mean is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in saved:
                m.running_mean.copy_(mean)  # type: ignore[union-attr]
                m.running_var.copy_(var)  # type: ignore[union-attr]
                m.num_batches_tracked.copy_(count)  # type: ignore[union-attr]


class _CachedEmbeddings(torch.autograd.Function):
    """forward: embed every micro-batch without a graph -> one (B_s, D) tensor per stream.
    backward: replay each micro-batch with a graph and pull its rows' cached gradient into the
    parameters; returns the summed parameter gradients."""

    @staticmethod
    def forward(ctx, plan: _Plan, module: nn.Module, *params: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        plan.save_autocast()
        outs = []
        for (fn, x), slices in zip(plan.streams, plan.slices, strict=True):
            states, parts = [], []
            for s in slices:
                states.append(plan.save_rng())
                parts.append(fn(x[s]).detach())
            plan.rng.append(states)
            outs.append(torch.cat(parts))
        ctx.plan, ctx.module = plan, module
        ctx.save_for_backward(*params)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        plan: _Plan = ctx.plan
        params = ctx.saved_tensors
        total: list[Tensor | None] = [None] * len(params)
        for (fn, x), slices, states, grad in zip(plan.streams, plan.slices, plan.rng, grads, strict=True):
            if grad is None:  # this stream's rows did not reach the loss
                continue
            for s, state in zip(slices, states, strict=True):
                # statistics restored after the gradient: BatchNorm's backward checks they are unchanged
                with plan.replay_rng(state), _keep_batchnorm_statistics(ctx.module):
                    with torch.enable_grad(), plan.replay_autocast():
                        out = fn(x[s])
                    part = torch.autograd.grad(out, params, grad[s].to(out.dtype), allow_unused=True)
                for i, g in enumerate(part):
                    if g is not None:
                        total[i] = g if total[i] is None else total[i] + g  # type: ignore[operator]
        return (None, None, *total)


class GradCache:
    """``objective.grad_cache``: embed in micro-batches of ``micro_batch_size`` rows with gradient
    caching (see the module docstring); ``None`` turns it off.

    ``cache(module, streams)`` returns one (B_s, D) tensor per stream, equal to
    ``[fn(x) for fn, x in streams]`` in value and in the gradients a loss on them sends to
    ``module``'s parameters. Outside training (no grad mode) or when off, it is exactly that list.
    """

    def __init__(self, micro_batch_size: int | None = None) -> None:
        if micro_batch_size is not None and int(micro_batch_size) < 1:
            raise ValueError(
                f"objective.grad_cache.micro_batch_size must be a positive number of rows or null (off), "
                f"got {micro_batch_size}."
            )
        self.micro_batch_size = None if micro_batch_size is None else int(micro_batch_size)

    @classmethod
    def from_config(cls, config: GradCache | Mapping[str, Any] | None) -> GradCache:
        if isinstance(config, GradCache):
            return config
        return cls(**dict(config or {}))

    @property
    def enabled(self) -> bool:
        return self.micro_batch_size is not None

    def __call__(self, module: nn.Module, streams: Sequence[Stream]) -> list[Tensor]:
        if not self.enabled or not torch.is_grad_enabled():
            return [fn(x) for fn, x in streams]
        params = [p for p in module.parameters() if p.requires_grad]
        device = next(module.parameters()).device
        plan = _Plan(streams, self.micro_batch_size, device)  # type: ignore[arg-type]
        if not params:  # every tower frozen: nothing to replay
            with torch.no_grad():
                return [fn(x) for fn, x in streams]
        return list(_CachedEmbeddings.apply(plan, module, *params))

    def __repr__(self) -> str:
        return f"GradCache(micro_batch_size={self.micro_batch_size})"
