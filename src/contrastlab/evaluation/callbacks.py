"""Lightning callbacks that run evaluation during training."""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch
import torch.nn.functional as F

from contrastlab import distributed
from contrastlab.data.base import DataCapabilities
from contrastlab.evaluation.embed_cache import split_embeddings, split_shard
from contrastlab.evaluation.knn import knn_accuracy, knn_neighbours, knn_scores, merge_neighbours, topk_accuracy


def init_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """``{name + "_init": value}``: the metrics of the starting weights (chance levels, which training does not
    change, left out)."""
    return {f"{k}_init": v for k, v in metrics.items() if not k.endswith("_chance")}


def log_at_start(trainer: L.Trainer, metrics: Mapping[str, float]) -> None:
    """Write ``metrics`` (the numbers of the starting weights, ``*_init``) once at step 0 to every logger and into
    ``trainer.callback_metrics``, so they reach ``metrics.json`` next to the trained values."""
    for lg in trainer.loggers:
        lg.log_metrics(dict(metrics), step=0)
    for name, value in metrics.items():
        trainer.callback_metrics[name] = torch.tensor(value)


class KNNMonitor(L.Callback):
    """At every validation: embed the train split (evaluation transform) and the val split with
    the encoder (not the projection head), and log ``val/knn_top1`` (and top-5) of a weighted kNN.

    The kNN accuracy at initialisation is logged once as ``val/knn_top1_init``. Under data parallelism the
    work is split: each rank embeds its share of the train split (its part of the kNN bank, never gathered)
    and of the val split (gathered: every rank holds all queries), finds every query's k nearest items in
    its part, and the ranks' neighbours are gathered and merged into the global k nearest, so every rank
    logs the numbers one process computes on the full sets (only rank 0's logger writes them).
    """

    def __init__(self, k: int = 20, temperature: float = 0.07, log_init: bool = True) -> None:
        self.k, self.temperature, self.log_init = k, temperature, log_init
        self.init_value: float | None = None

    def compute(self, pl_module: L.LightningModule, datamodule: L.LightningDataModule) -> dict[str, float]:
        """The logged numbers (collective under data parallelism: every rank calls it)."""
        # embeddings shared with the other callbacks of this validation (computed once, in eval mode)
        tr_x, tr_y = split_shard(pl_module, datamodule, "train")  # this rank's part of the bank
        va_x, va_y = split_embeddings(pl_module, datamodule, "val", across_ranks=True)
        if not distributed.is_distributed():
            return self.score(tr_x, tr_y, va_x, va_y)
        if len(tr_x):
            sims, labels = knn_neighbours(tr_x, tr_y, va_x, self.k)
        else:  # a part with no rows (fewer train items than ranks)
            sims, labels = va_x.new_empty(len(va_x), 0), torch.zeros(len(va_x), 0, dtype=torch.long)
        pad = self.k - sims.shape[1]  # parts smaller than k: padded with neighbours of weight exp(-inf) = 0
        sims = F.pad(sims, (0, pad), value=float("-inf"))
        labels = F.pad(labels.long(), (0, pad), value=0)
        sims = distributed.gather_rows(sims.T.contiguous()).T  # (Q, world * k): every part's nearest
        labels = distributed.gather_rows(labels.T.contiguous()).T
        sims, labels = merge_neighbours(sims, labels, self.k)
        num_classes = distributed.max_over_ranks(int(max(tr_y.max() if len(tr_y) else -1, va_y.max()))) + 1
        acc = topk_accuracy(knn_scores(sims, labels, num_classes, self.temperature), va_y, (1, 5))
        return {"val/knn_top1": acc[1], "val/knn_top5": acc[5]}

    def score(
        self, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor
    ) -> dict[str, float]:
        """The logged numbers from already computed embeddings (``contrastlab-eval`` reuses this)."""
        acc = knn_accuracy(train_x, train_y, val_x, val_y, self.k, self.temperature, top=(1, 5))
        return {"val/knn_top1": acc[1], "val/knn_top5": acc[5]}

    def _enabled(self, trainer: L.Trainer) -> bool:
        dm = trainer.datamodule  # type: ignore[attr-defined]
        # a datamodule that declares no capabilities (from elsewhere) is not assumed to have labels
        return isinstance(dm, DataCapabilities) and dm.has_labels and not trainer.sanity_checking

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.log_init or not self._enabled(trainer) or self.init_value is not None:
            return
        if trainer.global_step > 0:  # resumed run: the baseline was logged by the original run
            return
        self.init_value = self.compute(pl_module, trainer.datamodule)["val/knn_top1"]  # type: ignore[attr-defined]
        log_at_start(trainer, {"val/knn_top1_init": self.init_value})

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled(trainer):
            return
        for name, value in self.compute(pl_module, trainer.datamodule).items():  # type: ignore[attr-defined]
            pl_module.log(name, value, prog_bar=name.endswith("top1"), sync_dist=False, rank_zero_only=False)
