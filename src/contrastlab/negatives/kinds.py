"""The kinds of negative samplers, and what an objective may ask of each: explicit seams, not probes.

Every sampler is a :class:`NegativeSampler` of one or more *kinds*, each a small abstract base class
whose methods the objectives call:

* :class:`CandidateSampler` — two views' projections ``z1, z2`` (N, D) (+ labels, ids) become the
  :class:`~contrastlab.negatives.candidates.Candidates` an InfoNCE/NT-Xent loss scores (SimCLR).
* :class:`Miner` — projections (R, D) become :class:`~contrastlab.negatives.candidates.TripletCandidates`,
  and index triplets are mined on their distance matrix (the triplet objective).
* :class:`PairKeys` — the keys of a two-tower pair loss (CLIP, bi-encoder).
* :class:`OfflineMiner` — a miner whose extra keys are negatives mined offline from an embedding of
  the whole training set and served by the data through :class:`MiningDataSource`.

Optional capabilities, mixed into a sampler class:

* :class:`Memory` — keeps rows of past batches: :meth:`Memory.update` after the loss.
* :class:`NeedsIds` — :meth:`CandidateSampler.forward` needs ``ids`` (the batch's ``"index"``).
* :class:`BindsEncoder` — :meth:`BindsEncoder.bind` receives the objective's (encoder, head) once.

``config/checks.py`` reads these from the classes (``issubclass``) before anything is built; the
objectives test instances (``isinstance``) when they are constructed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor, nn
from torch.utils.data import DataLoader

from contrastlab.negatives.candidates import Candidates, MinedTriplets, TripletCandidates


class NegativeSampler(nn.Module, ABC):
    """What an objective takes as ``negatives=`` (``sampler=<name>``). ``role`` names the kind in
    messages; ``choices`` lists the ``sampler=`` options of that kind (the fix a message suggests)."""

    role: ClassVar[str] = "negative"
    choices: ClassVar[str] = "in_batch"


class CandidateSampler(NegativeSampler):
    """Kind: builds the InfoNCE candidate set from two views (``sampler=in_batch|memory_bank``)."""

    role = "candidate-set"
    choices = "in_batch (or memory_bank)"

    @abstractmethod
    def forward(self, z1: Tensor, z2: Tensor, labels: Tensor | None = None, ids: Tensor | None = None) -> Candidates:
        """Candidates for the views ``z1``, ``z2`` (N, D); ``labels``/``ids`` (N,) or None (``ids`` is
        given when the sampler is :class:`NeedsIds`)."""


class Miner(NegativeSampler):
    """Kind: builds triplet candidates and mines triplets on their distances
    (``sampler=batch_hard|semi_hard|batch_all|memory_bank|ann_mined``)."""

    role = "mining"
    choices = "semi_hard (or batch_hard, batch_all, memory_bank, ann_mined)"

    @abstractmethod
    def candidates(
        self,
        z: Tensor,
        ids: Tensor,
        labels: Tensor,
        positives: str,
        batch: dict[str, Any],
        embed: Callable[[Tensor], Tensor] | None = None,
    ) -> TripletCandidates:
        """Anchors ``z`` (R, D) with image ``ids`` and ``labels`` (R,); targets are labels when
        ``positives == "labels"``, else ids. ``embed`` projects extra images of ``batch`` (if any)."""

    @abstractmethod
    def mine(self, dist: Tensor, cands: TripletCandidates, margin: float) -> MinedTriplets:
        """Triplets on the detached distance matrix ``dist`` (N, M) of ``cands``."""


class PairKeys(NegativeSampler):
    """Kind: the keys of a two-tower pair loss (``sampler=in_batch``)."""

    role = "in-batch pair"
    choices = "in_batch"

    @abstractmethod
    def two_tower_keys(self, a: Tensor, b: Tensor, b_negatives: Tensor | None = None) -> dict[str, Tensor | int]:
        """Keyword arguments of :func:`~contrastlab.losses.clip_loss` for matched rows ``a``, ``b`` (N, D)."""


@runtime_checkable
class MiningDataSource(Protocol):
    """What a datamodule offers an :class:`OfflineMiner` (implemented by
    :class:`~contrastlab.data.base.ContrastiveDataModule`)."""

    def train_loader_for_mining(self) -> DataLoader:
        """The training split in index order with the evaluation transform: batches of
        ``{"image": (B, C, H, W), "label": (B,)}``; ``len(loader.dataset)`` items."""
        ...

    def set_mined_negatives(self, table: Tensor) -> None:
        """From now on serve with training item ``i`` the items ``table[i]`` (``table`` (N, m) long, a
        shared CPU tensor the miner refreshes in place) as ``"negatives"``."""
        ...


class OfflineMiner(Miner):
    """Kind: a miner whose negatives are mined offline from an embedding of the whole training set
    (``sampler=ann_mined``). The objective drives it: :meth:`attach` at set-up; at fit start and at
    every epoch start, when :meth:`due`, :meth:`refresh` with its embedding function (in eval mode)."""

    role = "offline-mining"
    choices = "ann_mined"

    @abstractmethod
    def attach(self, source: MiningDataSource, positives: str) -> None:
        """Size the table for ``source``'s training set and hand it the table to serve."""

    @abstractmethod
    def due(self, epoch: int, fit_start: bool) -> bool:
        """Whether to mine now (at fit start, or at the start of ``epoch``)."""

    @abstractmethod
    def refresh(
        self,
        embed: Callable[[Tensor], Tensor],
        loader: Iterable[dict[str, Any]],
        device: Any,
        epoch: int,
        progress: bool = True,
    ) -> dict[str, float]:
        """Embed ``loader`` with ``embed`` and mine a new table; returns statistics to log."""


class Memory(ABC):
    """Capability: keeps rows of past batches (a queue), updated by the objective after the loss."""

    @abstractmethod
    def update(self, embeddings: Tensor, batch: dict[str, Any]) -> None:
        """Store ``embeddings`` (V*B, D) of ``batch``'s views (view-major) after the loss."""

    @abstractmethod
    def enqueue(self, embeddings: Tensor, ids: Tensor, labels: Tensor | None = None) -> None:
        """Append rows ``embeddings`` (B, D) with ``ids`` and ``labels`` (B,)."""


class NeedsIds(ABC):  # noqa: B024 (a marker: no method to implement)
    """Capability: :meth:`CandidateSampler.forward` needs ``ids=`` (the batch's ``"index"``)."""


class BindsEncoder(ABC):
    """Capability: follows the objective's online network (e.g. a momentum key encoder)."""

    @abstractmethod
    def bind(self, *online: nn.Module) -> None:
        """Called once by the objective with its ``(encoder, head)``."""
