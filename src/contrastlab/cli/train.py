"""``contrastlab-train``: compose the config, validate it, build everything, fit, write metrics.json.

contrastlab-train                                   # SimCLR on digits, CPU, W&B offline
contrastlab-train encoder=timm encoder.name=resnet18 loss.temperature=0.2
contrastlab-train -m loss.temperature=0.1,0.5 debug=fast
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import hydra
from omegaconf import DictConfig

from contrastlab.cli import boundary
from contrastlab.config import CONF_DIR
from contrastlab.tracking import sweeps
from contrastlab.training import launched_ranks

# torch and Lightning load only after the config is validated (in fit.train): bad input fails within seconds
from contrastlab.training.fit import finish_tracking, run_dir, train


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
            boundary.exit_if_known(err)  # bad input: one line and exit status 2, no traceback
            raise
        from lightning.pytorch.utilities import rank_zero_only

        sweeps.record_failure(run_dir(cfg), err, rank=rank_zero_only.rank)
        return None
    finally:
        finish_tracking(exit_code=int(failed))
    return sweeps.optimized_value(metrics, cfg.get("optimized_metric"))


def main() -> Any:
    """The ``contrastlab-train`` command: bad input ends with one line on stderr and exit status 2
    (see :mod:`contrastlab.cli.boundary`); SIGTERM with a checkpoint and status 143. Ranks > 0 started by
    torchrun or srun leave ``.hydra/`` and ``train.log`` to rank 0 (:mod:`contrastlab.training.launched_ranks`)."""
    sys.argv += launched_ranks.hydra_rank_overrides(sys.argv[1:], os.environ)
    # conf/hydra/launcher/submitit_slurm.yaml deliberately shares the plugin's schema name, so that
    # hydra/launcher=submitit_slurm always gets our trainer-matched allocation; Hydra 1.3 warns about the
    # (intended) schema match on every compose.
    schema_match = r"\s*'hydra/launcher/submitit_slurm' is validated against ConfigStore schema"
    warnings.filterwarnings("ignore", message=schema_match)
    return boundary.run_main(hydra_main)


if __name__ == "__main__":
    main()
