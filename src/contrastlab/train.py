"""``contrastlab-train``: compose the config, validate it, build everything, fit, write metrics.json.

    contrastlab-train                                   # SimCLR on digits, CPU, W&B offline
    contrastlab-train encoder=timm encoder.name=resnet18 loss.temperature=0.2
    contrastlab-train -m loss.temperature=0.1,0.5 debug=fast
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from contrastlab import build, runs, sweeps
from contrastlab.config_checks import check_config


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit one run described by ``cfg``; returns the final metrics (also in ``metrics.json``)."""
    start = time.time()
    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    if rank_zero_only.rank == 0 and cfg.get("print_config", True):
        runs.print_config(cfg)
    out = run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)

    datamodule = build.build_datamodule(cfg)
    model = build.build_objective(cfg)
    logger = build.build_logger(cfg)
    callbacks = build.build_callbacks(cfg, datamodule)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
    if logger and rank_zero_only.rank == 0:
        for lg in trainer.loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    metrics = dict(trainer.callback_metrics)
    metrics["trainer/global_step"] = trainer.global_step
    metrics["trainer/epoch"] = trainer.current_epoch
    metrics["time/wall_s"] = time.time() - start
    final = {k: v for k, v in ((k, runs.to_number(v)) for k, v in metrics.items()) if v is not None}
    if trainer.is_global_zero:
        final = runs.write_metrics(out / "metrics.json", final)
        runs.print_metrics(final)
        print(f"run directory: {out}")
    return final


def finish_tracking(exit_code: int = 0) -> None:
    """Close the W&B run, if any (each sweep job gets its own run); ``exit_code=1`` marks it failed."""
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


@hydra.main(version_base="1.3", config_path=build.CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train; returns ``optimized_metric`` for sweepers. In a multirun a failing job is recorded in its
    directory (``error.txt``, ``metrics.json`` with ``status: failed``) and the sweep goes on."""
    failed = True
    try:
        metrics = train(cfg)
        failed = False
    except Exception as err:
        if not sweeps.in_multirun():
            raise
        sweeps.record_failure(run_dir(cfg), err, rank=rank_zero_only.rank)
        return None
    finally:
        finish_tracking(exit_code=int(failed))
    return sweeps.optimized_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
