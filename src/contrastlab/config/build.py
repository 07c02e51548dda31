"""Turn a composed config into objects: datamodule, objective, logger, callbacks, trainer.

Hydra's ``_target_`` is the registry; this module only wires the groups together
(e.g. the encoder's width into the head, the augmentation into the datamodule).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf, open_dict

from contrastlab.config import CONF_DIR
from contrastlab.data.base import ContrastiveDataModule
from contrastlab.data.image_files import SkippedFilesReport
from contrastlab.objectives.base import ContrastiveObjective

__all__ = [
    "CONF_DIR",
    "build_callbacks",
    "build_datamodule",
    "build_logger",
    "build_objective",
    "encoder_preprocessing",
]


def encoder_preprocessing(cfg: DictConfig) -> dict[str, Any]:
    """The data settings an encoder dictates, from its class's ``preprocess_settings`` (``encoder=open_clip``:
    the model's image size, mean, std, interpolation and resize mode); {} for other encoders."""
    enc = cfg.get("encoder")
    if enc is None or "_target_" not in enc:
        return {}
    settings = getattr(get_class(enc._target_), "preprocess_settings", None)
    if settings is None:
        return {}
    kwargs = {k: v for k, v in OmegaConf.to_container(enc, resolve=True).items() if k != "_target_"}  # type: ignore[union-attr]
    return dict(settings(**kwargs))


def build_datamodule(cfg: DictConfig) -> ContrastiveDataModule:
    """The ``data`` group with the ``augment`` group; an encoder that dictates its preprocessing (see
    :func:`encoder_preprocessing`) overrides ``data.image_size/mean/std/channels`` (and ``interpolation`` /
    ``resize_mode`` where the data config has them) in ``cfg`` itself, so the saved run config says what ran."""
    settings = encoder_preprocessing(cfg)
    if settings and cfg.get("data") is not None:
        with open_dict(cfg):
            for key, value in settings.items():
                if key in ("image_size", "mean", "std", "channels") or key in cfg.data:
                    cfg.data[key] = value
    augment = instantiate(cfg.augment) if cfg.get("augment") is not None else None
    return instantiate(cfg.data, augment=augment)


def build_objective(cfg: DictConfig) -> ContrastiveObjective:
    # text-only objectives (objective=biencoder) set encoder/head to null: no image tower
    encoder = instantiate(cfg.encoder) if cfg.get("encoder") is not None else None
    head = (
        instantiate(cfg.head, in_dim=encoder.out_dim) if encoder is not None and cfg.get("head") is not None else None
    )
    extra: dict[str, Any] = {}
    # a joint image-text encoder (encoder=open_clip) brings its own text tower: the text_encoder group is unused
    joint = getattr(encoder, "paired_text_tower", None) is not None
    for group in ("text_encoder",):  # optional towers some objectives take
        if cfg.get(group) is not None and not joint:
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
    monitor, and with ``callbacks.knn`` off nothing logs ``val/knn_*``, so a ``ModelCheckpoint`` keeps
    ``last.ckpt`` only (monitor dropped: Lightning would stop the run at its first validation); a datamodule
    that skips unreadable files (``datamodule.skipped``) gets the per-epoch :class:`SkippedFilesReport`."""
    callbacks = cfg.get("callbacks") or {}
    unlabelled = datamodule is not None and not datamodule.has_labels
    out: list[L.Callback] = []
    for name, c in callbacks.items():
        if c is None or "_target_" not in c:
            continue
        monitor = c.get("monitor")
        knn_off = isinstance(monitor, str) and monitor.startswith("val/knn_") and callbacks.get("knn") is None
        if (unlabelled or knn_off) and monitor is not None and issubclass(get_class(c._target_), ModelCheckpoint):
            if knn_off and not unlabelled:
                rank_zero_info(
                    f"callbacks.{name}: {monitor} is not logged (callbacks.knn is off); keeping last.ckpt only"
                )
            out.append(instantiate(c, monitor=None, save_top_k=0))
        else:
            out.append(instantiate(c))
    if getattr(datamodule, "skipped", None) is not None:  # a datamodule may name its own report (shards)
        out.append(getattr(datamodule, "skipped_report", SkippedFilesReport)())
    return out


def build_logger(cfg: DictConfig) -> Any:
    if cfg.get("logger") is None:
        return False
    return instantiate(cfg.logger)
