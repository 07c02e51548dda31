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
        """The valid rows: ``(embeddings (Q, D), ids (Q,), labels (Q,))``, Q = ``filled`` (read on the host:
        for inspection; training uses the whole queue and :meth:`valid_rows`)."""
        q = int(self.filled)
        return self.queue[:q], self.queue_ids[:q], self.queue_labels[:q]

    def valid_rows(self) -> Tensor:
        """(size,) bool: which slots hold an enqueued row (the first ``filled``; FIFO fills them in order)."""
        return torch.arange(self.size, device=self.filled.device) < self.filled

    @torch.no_grad()
    def enqueue(self, embeddings: Tensor, ids: Tensor, labels: Tensor | None = None) -> None:
        """Append ``embeddings`` (B, D) with ``ids``/``labels`` (B,) from every rank (rank order), FIFO.

        Writing wraps around the end of the queue: the first ``size - ptr`` rows go to the end, the
        rest to the start, so no row of the batch is dropped. ``ptr`` and ``filled`` stay tensors and the
        slots are computed on the device: nothing is read back."""
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
        slots = (self.ptr + torch.arange(b, device=self.ptr.device)) % self.size  # b <= size: distinct slots
        self.queue.index_copy_(0, slots.to(self.queue.device), emb.to(self.queue.dtype))
        self.queue_ids.index_copy_(0, slots.to(self.queue_ids.device), ids.to(self.queue_ids.dtype))
        self.queue_labels.index_copy_(0, slots.to(self.queue_labels.device), labels.to(self.queue_labels.dtype))
        self.ptr.copy_((self.ptr + b) % self.size)
        self.filled.copy_((self.filled + b).clamp_max(self.size))

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
        """InfoNCE candidates: queries ``[z1; z2]`` (2N, D); keys = the batch (gathered) then the whole queue,
        whose empty slots are masked out (``key_mask``).

        Positives: the other view, plus every key of the same label (``label_positives``, for queries with a
        known label >= 0) or else every queued row of the same image id. Each query's own row is excluded."""
        n = z1.shape[0]
        queries = torch.cat([z1, z2])
        if ids is None:
            raise ValueError("the memory bank needs batch['index'] ids; pass ids=")
        q_ids = ids.to(queries.device).repeat(2)
        cands = self.batch_candidates(queries, q_ids)
        keys, key_ids = self._append_memory(cands.keys, cands.key_targets, by_labels=False)
        mask = (q_ids[:, None] == key_ids[None, :]) & (key_ids >= 0)[None, :]
        if self.label_positives and labels is not None:
            q_labels = labels.to(queries.device).repeat(2)
            batch_labels = distributed.gather(q_labels, with_grad=False) if self._gathers() else q_labels
            _, key_labels = self._append_memory(cands.keys, batch_labels, by_labels=True)
            same_label = (q_labels[:, None] == key_labels[None, :]) & (key_labels >= 0)[None, :]
            mask = torch.where((q_labels >= 0)[:, None], same_label, mask)
        rows = torch.arange(2 * n, device=queries.device)
        self_index = cands.self_index
        assert self_index is not None  # batch_candidates always sets it
        mask[rows, self_index[(rows + n) % (2 * n)]] = True  # the other view of the same item
        mask[rows, self_index] = False
        key_mask = None
        if keys.shape[0] > cands.keys.shape[0]:  # the queue was appended: its empty slots are no candidates
            key_mask = torch.cat([torch.ones_like(cands.key_targets, dtype=torch.bool), self.valid_rows()])
        return Candidates(queries, keys, positive_mask=mask, exclude_index=self_index, key_mask=key_mask)

    def _gathers(self) -> bool:
        return self.gather_across_ranks and distributed.is_distributed()

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
        batch_rows = cands.keys.shape[0]
        cands.keys, cands.key_targets = self._append_memory(cands.keys, cands.key_targets, positives == "labels")
        if cands.keys.shape[0] > batch_rows:  # the queue was appended: its empty slots are no candidates
            cands.key_mask = torch.cat([torch.ones(batch_rows, dtype=torch.bool, device=z.device), self.valid_rows()])
        return cands

    def _append_memory(self, keys: Tensor, targets: Tensor, by_labels: bool) -> tuple[Tensor, Tensor]:
        """``keys`` (M, D) and ``targets`` (M,) followed by the whole queue and its labels or ids (an empty slot
        has target -1: neither a positive nor a negative of anyone; slicing off the empty slots would need
        their number on the host)."""
        if self.queue.shape[1] == 0:  # nothing enqueued yet (width taken from the first batch)
            return keys, targets
        bank_targets = self.queue_labels if by_labels else self.queue_ids
        return torch.cat([keys, self.queue.to(keys.dtype)]), torch.cat([targets, bank_targets.to(targets.device)])

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, momentum={self.momentum}, label_positives={self.label_positives}, "
            f"mining={self.strategy}"
        )
