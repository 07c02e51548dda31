"""Overrides read with Hydra's own parser, and the one list of keys that are not experiment settings."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml
from hydra.errors import OverrideParseException

from contrastlab.config import CONF_DIR
from contrastlab.config.overrides import (
    NON_EXPERIMENT_KEYS,
    given_keys,
    is_experiment_key,
    override_key,
    override_value,
    parse_overrides,
)


def test_values_are_typed_as_hydra_types_them() -> None:
    lines = [
        "optimizer.lr=1e-3",
        "data.name='1e-3'",
        "+loss.temperature=0.1",
        "seed=3",
        "flag=true",
        "x=null",
        "tags=[a,b]",
        "~callbacks.knn",
        "loss.temperature=0.1,0.5",
        "db@pkg=mysql",
    ]
    parsed = parse_overrides(lines)
    assert [override_key(o) for o in parsed] == [
        "optimizer.lr",
        "data.name",
        "loss.temperature",
        "seed",
        "flag",
        "x",
        "tags",
        "callbacks.knn",
        "loss.temperature",
        "db@pkg",
    ]
    values = [override_value(o) for o in parsed]
    assert values == [0.001, "1e-3", 0.1, 3, True, None, "[a,b]", None, None, "mysql"]
    assert [type(v) for v in values[:5]] == [float, str, float, int, bool]
    with pytest.raises(OverrideParseException):
        parse_overrides(["no_equals_sign"])


def test_non_experiment_keys() -> None:
    for key in ("hydra.run.dir", "hydra/launcher", "paths.log_dir", "ckpt_path", "callbacks.knn.k", "logger"):
        assert not is_experiment_key(key), key
    for key in ("loss.temperature", "optimizer.lr", "debug", "seed", "trainer.max_epochs", "hydra_like"):
        assert is_experiment_key(key), key
    assert not is_experiment_key("seed", ["seed"])


def test_one_list_is_used_everywhere() -> None:
    from contrastlab.tracking import leaderboard, loggers
    from contrastlab.training import resume

    assert resume.KEY_EXCLUDE is NON_EXPERIMENT_KEYS  # the resume key leaves out the same keys
    assert inspect.signature(loggers.WandbRunLogger).parameters["name_exclude"].default is NON_EXPERIMENT_KEYS
    assert inspect.signature(loggers.run_name_from_overrides).parameters["exclude"].default is NON_EXPERIMENT_KEYS
    assert list(leaderboard.parse_overrides([f"{k}=1" for k in NON_EXPERIMENT_KEYS] + ["seed=1"])) == ["seed"]
    wandb_conf = yaml.safe_load(Path(CONF_DIR, "logger", "wandb.yaml").read_text())
    assert "name_exclude" not in wandb_conf  # no second copy of the list in the config


def test_given_keys_skips_flags_and_non_overrides() -> None:
    argv = ["-m", "--config-name", "train", "hydra.job.name=mine", "+x.y=1", "~tags", "loss.temperature=0.1,0.5"]
    assert given_keys(argv) == {"hydra.job.name", "x.y", "tags", "loss.temperature"}
