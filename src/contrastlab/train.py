"""``contrastlab-train``: compose the config, validate it, build everything, fit, write metrics.json.

contrastlab-train                                   # SimCLR on digits, CPU, W&B offline
contrastlab-train encoder=timm encoder.name=resnet18 loss.temperature=0.2
contrastlab-train -m loss.temperature=0.1,0.5 debug=fast
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from contrastlab import cli_errors, launched_ranks, sweeps
from contrastlab.config_checks import check_config

# torch and Lightning load only after the config is validated: bad input fails within seconds
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


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

    from contrastlab import build, reliability, resume, runs, tracking_faults
    from contrastlab.data_order import DataOrder

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
    logger = tracking_faults.guard_loggers(build.build_logger(cfg))
    callbacks = [*build.build_callbacks(cfg, datamodule), data_order, *reliability.run_callbacks()]
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=logger, callbacks=callbacks, plugins=reliability.trainer_plugins(cfg.trainer)
    )
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


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """Train; returns ``optimized_metric`` for sweepers. In a multirun a failing job is recorded in its
    directory (``error.txt``, ``metrics.json`` with ``status: failed``) and the sweep goes on."""
    failed = True
    try:
        metrics = train(cfg)
        failed = False
    except Exception as err:
        if not sweeps.in_multirun():
            cli_errors.exit_if_known(err)  # bad input: one line and exit status 2, no traceback
            raise
        from lightning.pytorch.utilities import rank_zero_only

        sweeps.record_failure(run_dir(cfg), err, rank=rank_zero_only.rank)
        return None
    finally:
        finish_tracking(exit_code=int(failed))
    return sweeps.optimized_value(metrics, cfg.get("optimized_metric"))


def main() -> Any:
    """The ``contrastlab-train`` command: bad input ends with one line on stderr and exit status 2
    (see :mod:`contrastlab.cli_errors`); SIGTERM with a checkpoint and status 143. Ranks > 0 started by
    torchrun or srun leave ``.hydra/`` and ``train.log`` to rank 0 (:mod:`contrastlab.launched_ranks`)."""
    sys.argv += launched_ranks.hydra_rank_overrides(sys.argv[1:], os.environ)
    # conf/hydra/launcher/submitit_slurm.yaml deliberately shares the plugin's schema name, so that
    # hydra/launcher=submitit_slurm always gets our trainer-matched allocation; Hydra 1.3 warns about the
    # (intended) schema match on every compose.
    schema_match = r"\s*'hydra/launcher/submitit_slurm' is validated against ConfigStore schema"
    warnings.filterwarnings("ignore", message=schema_match)
    return cli_errors.run_main(hydra_main)


if __name__ == "__main__":
    main()
