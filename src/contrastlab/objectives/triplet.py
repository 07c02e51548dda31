"""Triplet metric learning: a Siamese encoder (shared weights) trained with the triplet margin loss on
triplets the negatives strategy mines (batch-hard, semi-hard, batch-all, memory bank, ANN-mined)."""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor

from contrastlab.data.base import ContrastiveDataModule, capabilities
from contrastlab.errors import check_choice
from contrastlab.losses.triplet import TripletMarginLoss
from contrastlab.negatives.kinds import Memory, Miner, MiningDataSource, OfflineMiner
from contrastlab.objectives.base import ContrastiveObjective
from contrastlab.objectives.collapse_guard import CollapseGuard

Positives = Literal["labels", "views"]
POSITIVES = get_args(Positives)


class Triplet(ContrastiveObjective):
    """``z = head(encoder(x))`` for every view of every item (V*B rows, one forward pass). Targets
    decide positives: class labels (``positives="labels"``, supervised metric learning) or image ids
    (``positives="views"``: the other augmented views of the same image, self-supervised). The
    strategy builds the candidate keys, the loss computes one distance matrix, the strategy mines on
    it (without gradients) and the loss scores the mined triplets on it (with gradients).

    The sampler is a :class:`~contrastlab.negatives.kinds.Miner`; one with a
    :class:`~contrastlab.negatives.kinds.Memory` stores the batch after the loss; an
    :class:`~contrastlab.negatives.kinds.OfflineMiner` is attached to the datamodule at set-up and
    refreshed, with :meth:`project` as its embedding function, at fit start and epoch starts.

    Args:
        positives: ``labels`` or ``views``.
        collapse_threshold: warn once when the epoch's embedding spread falls below it (None: never).
    """

    objective_name = "triplet"
    consumes = "triplets"
    sampler_kind = Miner
    negatives: Miner

    def __init__(
        self, *args: Any, positives: Positives = "labels", collapse_threshold: float | None = 0.02, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        check_choice(positives, Positives, "objective.positives")
        if not isinstance(self.loss, TripletMarginLoss):
            raise ValueError(f"objective=triplet needs loss=triplet, got {type(self.loss).__name__}.")
        self.positives = positives
        self.collapse_guard = CollapseGuard(collapse_threshold)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None:
            return
        if self.positives == "labels" and not capabilities(dm).has_labels:
            raise ValueError(
                f"objective.positives=labels but {type(dm).__name__} has no labels; "
                "set objective.positives=views (positives from augmented views) or use labelled data."
            )
        if self.positives == "views" and isinstance(dm, ContrastiveDataModule) and dm.views < 2:
            raise ValueError(f"objective.positives=views needs data.views >= 2, got {dm.views}; set data.views=2.")
        if isinstance(self.negatives, OfflineMiner):  # e.g. ANN mining serves negatives through the datamodule
            self.negatives.attach(self._mining_source(), self.positives)

    # --- offline mining (OfflineMiner): the objective embeds, the datamodule serves ---------------------
    def _mining_source(self) -> MiningDataSource:
        dm = getattr(self.trainer, "datamodule", None)
        if not isinstance(dm, MiningDataSource):
            raise ValueError(
                f"sampler=ann_mined serves its mined negatives through the datamodule, which {type(dm).__name__} "
                "cannot do; set sampler=semi_hard (or train with an image datamodule)."
            )
        return dm

    def _mine_offline(self, fit_start: bool) -> None:
        """Refresh an :class:`OfflineMiner` when due: embed the training set with :meth:`project` (eval mode)
        and log the mining statistics."""
        miner = self.negatives
        if not isinstance(miner, OfflineMiner) or not miner.due(self.current_epoch, fit_start):
            return
        loader = self._mining_source().train_loader_for_mining()
        was_training = self.training
        self.eval()
        try:
            stats = miner.refresh(
                self.project, loader, self.device, self.current_epoch, progress=self.trainer.is_global_zero
            )
        finally:
            self.train(was_training)
        if stats and self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics({f"train/{k}": v for k, v in stats.items()}, step=self.global_step)

    def on_fit_start(self) -> None:
        self._mine_offline(fit_start=True)

    def on_train_epoch_start(self) -> None:
        self._mine_offline(fit_start=False)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        views = list(batch["views"])
        z = self.project(torch.cat(views))
        ids, labels = batch["index"].repeat(len(views)), batch["label"].repeat(len(views))
        cands = self.negatives.candidates(z, ids, labels, self.positives, batch, self.project)
        dist = self.loss.distances(cands.queries, cands.keys)
        mined = self.negatives.mine(dist.detach(), cands, self.loss.margin)
        loss = self.loss.from_distances(dist, **mined.loss_kwargs())
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        self.log_dict({f"train/mining/{k}": v.float() for k, v in mined.stats.items()}, sync_dist=True)
        self.log_candidates(cands.keys, cands.key_mask)
        self.collapse_guard.update(z)
        if isinstance(self.negatives, Memory):  # e.g. the memory bank enqueues this batch
            self.negatives.update(z.detach(), batch)
        return loss

    def on_train_epoch_end(self) -> None:
        spread = self.collapse_guard.epoch_end()
        if spread is not None:
            self.log("train/embedding_spread", spread, sync_dist=True)
