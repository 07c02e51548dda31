"""A momentum (MoCo-style, He et al. 2020) key encoder: a moving average of the online network."""

from __future__ import annotations

import copy
from itertools import chain

import torch
from torch import Tensor, nn


class MomentumEncoder(nn.Module):
    """``theta_k <- momentum * theta_k + (1 - momentum) * theta_q`` after each :meth:`step`; buffers
    (BatchNorm statistics) are copied. Its parameters take no gradient and are saved with the model.

    Args:
        online: the modules applied in order (e.g. ``encoder, head``); they are deep-copied once and
            followed (not owned) afterwards.
    """

    def __init__(self, *online: nn.Module, momentum: float = 0.99) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}; set sampler.momentum (or null to disable).")
        self.momentum = momentum
        self.net = nn.Sequential(*(copy.deepcopy(m) for m in online))
        self.net.requires_grad_(False)
        self._online = list(online)  # a plain list: followed, not registered (no duplicate parameters)

    def _pairs(self, kind: str):
        online = chain.from_iterable(getattr(m, kind)() for m in self._online)
        return zip(getattr(self.net, kind)(), online, strict=True)

    @torch.no_grad()
    def step(self) -> None:
        for k, q in self._pairs("parameters"):
            k.mul_(self.momentum).add_(q.detach(), alpha=1.0 - self.momentum)
        for k, q in self._pairs("buffers"):
            k.copy_(q)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}"
