"""Fit one run from a validated config: build everything, ``trainer.fit``, write ``metrics.json``.

The command (:mod:`contrastlab.cli.train`) and the Python API (:func:`contrastlab.api.train`) both call
:func:`train`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from contrastlab.config.checks import check_config
from contrastlab.errors import ConfigError, unwrap


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit one run described by ``cfg``; returns the final metrics (also in ``metrics.json``)."""
    start = time.time()
    check_config(cfg)
    import lightning as L
    from hydra.utils import get_class
    from lightning.pytorch.utilities import rank_zero_only
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from contrastlab.config import build
    from contrastlab.tracking.loggers import with_history
    from contrastlab.training import reliability, resume, runs
    from contrastlab.training.data_order import DataOrder

    out = run_dir(cfg)
    objective = str(getattr(get_class(cfg.objective._target_), "objective_name", "?"))
    ckpt_path = resume.resolve_ckpt_path(cfg, objective, out, rank=rank_zero_only.rank)
    L.seed_everything(cfg.seed, workers=True)
    if rank_zero_only.rank == 0 and cfg.get("print_config", True):
        runs.print_config(cfg)
    out.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:
        resume.write_run_key(cfg, out)

    datamodule = build.build_datamodule(cfg)
    data_order = DataOrder(cfg.seed)  # deterministic batches and augmentations, resumable mid-epoch
    data_order.attach(datamodule)
    model = build.build_objective(cfg)
    logger = with_history(build.build_logger(cfg), out)  # + <run_dir>/history.jsonl, whatever logger= says
    callbacks = [*build.build_callbacks(cfg, datamodule), data_order, *reliability.run_callbacks()]
    try:
        trainer: L.Trainer = hydra.utils.instantiate(
            cfg.trainer, logger=logger, callbacks=callbacks, plugins=reliability.trainer_plugins(cfg.trainer)
        )
    except InstantiationException as err:  # Lightning refused a Trainer argument: that is bad input
        raise ConfigError(f"trainer: {unwrap(err)}; change the trainer.* override.") from None
    if logger and rank_zero_only.rank == 0:
        for lg in trainer.loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]

    trust = bool(cfg.get("trust_checkpoint", False))
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=not trust)
    except SIGTERMException:
        preemption = reliability.find_callback(trainer, reliability.PreemptionCheckpoint)
        message = preemption.message(trainer) if preemption else "stopped by SIGTERM"
        if trainer.is_global_zero:
            print(message, file=sys.stderr, flush=True)
        raise reliability.Preempted(message) from None

    metrics = dict(trainer.callback_metrics)
    metrics["trainer/global_step"] = trainer.global_step
    metrics["trainer/epoch"] = trainer.current_epoch
    metrics["time/wall_s"] = time.time() - start
    final = {k: v for k, v in ((k, runs.to_number(v)) for k, v in metrics.items()) if v is not None}
    if trainer.is_global_zero:
        final = runs.write_metrics(out / "metrics.json", final)
        runs.print_metrics(final)
        print(f"run directory: {out}")
    reliability.raise_if_stopped(trainer)  # a run stopped by the non-finite guard is a failed run
    return final


def finish_tracking(exit_code: int = 0) -> None:
    """Close the W&B run, if any (each sweep job gets its own run); ``exit_code=1`` marks it failed."""
    if "wandb" not in sys.modules:  # never imported: no run to close (and no import cost)
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
