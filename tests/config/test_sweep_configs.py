"""Search spaces and experiment recipes compose; every corner of a search space passes start-up checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_cli
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.distributions import CategoricalDistribution

from contrastlab.config.build import CONF_DIR
from contrastlab.config.checks import check_config

CONF = Path(CONF_DIR)
SEARCHES = sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))


def compose_train(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} (task_name, study name) resolve as in a run
    return cfg


@pytest.fixture(autouse=True)
def _reset_hydra_config():
    yield
    HydraConfig.instance().cfg = None


def corners(params: DictConfig) -> list[list[str]]:
    """Two trials at opposite corners of a search space: all low ends / first choices, and the reverse."""
    dists, _ = create_params_from_overrides([f"{k}={v}" for k, v in params.items()])
    low, high = [], []
    for name, d in dists.items():
        lo, hi = (d.choices[0], d.choices[-1]) if isinstance(d, CategoricalDistribution) else (d.low, d.high)
        low.append(f"{name}={lo}")
        high.append(f"{name}={hi}")
    return [low, high]


def test_every_objective_has_a_search() -> None:
    assert {"optuna", "optuna_triplet", "optuna_clip"} <= set(SEARCHES)


@pytest.mark.parametrize("search", SEARCHES)
def test_search_space_corners_pass_start_up_checks(search: str) -> None:
    cfg = compose_train(f"hparams_search={search}")
    sweeper = cfg.hydra.sweeper
    assert cfg.hydra.mode.name == "MULTIRUN"  # no -m needed
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.direction == "maximize"
    assert sweeper.storage.startswith("sqlite:///") and sweeper.storage.endswith(f"/{sweeper.study_name}.db")
    objective = cfg.hydra.runtime.choices.objective
    assert (CONF / "objective" / f"{objective}.yaml").is_file(), (
        f"{search} names objective={objective}, which conf/ lacks"
    )
    for trial in corners(sweeper.params):
        check_config(compose_train(f"hparams_search={search}", *trial))


def test_optuna_search_space() -> None:
    params = compose_train("hparams_search=optuna").hydra.sweeper.params
    dists, fixed = create_params_from_overrides([f"{k}={v}" for k, v in params.items()])
    assert not fixed
    assert set(dists) == {"loss.temperature", "optimizer.lr", "head.out_dim", "data.batch_size"}
    assert dists["loss.temperature"].low == 0.05 and dists["optimizer.lr"].high == 1e-2


def test_cifar10_recipes_compose() -> None:
    lightly = OmegaConf.to_container(compose_train("experiment=simclr_cifar10"), resolve=False)
    assert lightly["data"]["_target_"].endswith("CIFAR10DataModule") and lightly["data"]["batch_size"] == 512
    assert lightly["encoder"]["cifar_stem"] is True and lightly["encoder"]["name"] == "resnet18"
    assert lightly["optimizer"]["_target_"] == "torch.optim.SGD" and lightly["optimizer"]["lr"] == 0.24
    assert lightly["loss"]["temperature"] == 0.5 and lightly["trainer"]["max_epochs"] == 200
    assert lightly["scheduler"]["warmup_fraction"] == 0.0 and lightly["trainer"]["accelerator"] == "gpu"
    solo = OmegaConf.to_container(compose_train("experiment=simclr_cifar10_solo"), resolve=False)
    assert solo["optimizer"]["_target_"] == "timm.optim.Lars" and solo["trainer"]["max_epochs"] == 1000
    assert solo["loss"]["temperature"] == 0.2 and solo["head"]["hidden_dim"] == 2048 and solo["head"]["out_dim"] == 256
    assert solo["objective"]["lr_scaling"] == "linear"


@pytest.mark.parametrize("experiment", ["simclr_cifar10", "simclr_cifar10_solo"])
def test_cifar10_recipes_only_set_existing_keys(experiment: str) -> None:
    """An overlay's key that its group's config lacks is a typo (Hydra would add it silently)."""
    cfg = compose_train(f"experiment={experiment}")
    choices = cfg.hydra.runtime.choices
    groups = ("data", "augment", "encoder", "head", "loss", "optimizer", "scheduler", "objective", "trainer")
    plain = compose_train(*(f"{g}={choices[g]}" for g in groups))
    extra_ok = {"optimizer": {"trust_clip"}}  # a timm.optim.Lars argument lars.yaml leaves at its default
    for group in groups:
        added = set(cfg[group]) - set(plain[group]) - extra_ok.get(group, set())
        assert not added, f"experiment={experiment} sets unknown {group} keys {added}"
    assert set(cfg.callbacks.knn) == set(plain.callbacks.knn)


@pytest.mark.parametrize("experiment", ["simclr_cifar10", "simclr_cifar10_solo"])
def test_cifar10_recipes_build(experiment: str) -> None:
    """The recipe's model and optimiser are real objects (no data needed)."""
    from hydra.utils import instantiate

    from contrastlab.config import build

    cfg = compose_train(f"experiment={experiment}")
    with open_dict(cfg):
        del cfg["hydra"]  # what a job sees
    model = build.build_objective(cfg)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    assert optimizer.defaults["lr"] == cfg.optimizer.lr
    assert model.head(model.encoder(torch.zeros(2, 3, 32, 32))).shape == (2, cfg.head.out_dim)


def test_cifar10_recipe_cli_cfg_job(tmp_path: Path) -> None:
    proc = run_cli("train", "experiment=simclr_cifar10", "--cfg", "job", tmp_path=tmp_path)
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.data.batch_size == 512 and cfg.trainer.max_epochs == 200 and cfg.loss.temperature == 0.5
