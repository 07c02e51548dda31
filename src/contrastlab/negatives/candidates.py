"""What a sampler hands a loss: the candidate set of an InfoNCE loss, the candidates and mined triplets
of a triplet loss (plain containers, shared by :mod:`contrastlab.negatives.kinds` and the samplers)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Candidates:
    """What an InfoNCE-style loss sees.

    queries (N, D); keys (M, D); ``positive_index`` (N,) or ``positive_mask`` (N, M);
    ``exclude_index`` (N,) removes each query's own copy from the denominator; ``key_mask`` (M,) bool, when
    given, marks the keys that are candidates at all (e.g. a memory bank's filled slots).
    """

    queries: Tensor
    keys: Tensor
    positive_index: Tensor | None = None
    positive_mask: Tensor | None = None
    exclude_index: Tensor | None = None
    key_mask: Tensor | None = None

    def loss_kwargs(self) -> dict[str, Tensor | None]:
        """Keyword arguments of :func:`~contrastlab.losses.info_nce` (``key_mask`` only when set, so a loss
        without that argument still takes the candidates of samplers that never mask keys)."""
        kw = {
            "positive_index": self.positive_index,
            "positive_mask": self.positive_mask,
            "exclude_index": self.exclude_index,
        }
        return kw if self.key_mask is None else {**kw, "key_mask": self.key_mask}


@dataclass
class TripletCandidates:
    """What a triplet miner sees: queries (N, D) are the anchors, keys (M, D) the candidates.

    ``query_targets`` (N,) and ``key_targets`` (M,) decide positives (equal, >= 0) and negatives
    (different, both >= 0); ``self_index`` (N,) is each query's own column among the keys (never its
    own positive); ``key_mask`` (M,) bool, when given, marks the keys that are candidates at all (a memory
    bank's filled slots; its empty ones also have target -1, so the miners never pick them).
    """

    queries: Tensor
    keys: Tensor
    query_targets: Tensor
    key_targets: Tensor
    self_index: Tensor | None = None
    key_mask: Tensor | None = None


@dataclass
class MinedTriplets:
    """Index triplets (anchors index query rows; positives and negatives index key columns) or,
    for batch-all, the positive/negative masks (N, M). ``stats`` are scalars for logging."""

    anchor_idx: Tensor | None = None
    positive_idx: Tensor | None = None
    negative_idx: Tensor | None = None
    positive_mask: Tensor | None = None
    negative_mask: Tensor | None = None
    stats: dict[str, Tensor] = field(default_factory=dict)

    def loss_kwargs(self) -> dict[str, Tensor | None]:
        return {
            "anchor_idx": self.anchor_idx,
            "positive_idx": self.positive_idx,
            "negative_idx": self.negative_idx,
            "positive_mask": self.positive_mask,
            "negative_mask": self.negative_mask,
        }

    @property
    def num_triplets(self) -> int:
        return int(self.stats["num_triplets"])
