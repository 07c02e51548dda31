"""Lightning callback: UMAP / t-SNE pictures of the validation embeddings during and after training.

PNGs go to ``dirpath`` (``<run_dir>/plots/``): ``<method>_epoch<E>.png`` every ``every_n_epochs``
validations (0: never) and ``<method>.png`` at the end of training; with a W&B logger they are
also logged as images (``embeddings/<method>``), which works offline too. Only rank 0 draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from contrastlab.data.base import capabilities
from contrastlab.evaluation.embed_cache import split_embeddings
from contrastlab.evaluation.plots import check_methods, plot_title, save_embedding_plots


def hydra_overrides() -> list[str]:
    """The command-line overrides of the current Hydra job ([] outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # not running under Hydra
        return []


def log_images(trainer: L.Trainer, paths: dict[str, Path], title: str, prefix: str = "embeddings") -> None:
    """Log each PNG to every W&B logger of ``trainer`` as ``<prefix>/<method>``."""
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            for method, path in paths.items():
                key = f"{prefix}/{method}"
                lg.log_image(key=key, images=[str(path)], caption=[title], step=trainer.global_step)


class EmbeddingPlotCallback(L.Callback):
    """Draw the validation embeddings (encoder output) in 2-D, coloured by label.

    Args:
        dirpath: where the PNGs go (``${paths.output_dir}/plots``).
        methods: any of ``umap``, ``tsne``, ``pca``.
        every_n_epochs: also draw after every N-th epoch's validation (0: only at the end).
        max_points: draw a fixed random subset of at most this many validation items.
        umap_epochs, tsne_iter: optimisation length of the projections (smaller is faster).
        debug_run: the ``debug`` overlay in use (set from Hydra); debug runs skip the pictures
            unless ``in_debug`` (UMAP's one-off compilation alone takes ~20 s on a small CPU).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        methods: str | Sequence[str] = ("umap", "tsne"),
        every_n_epochs: int = 0,
        max_points: int | None = 1000,
        umap_epochs: int | None = 200,
        tsne_iter: int = 500,
        seed: int = 0,
        debug_run: str | None = None,
        in_debug: bool = False,
    ) -> None:
        self.methods = check_methods(methods, "callbacks.embedding_plot.methods")  # refused before training
        self.dirpath, self.every_n_epochs = dirpath, every_n_epochs
        self.max_points, self.seed = max_points, seed
        self.umap_epochs, self.tsne_iter = umap_epochs, tsne_iter
        self.skip = bool(debug_run) and debug_run != "None" and not in_debug
        self.paths: dict[str, Path] = {}

    def _active(self, trainer: L.Trainer) -> bool:
        dm = getattr(trainer, "datamodule", None)
        has_images = dm is not None and capabilities(dm).has_images
        return bool(self.methods) and not self.skip and has_images and trainer.is_global_zero

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.skip and trainer.is_global_zero and stage == "fit":
            rank_zero_info("embedding_plot: skipped in debug runs; callbacks.embedding_plot.in_debug=true draws")

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str = "") -> dict[str, Path]:
        dm: Any = trainer.datamodule  # type: ignore[attr-defined]
        feats, labels = split_embeddings(pl_module, dm, "val")
        knn = trainer.callback_metrics.get("val/knn_top1")
        title = plot_title(
            getattr(pl_module, "objective_name", None),
            hydra_overrides(),
            float(knn) if knn is not None else None,
            f"epoch {trainer.current_epoch}",
        )
        out = Path(self.dirpath or Path(trainer.default_root_dir) / "plots")
        paths = save_embedding_plots(
            feats,
            labels if capabilities(dm).has_labels else None,
            out,
            self.methods,
            title,
            suffix,
            self.max_points,
            self.seed,
            umap_epochs=self.umap_epochs,
            tsne_iter=self.tsne_iter,
        )
        log_images(trainer, paths, title)
        self.paths.update({f"{m}{suffix}": p for m, p in paths.items()})
        return paths

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_epochs <= 0 or not self._active(trainer):
            return
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs == 0:
            self.draw(trainer, pl_module, suffix=f"_epoch{epoch:03d}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active(trainer):
            self.draw(trainer, pl_module)
