"""A small Python API over the command-line tools, for notebooks and scripts.

    from contrastlab import api
    metrics = api.train(["debug=fast", "logger=csv", "loss.temperature=0.2"], "runs/t02")
    model, dm, cfg = api.load_checkpoint("runs/t02/checkpoints/last.ckpt")
    features, labels = api.embed(model, dm.val_dataloader())       # (N, D) float32, (N,) long

:func:`compose` builds the same config ``contrastlab-train <overrides>`` would (Hydra's compose API
on ``conf/train.yaml``), with the run directory set to ``output_dir`` instead of
``outputs/<task>/runs/<date>_<time>``; :func:`train` also writes ``<output_dir>/.hydra/`` like a
command-line run, so :func:`contrastlab.tracking.leaderboard.load_runs` reads API runs and CLI runs alike.
Bad input raises :class:`contrastlab.config.checks.ConfigError` (or Hydra's composition error)
instead of exiting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from torch import Tensor
from torch.utils.data import DataLoader

from contrastlab.config import build

__all__ = ["compose", "embed", "load_checkpoint", "train"]


def compose(overrides: Sequence[str] = (), output_dir: str | Path = "outputs/api") -> DictConfig:
    """The run config of ``contrastlab-train <overrides>``, with its run directory at ``output_dir``.

    Hydra's runtime config (the chosen group options, the output directory, the overrides) is
    installed as the current :class:`~hydra.core.hydra_config.HydraConfig`, so ``${hydra:...}``
    interpolations (``paths.output_dir``, ``task_name``) resolve as in a command-line run. The
    returned config has no ``hydra`` node, like the one a ``@hydra.main`` function receives; compose
    again (or call :func:`train`) before using a config composed earlier than the latest one.
    """
    out = Path(output_dir).expanduser().resolve()
    with initialize_config_dir(config_dir=build.CONF_DIR, version_base="1.3", job_name="train"):
        cfg = hydra_compose("train", overrides=list(overrides), return_hydra_config=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.run.dir = str(out)
        cfg.hydra.runtime.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def save_run_files(cfg: DictConfig) -> Path:
    """Write ``config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` into ``<run_dir>/.hydra/`` as Hydra
    does for a command-line run (needs the :class:`HydraConfig` installed by :func:`compose`)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.output_subdir is None:  # hydra.output_subdir=null: Hydra saves nothing either
        return run_dir
    hydra_dir = run_dir / hydra_cfg.output_subdir
    hydra_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), hydra_dir / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, hydra_dir / "overrides.yaml")
    return run_dir


def train(overrides: Sequence[str] = (), output_dir: str | Path = "outputs/api") -> dict[str, Any]:
    """Fit one run, as ``contrastlab-train <overrides> hydra.run.dir=<output_dir>``; returns the final
    metrics (also in ``<output_dir>/metrics.json``). Checkpoints go to ``<output_dir>/checkpoints/``.
    The :class:`HydraConfig` installed for the run is removed afterwards (the previous one restored)."""
    from contrastlab.training import fit as train_module

    previous = HydraConfig.instance().cfg
    cfg = compose(overrides, output_dir)
    failed = True
    try:
        save_run_files(cfg)
        metrics = train_module.train(cfg)
        failed = False
    except Exception as err:  # a constructor's own error (e.g. PretrainedWeightsError), not Hydra's wrapper
        from contrastlab.errors import is_bad_input, unwrap

        if is_bad_input(err) and unwrap(err) is not err:
            raise unwrap(err) from None
        raise
    finally:
        train_module.finish_tracking(exit_code=int(failed))  # close the W&B run, if any
        HydraConfig.instance().cfg = previous  # leave Hydra's global state as it was
    return metrics


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", **kwargs: Any) -> tuple[Any, Any, DictConfig]:
    """``(model, datamodule, cfg)`` of a checkpoint written by a run: the objective in eval mode on
    ``device``, its datamodule set up, and the run's resolved config. ``kwargs`` go to
    :func:`contrastlab.training.checkpoints.load_checkpoint` (``data=``, ``batch_size=``, ``trust=``, ...), the
    loader ``contrastlab-eval`` uses."""
    from contrastlab.training.checkpoints import load_checkpoint as load

    ckpt = load(path, device=device, **kwargs)
    return ckpt.model, ckpt.datamodule, ckpt.config


def embed(
    model: Any, loader: DataLoader, fn: Callable[[Tensor], Tensor] | None = None, key: str = "image"
) -> tuple[Tensor, Tensor]:
    """``(features (N, D) float32 on CPU, labels (N,) long)`` of ``loader``'s ``{"image", "label"}``
    batches, in loader order, with ``fn`` (default ``model.embed``: the encoder output, the
    representation every evaluation uses; e.g. ``model.encode_image`` for CLIP's joint space), on
    the model's device, without gradients and with ``model`` in eval mode (its mode restored after)."""
    from contrastlab.evaluation.embed import embed_loader

    features, labels = embed_loader(fn or model.embed, loader, key=key, module=model)
    return features, labels
