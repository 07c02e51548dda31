"""Learning-rate schedules and scaling rules (plain functions; the objectives call them)."""

from __future__ import annotations

import math

import torch
from torch import nn


def scaled_lr(base_lr: float, global_batch: int, rule: str = "none", base_batch: int = 256) -> float:
    """Learning rate for global batch ``B``.

    ``none``: base_lr; ``linear``: base_lr * B / base_batch (Goyal et al.); ``sqrt``: base_lr * sqrt(B / base_batch).
    """
    if rule == "none":
        return base_lr
    if rule == "linear":
        return base_lr * global_batch / base_batch
    if rule == "sqrt":
        return base_lr * math.sqrt(global_batch / base_batch)
    raise ValueError(f"objective.lr_scaling must be one of none, linear, sqrt; got '{rule}'.")


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int | None = None,
    warmup_fraction: float = 0.05,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ~0 to the base LR over ``warmup_steps`` (default: a fraction of the run),
    then cosine decay to ``min_lr_ratio * base_lr`` at ``total_steps``. Stepped every optimizer step."""
    total_steps = max(1, int(total_steps))
    warm = int(warmup_steps if warmup_steps is not None else round(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def constant(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """No schedule (factor 1 throughout)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights of linear/conv layers only; biases and norm parameters get none
    (timm's LARS adapts only groups with weight decay, so they are also excluded from LARS, as in SimCLR)."""
    decay, no_decay = [], []
    for p in module.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
