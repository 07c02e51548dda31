"""Launchers: the SLURM config composes and asks SLURM for exactly what the DDP trainer will use.

No cluster here: the SLURM job is composed and its ``sbatch`` script rendered by submitit, not submitted.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
from conftest import run_cli
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from contrastlab.config.build import CONF_DIR


@pytest.fixture
def hydra_cfg():
    def _compose(*overrides: str) -> DictConfig:
        with warnings.catch_warnings(), initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            warnings.simplefilter("ignore", UserWarning)  # Hydra's note on schema matching for submitit_slurm
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # as in a launch: ${hydra:...} and ${hydra.sweep.dir} resolve
        return cfg

    yield _compose
    HydraConfig.instance().cfg = None


def sbatch_script(launcher_params: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The sbatch script submitit would submit for these launcher parameters (mapped as the plugin does)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    bin_dir = tmp_path / "bin"  # submitit looks for srun on PATH before it agrees to build a SLURM job
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path('/usr/bin')}:{Path('/bin')}")
    params = dict(launcher_params)
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=tmp_path / "submitit", slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    params.pop("submitit_folder")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    return executor._executor._make_submission_file_text("python -m contrastlab.cli.train", "uid")


def test_slurm_launcher_matches_the_ddp_trainer(hydra_cfg, tmp_path: Path, monkeypatch) -> None:
    cfg = hydra_cfg(
        "hydra/launcher=submitit_slurm",
        "trainer=ddp",
        "trainer.devices=8",
        "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=600",
    )
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    params = launcher.params
    # one process per GPU on every node: what Lightning's DDP under SLURM expects
    assert params["tasks_per_node"] == params["gpus_per_node"] == cfg.trainer.devices == 8
    assert params["nodes"] == cfg.trainer.num_nodes == 2
    assert cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.strategy._target_ == "lightning.pytorch.strategies.DDPStrategy"
    assert cfg.trainer.strategy.process_group_backend == "nccl"
    assert params["submitit_folder"].startswith(str(cfg.hydra.sweep.dir))

    script = sbatch_script(params, tmp_path, monkeypatch)
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", script, flags=re.M))
    assert sbatch["nodes"] == "2" and sbatch["ntasks-per-node"] == "8" and sbatch["gpus-per-node"] == "8"
    assert sbatch["partition"] == "gpu" and sbatch["time"] == "600" and sbatch["cpus-per-task"] == "8"
    assert "srun" in script


def test_slurm_launcher_follows_trainer_overrides(hydra_cfg) -> None:
    cfg = hydra_cfg("hydra/launcher=submitit_slurm", "trainer=gpu")  # one GPU, one node
    params = instantiate(cfg.hydra.launcher).params
    assert params["tasks_per_node"] == params["gpus_per_node"] == cfg.trainer.devices == 1
    assert params["nodes"] == cfg.trainer.num_nodes == 1


def test_joblib_launcher_composes(hydra_cfg) -> None:
    cfg = hydra_cfg("hydra/launcher=joblib", "hydra.launcher.n_jobs=3")
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "JoblibLauncher"
    assert launcher.joblib["n_jobs"] == 3 and launcher.joblib["prefer"] == "processes"


def test_cli_cfg_hydra_composes(tmp_path: Path) -> None:
    proc = run_cli("train", "hydra/launcher=submitit_slurm", "trainer=ddp", "--cfg", "hydra", tmp_path=tmp_path)
    launcher = OmegaConf.create(proc.stdout)["hydra"]["launcher"]
    assert launcher._target_.endswith("SlurmLauncher")
    assert OmegaConf.to_container(launcher)["tasks_per_node"] == "${trainer.devices}"
    assert OmegaConf.to_container(launcher)["nodes"] == "${trainer.num_nodes}"
