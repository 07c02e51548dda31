"""SimCLR (Chen et al. 2020): two augmented views, shared encoder, projection head, NT-Xent."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from contrastlab.negatives.kinds import CandidateSampler, Memory, NeedsIds
from contrastlab.objectives.base import ContrastiveObjective


class SimCLR(ContrastiveObjective):
    """``z_v = head(encoder(view_v))`` for both views; the negatives strategy turns ``(z1, z2)``
    into a candidate set (in-batch, gathered across ranks, memory bank, ...) and the loss
    (NT-Xent / InfoNCE) scores it. The sampler is a
    :class:`~contrastlab.negatives.kinds.CandidateSampler`; one with a
    :class:`~contrastlab.negatives.kinds.Memory` stores the batch after the loss."""

    objective_name = "simclr"
    consumes = "candidates"
    sampler_kind = CandidateSampler
    supports_grad_cache = True
    negatives: CandidateSampler

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        x1, x2 = batch["views"][:2]
        z1, z2 = self.grad_cache(self, [(self.project, x1), (self.project, x2)])  # = project(x1), project(x2)
        ids = batch["index"] if isinstance(self.negatives, NeedsIds) else None
        cands = self.negatives(z1, z2, batch.get("label"), ids=ids)
        loss = self.loss(cands.queries, cands.keys, **cands.loss_kwargs())
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        self.log_candidates(cands.keys, cands.key_mask)
        if isinstance(self.negatives, Memory):  # e.g. the memory bank enqueues this batch after the loss
            self.negatives.update(torch.cat([z1, z2]).detach(), batch)
        return loss
