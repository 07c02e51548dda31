"""Turn a composed config into objects: datamodule, objective, logger, callbacks, trainer.

Hydra's ``_target_`` is the registry; this module only wires the groups together
(e.g. the encoder's width into the head, the augmentation into the datamodule).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from contrastlab.config import CONF_DIR
from contrastlab.data.base import ContrastiveDataModule
from contrastlab.data.image_files import SkippedFilesReport
from contrastlab.objectives.base import ContrastiveObjective

__all__ = ["CONF_DIR", "build_callbacks", "build_datamodule", "build_logger", "build_objective"]


def build_datamodule(cfg: DictConfig) -> ContrastiveDataModule:
    augment = instantiate(cfg.augment) if cfg.get("augment") is not None else None
    return instantiate(cfg.data, augment=augment)


def build_objective(cfg: DictConfig) -> ContrastiveObjective:
    # text-only objectives (objective=biencoder) set encoder/head to null: no image tower
    encoder = instantiate(cfg.encoder) if cfg.get("encoder") is not None else None
    head = (
        instantiate(cfg.head, in_dim=encoder.out_dim) if encoder is not None and cfg.get("head") is not None else None
    )
    extra: dict[str, Any] = {}
    for group in ("text_encoder",):  # optional towers some objectives take
        if cfg.get(group) is not None:
            extra[group] = instantiate(cfg[group])
    model = instantiate(
        cfg.objective,
        encoder=encoder,
        head=head,
        loss=instantiate(cfg.loss),
        negatives=instantiate(cfg.sampler),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") is not None else None,
        **extra,
    )
    model.run_config = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    return model


def build_callbacks(cfg: DictConfig, datamodule: ContrastiveDataModule | None = None) -> list[L.Callback]:
    """The ``callbacks`` group, adapted to ``datamodule``: without labels there is no kNN metric to
    monitor, so a ``ModelCheckpoint`` keeps ``last.ckpt`` only (monitor dropped); a datamodule that
    skips unreadable files (``datamodule.skipped``) gets the per-epoch :class:`SkippedFilesReport`."""
    callbacks = cfg.get("callbacks") or {}
    unlabelled = datamodule is not None and not datamodule.has_labels
    out: list[L.Callback] = []
    for c in callbacks.values():
        if c is None or "_target_" not in c:
            continue
        if unlabelled and c.get("monitor") is not None and issubclass(get_class(c._target_), ModelCheckpoint):
            out.append(instantiate(c, monitor=None, save_top_k=0))
        else:
            out.append(instantiate(c))
    if getattr(datamodule, "skipped", None) is not None:
        out.append(SkippedFilesReport())
    return out


def build_logger(cfg: DictConfig) -> Any:
    if cfg.get("logger") is None:
        return False
    return instantiate(cfg.logger)
