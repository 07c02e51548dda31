"""Learning-rate schedules and scaling rules (plain functions; the objectives call them)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from contrastlab.errors import check_choice

LrScaling = Literal["none", "linear", "sqrt"]


def scaled_lr(base_lr: float, global_batch: int, rule: str = "none", base_batch: int = 256) -> float:
    """Learning rate for global batch ``B``.

    ``none``: base_lr; ``linear``: base_lr * B / base_batch (Goyal et al.); ``sqrt``: base_lr * sqrt(B / base_batch).
    """
    check_choice(rule, LrScaling, "objective.lr_scaling")
    if rule == "none":
        return base_lr
    if rule == "linear":
        return base_lr * global_batch / base_batch
    return base_lr * math.sqrt(global_batch / base_batch)  # sqrt


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


def warmup_linear(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int | None = None,
    warmup_fraction: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """sentence-transformers' ``WarmupLinear`` (transformers' linear schedule): the LR factor at optimizer step
    ``t`` is ``t / W`` for ``t < W`` (``W`` = ``warmup_steps``, default ``round(warmup_fraction * T)``), then
    ``max(0, (T - t) / (T - W))``: up from 0 to the base LR, then linearly down to 0 at ``T = total_steps``."""
    total_steps = max(1, int(total_steps))
    warm = int(warmup_steps if warmup_steps is not None else round(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return step / max(1, warm)
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def constant(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """No schedule (factor 1 throughout)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


#: names of embedding tables and tokens (timm, open_clip, contrastlab towers): no weight decay
EMBEDDING_NAMES = ("cls_token", "dist_token", "reg_token", "mask_token", "class_embedding", "cls_emb")


def decays(name: str, param: nn.Parameter, owner: nn.Module | None = None) -> bool:
    """Whether ``param`` (``name`` in its model, ``owner`` the module holding it) gets weight decay.

    open_clip's convention, with embeddings added: weights of linear / conv layers and projection
    matrices decay; biases, norm weights, the logit scale and bias (every parameter with ``ndim <= 1``),
    embedding tables (``nn.Embedding``) and learned embeddings (a name holding ``embed``: position,
    class and token embeddings; ``cls_token``-style tokens) do not."""
    leaf = name.rsplit(".", 1)[-1]
    if param.ndim <= 1 or isinstance(owner, nn.Embedding):
        return False
    return "embed" not in leaf and leaf not in EMBEDDING_NAMES


def param_groups(module: nn.Module, weight_decay: float, lrs: Mapping[str, float] | None = None) -> list[dict]:
    """Optimizer groups of the trainable parameters of ``module``: ``[decay, no decay]`` (see :func:`decays`;
    timm's LARS adapts only groups with weight decay, so the others are also excluded from LARS, as in
    SimCLR), then, for ``lrs`` = ``{name prefix: learning rate}`` (e.g. ``{"encoder.": 1e-5}``), a decay and
    a no-decay group per rate holding the parameters whose longest matching prefix is that entry (empty
    ones left out); the first two groups take the optimizer's learning rate."""
    owners = {
        f"{prefix}.{n}" if prefix else n: mod
        for prefix, mod in module.named_modules()
        for n, _ in mod.named_parameters(recurse=False)
    }
    prefixes = sorted(lrs or {}, key=len, reverse=True)
    groups: dict[float | None, tuple[list, list]] = {None: ([], [])}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        lr = next((lrs[k] for k in prefixes if name.startswith(k)), None) if lrs else None
        decay, no_decay = groups.setdefault(lr, ([], []))
        (decay if decays(name, p, owners.get(name)) else no_decay).append(p)
    out = [{"params": groups[None][0], "weight_decay": weight_decay}, {"params": groups[None][1], "weight_decay": 0.0}]
    for lr, (decay, no_decay) in groups.items():
        if lr is None:
            continue
        out += [
            {"params": ps, "weight_decay": wd, "lr": lr} for ps, wd in ((decay, weight_decay), (no_decay, 0.0)) if ps
        ]
    return out
