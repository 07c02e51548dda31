"""``hparams_search=optuna``: TPE trials return ``optimized_metric``, the best is reported, and the
SQLite storage lets a second invocation continue the same study."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import run_cli

FAST = (
    "hparams_search=optuna",
    "debug=fast",
    "callbacks=none",
    "logger=csv",
    "print_config=false",
    "optimized_metric=train/loss",
    "hydra.sweeper.direction=minimize",
)
SPACE = {"loss.temperature", "optimizer.lr", "head.out_dim", "data.batch_size"}


def sweep_dirs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "outputs" / "simclr" / "multiruns").iterdir())


@pytest.mark.slow
def test_optuna_search_reports_the_best_and_resumes(tmp_path: Path) -> None:
    proc = run_cli("train", *FAST, "hydra.sweeper.n_trials=2", tmp_path=tmp_path)
    (first,) = sweep_dirs(tmp_path)
    losses = [json.loads((first / job / "metrics.json").read_text())["train/loss"] for job in ("0", "1")]
    result = yaml.safe_load((first / "optimization_results.yaml").read_text())
    assert result["best_value"] == min(losses)  # the jobs' return values are what Optuna optimised
    assert set(result["best_params"]) == SPACE
    assert "Best value" in proc.stdout + proc.stderr

    storage = f"sqlite:///{tmp_path / 'outputs' / 'optuna' / 'simclr_digits.db'}"
    study = optuna.load_study(study_name="simclr_digits", storage=storage)
    assert sorted(t.value for t in study.trials) == sorted(losses)
    for trial in study.trials:
        assert set(trial.params) == SPACE
        assert 0.05 <= trial.params["loss.temperature"] <= 1.0 and 1e-4 <= trial.params["optimizer.lr"] <= 1e-2

    run_cli("train", *FAST, "hydra.sweeper.n_trials=1", tmp_path=tmp_path)  # same command again: resumes
    assert len(sweep_dirs(tmp_path)) == 2
    study = optuna.load_study(study_name="simclr_digits", storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
