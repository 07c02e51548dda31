"""Collapse monitor: log the embedding-health metrics at every validation and warn (once) when the
representation collapses.

A run collapses when its encoder maps every input to (nearly) the same point or onto a few
directions. The monitor measures, on the validation split's encoder embeddings, the effective
rank (RankMe), the mean per-dimension std of the normalised embeddings, uniformity and (with
augmented pairs of validation images) alignment — see :mod:`contrastlab.evaluation.health`. The
values at initialisation are the baseline; when a watched metric falls below ``fraction`` of its
baseline a :class:`CollapseWarning` is issued once, and training stops if ``stop`` is set.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from contrastlab.data.base import capabilities
from contrastlab.errors import check_choice
from contrastlab.evaluation.embed_cache import split_embeddings
from contrastlab.evaluation.health import CollapseWarning, embedding_health
from contrastlab.evaluation.pairs import augmented_pairs, embed_pairs

Reference = Literal["initial", "best"]

__all__ = ["CollapseMonitor", "CollapseWarning", "measure_health"]


def measure_health(
    pl_module: L.LightningModule,
    datamodule: Any,
    max_samples: int | None = 2048,
    alignment_pairs: int = 128,
    seed: int = 0,
) -> dict[str, float]:
    """Health metrics of ``pl_module.embed`` (eval mode) on the validation split (uniformity on at most
    ``max_samples`` of them) and, for alignment, on ``alignment_pairs`` augmented validation pairs. Under
    data parallelism each rank embeds its share of the split (gathered), so every rank must call it."""
    z, _ = split_embeddings(pl_module, datamodule, "val", across_ranks=True)
    views = augmented_pairs(datamodule, alignment_pairs, seed) if alignment_pairs > 0 else None
    pairs = embed_pairs(pl_module.embed, views, pl_module.device) if views is not None else None  # eval mode
    return embedding_health(z, pairs, max_samples=max_samples, seed=seed)


class CollapseMonitor(L.Callback):
    """Logs ``val/{alignment,uniformity,effective_rank,dim_std}`` each validation; warns once on collapse.

    Args:
        fraction: collapse when a watched metric is below ``fraction * reference``.
        watch: which metrics to watch (``effective_rank``, ``dim_std``).
        reference: ``initial`` (the value at initialisation) or ``best`` (the highest value seen so far,
            which also catches a collapse after the metric has grown during training).
        stop: stop training (``trainer.should_stop``) on collapse.
        max_samples: uniformity on at most this many validation items (a fixed random subset).
        alignment_pairs: augmented validation pairs for alignment (0: skip alignment).
    """

    def __init__(
        self,
        fraction: float = 0.1,
        watch: Sequence[str] = ("effective_rank", "dim_std"),
        reference: Reference = "initial",
        stop: bool = False,
        max_samples: int | None = 2048,
        alignment_pairs: int = 128,
        seed: int = 0,
    ) -> None:
        if not 0 < fraction < 1:
            raise ValueError(f"callbacks.collapse.fraction must be in (0, 1), got {fraction}")
        unknown = set(watch) - {"effective_rank", "dim_std"}
        if unknown:
            raise ValueError(f"callbacks.collapse.watch: unknown {sorted(unknown)}; use effective_rank, dim_std")
        check_choice(reference, Reference, "callbacks.collapse.reference")
        self.fraction, self.watch, self.reference, self.stop = fraction, tuple(watch), reference, stop
        self.max_samples, self.alignment_pairs, self.seed = max_samples, alignment_pairs, seed
        self.baseline: dict[str, float] | None = None
        self.collapsed = False

    def _enabled(self, trainer: L.Trainer) -> bool:
        dm = getattr(trainer, "datamodule", None)  # text-only data (no images to embed): nothing to measure
        return dm is not None and capabilities(dm).has_images and not trainer.sanity_checking

    def measure(self, pl_module: L.LightningModule, datamodule: Any) -> dict[str, float]:
        return measure_health(pl_module, datamodule, self.max_samples, self.alignment_pairs, self.seed)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.baseline is not None or trainer.global_step > 0 or not self._enabled(trainer):
            return
        self.baseline = self.measure(pl_module, trainer.datamodule)  # type: ignore[attr-defined]
        init = {f"val/{k}_init": v for k, v in self.baseline.items()}
        for lg in trainer.loggers:
            lg.log_metrics(init, step=0)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled(trainer):
            return
        values = self.measure(pl_module, trainer.datamodule)  # type: ignore[attr-defined]
        for name, value in values.items():
            pl_module.log(f"val/{name}", value, sync_dist=False, rank_zero_only=False)
        fallen = self.check(values)
        if fallen and not self.collapsed:
            self.collapsed = True
            self._warn(fallen, trainer.current_epoch, trainer.global_step)
        if fallen and self.stop:
            trainer.should_stop = True

    def check(self, values: dict[str, float]) -> dict[str, tuple[float, float]]:
        """``{metric: (value, reference)}`` for the watched metrics below ``fraction * reference``;
        then updates the reference (``best``). Without a baseline yet (a run resumed without this
        callback's state), ``values`` becomes the baseline."""
        if self.baseline is None:
            self.baseline = dict(values)
            return {}
        fallen = {
            k: (values[k], self.baseline[k])
            for k in self.watch
            if self.baseline.get(k, 0) > 0 and values[k] < self.fraction * self.baseline[k]
        }
        if self.reference == "best":
            self.baseline = {k: max(v, self.baseline.get(k, v)) for k, v in values.items()}
        return fallen

    @rank_zero_only
    def _warn(self, fallen: dict[str, tuple[float, float]], epoch: int, step: int) -> None:
        what = "; ".join(
            f"val/{k} = {v:.4g}, below {self.fraction:g} x its {self.reference} value {b:.4g}"
            for k, (v, b) in fallen.items()
        )
        action = (
            "training stops (callbacks.collapse.stop=true)"
            if self.stop
            else "set callbacks.collapse.stop=true to stop such runs"
        )
        warnings.warn(
            f"Embedding collapse at epoch {epoch} (step {step}): {what}. The encoder maps inputs onto a few "
            f"directions; check the learning rate, temperature, sampler and augmentations; {action}.",
            CollapseWarning,
            stacklevel=2,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "collapsed": self.collapsed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.baseline = state_dict.get("baseline")
        self.collapsed = bool(state_dict.get("collapsed", False))
