"""Processes started outside Lightning (``torchrun``, ``srun``) share one run directory.

Such a launcher starts every rank with the same command line, so every rank would run Hydra's own
run-directory writes: ``.hydra/{config,hydra,overrides}.yaml`` and ``<job name>.log``, all ranks at
once into the same files (on every node of a shared filesystem). Lightning avoids this for the
processes it starts itself (``hydra.job.name=train_ddp_process_<k> hydra.output_subdir=null``);
:func:`hydra_rank_overrides` does the same for externally started ranks: rank 0 writes ``.hydra/``
and ``train.log``, rank ``k > 0`` only its own ``train_rank<k>.log``.

Only environment variables are read (no torch import): this runs before Hydra parses the command line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from contrastlab.config.overrides import given_keys


def launcher_rank(env: Mapping[str, str]) -> int:
    """The global rank an external launcher gave this process: ``RANK`` under torchrun (TorchElastic sets
    ``TORCHELASTIC_RUN_ID``), ``SLURM_PROCID`` in a multi-task ``srun`` step; 0 otherwise (a plain run, or
    Lightning's own launcher, which names its children's logs itself)."""
    if env.get("TORCHELASTIC_RUN_ID") and env.get("RANK"):
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS") or 1) > 1 and env.get("SLURM_PROCID"):
        return int(env["SLURM_PROCID"])
    return 0


def hydra_rank_overrides(argv: Sequence[str], env: Mapping[str, str], job_name: str = "train") -> list[str]:
    """Hydra overrides to append to ``argv`` (the command-line arguments) for an externally launched rank
    ``k > 0``: its log goes to ``<job_name>_rank<k>.log`` and it leaves ``.hydra/`` to rank 0. Empty for
    rank 0; a key the user set in ``argv`` is kept as given."""
    rank = launcher_rank(env)
    if rank == 0:
        return []
    wanted = {"hydra.job.name": f"{job_name}_rank{rank}", "hydra.output_subdir": "null"}
    given = given_keys(argv)  # Hydra's own parse of the overrides among argv
    return [f"{key}={value}" for key, value in wanted.items() if key not in given]
