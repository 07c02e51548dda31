"""A FIFO memory bank of past embeddings (Wu et al. 2018; MoCo; XBM, Wang et al. 2020).

The queue holds ``size`` rows of (embedding, id, label). Its rows are extra keys: extra negatives for
InfoNCE/NT-Xent, and extra candidates (negatives and positives) for triplet mining. The objective
calls :meth:`MemoryBank.update` after the loss; the batch is gathered from every rank first, so all
ranks enqueue the same rows in the same (rank) order and their queues stay identical.

State that matters is checkpointed: ``queue``, ``queue_ids``, ``queue_labels``, ``ptr`` and
``filled`` are registered buffers (and the momentum encoder's weights are parameters), so a
resumed run continues with the same queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from contrastlab import distributed
from contrastlab.negatives.candidates import Candidates, TripletCandidates
from contrastlab.negatives.kinds import BindsEncoder, CandidateSampler, Memory, NeedsIds
from contrastlab.negatives.miners import TripletMiner
from contrastlab.negatives.momentum import MomentumEncoder


class MemoryBank(TripletMiner, CandidateSampler, Memory, NeedsIds, BindsEncoder):
    """``sampler=memory_bank``: a miner (triplet) and a candidate-set sampler (InfoNCE) with a memory;
    it needs the batch's ids and binds a momentum key encoder to the objective's network.

    Args:
        size: rows in the queue; must hold at least one global batch of enqueued rows.
        dim: embedding width; ``None`` takes it from the first batch (and from a loaded checkpoint).
        momentum: ``None`` enqueues the online embeddings (detached); a value in [0, 1) enqueues the
            embeddings of a momentum key encoder (MoCo) updated with it every step.
        label_positives: for InfoNCE, every key with the query's label is a positive (SupCon-style);
            otherwise the positives are the query's other view and older rows of the same image id.
        mining: the triplet strategy over batch + queue (``batch_hard``, ``semi_hard``, ``batch_all``).
        gather_across_ranks: the batch part of the keys comes from every rank.
    """

    def __init__(
        self,
        size: int = 4096,
        dim: int | None = None,
        momentum: float | None = None,
        label_positives: bool = False,
        mining: str = "semi_hard",
        gather_across_ranks: bool = True,
    ) -> None:
        super().__init__(mining, gather_across_ranks)
        if size < 1:
            raise ValueError(f"sampler.size must be >= 1, got {size}.")
        self.size, self.momentum, self.label_positives = int(size), momentum, label_positives
        self.register_buffer("queue", torch.zeros(self.size, dim or 0))
        self.register_buffer("queue_ids", torch.full((self.size,), -1, dtype=torch.long))
        self.register_buffer("queue_labels", torch.full((self.size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.key_encoder: MomentumEncoder | None = None

    # --- wiring ------------------------------------------------------------------------------------
    def bind(self, *online: nn.Module) -> None:
        """Called by the objective with its (encoder, head): builds the momentum key encoder if asked."""
        if self.momentum is not None:
            self.key_encoder = MomentumEncoder(*online, momentum=float(self.momentum))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        saved = state_dict.get(prefix + "queue")
        if saved is not None and self.queue.shape[1] == 0 and saved.shape[0] == self.size:
            self.queue = torch.zeros_like(saved, device=self.queue.device)  # lazily sized: take the saved width
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- the queue -----------------------------------------------------------------------------------
    def memory(self) -> tuple[Tensor, Tensor, Tensor]:
        """The valid rows: ``(embeddings (Q, D), ids (Q,), labels (Q,))``, Q = ``filled``."""
        q = int(self.filled)
        return self.queue[:q], self.queue_ids[:q], self.queue_labels[:q]

    @torch.no_grad()
    def enqueue(self, embeddings: Tensor, ids: Tensor, labels: Tensor | None = None) -> None:
        """Append ``embeddings`` (B, D) with ``ids``/``labels`` (B,) from every rank (rank order), FIFO.

        Writing wraps around the end of the queue: the first ``size - ptr`` rows go to the end, the
        rest to the start, so no row of the batch is dropped."""
        labels = torch.full_like(ids, -1) if labels is None else labels
        emb = distributed.gather(embeddings.detach(), with_grad=False)
        ids = distributed.gather(ids.to(self.queue_ids.device), with_grad=False)
        labels = distributed.gather(labels.to(self.queue_labels.device), with_grad=False)
        b = emb.shape[0]
        if b > self.size:
            raise ValueError(
                f"sampler.size={self.size} is smaller than the {b} rows enqueued per step; "
                f"set sampler.size to at least {b}."
            )
        if self.queue.shape[1] == 0:
            self.queue = torch.zeros(self.size, emb.shape[1], device=self.queue.device, dtype=self.queue.dtype)
        if emb.shape[1] != self.queue.shape[1]:
            raise ValueError(f"embeddings have width {emb.shape[1]} but the queue holds {self.queue.shape[1]}")
        p = int(self.ptr)
        first = min(b, self.size - p)
        for dst, src in (
            (self.queue, emb.to(self.queue.dtype)),
            (self.queue_ids, ids),
            (self.queue_labels, labels),
        ):
            dst[p : p + first] = src[:first]
            dst[: b - first] = src[first:]
        self.ptr.fill_((p + b) % self.size)
        self.filled.fill_(min(int(self.filled) + b, self.size))

    @torch.no_grad()
    def update(self, embeddings: Tensor, batch: dict[str, Any]) -> None:
        """Enqueue after the loss. ``embeddings`` are the projections of ``batch["views"]`` stacked
        view-major (V*B rows); with a momentum encoder its embeddings of the same views are enqueued."""
        ids = torch.as_tensor(batch["index"], device=embeddings.device)
        views = embeddings.shape[0] // ids.shape[0]
        labels = batch.get("label")
        labels = None if labels is None else torch.as_tensor(labels, device=embeddings.device).repeat(views)
        if self.key_encoder is not None:
            self.key_encoder.step()
            embeddings = self.key_encoder(torch.cat(list(batch["views"][:views])))
        self.enqueue(embeddings, ids.repeat(views), labels)

    # --- what the losses see ---------------------------------------------------------------------------
    def forward(self, z1: Tensor, z2: Tensor, labels: Tensor | None = None, ids: Tensor | None = None) -> Candidates:
        """InfoNCE candidates: queries ``[z1; z2]`` (2N, D); keys = the batch (gathered) then the queue.

        Positives: the other view, plus (``label_positives`` with labels) every key of the same label,
        or else every queued row of the same image id. Each query's own row is excluded."""
        n = z1.shape[0]
        queries = torch.cat([z1, z2])
        if ids is None:
            raise ValueError("the memory bank needs batch['index'] ids; pass ids=")
        q_ids = ids.to(queries.device).repeat(2)
        q_labels = torch.full_like(q_ids, -1) if labels is None else labels.to(queries.device).repeat(2)
        use_labels = self.label_positives and bool((q_labels >= 0).all())
        q_targets = q_labels if use_labels else q_ids
        cands = self.batch_candidates(queries, q_targets)
        keys, key_targets = self._append_memory(cands.keys, cands.key_targets, by_labels=use_labels)
        rows = torch.arange(2 * n, device=queries.device)
        offset = int(cands.self_index[0]) if cands.self_index is not None else 0  # type: ignore[index]
        mask = q_targets[:, None] == key_targets[None, :]
        mask[rows, offset + (rows + n) % (2 * n)] = True
        mask[rows, cands.self_index] = False
        return Candidates(queries, keys, positive_mask=mask, exclude_index=cands.self_index)

    def candidates(
        self,
        z: Tensor,
        ids: Tensor,
        labels: Tensor,
        positives: str,
        batch: dict[str, Any],
        embed: Callable[[Tensor], Tensor] | None = None,
    ) -> TripletCandidates:
        """Triplet candidates: the batch (gathered) then the queue, targets = labels or image ids."""
        cands = super().candidates(z, ids, labels, positives, batch, embed)
        cands.keys, cands.key_targets = self._append_memory(cands.keys, cands.key_targets, positives == "labels")
        return cands

    def _append_memory(self, keys: Tensor, targets: Tensor, by_labels: bool) -> tuple[Tensor, Tensor]:
        """``keys`` (M, D) and ``targets`` (M,) followed by the queue's valid rows and their labels or ids."""
        bank, bank_ids, bank_labels = self.memory()
        if bank.shape[0] == 0:
            return keys, targets
        return torch.cat([keys, bank.to(keys.dtype)]), torch.cat([targets, bank_labels if by_labels else bank_ids])

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, momentum={self.momentum}, label_positives={self.label_positives}, "
            f"mining={self.strategy}"
        )
