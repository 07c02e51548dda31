"""A real multirun sweep (offline W&B) with one deliberately failing job, then contrastlab-compare on it.

The grid ``loss.temperature=0.1,0.5,-1`` runs two tiny trainings and one job that fails at start-up
(temperature <= 0 is rejected by the config checks): the sweep must finish, record the failure and
keep both other runs, each a W&B run of the sweep's group named after its overrides.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import run_cli

from contrastlab.tracking.history import read_history
from contrastlab.tracking.loggers import read_run_info

pytestmark = pytest.mark.slow

# tiny and fast: no kNN/plot callbacks, so the optimised metric is the training loss
FAST = ("debug=fast", "callbacks=none", "optimized_metric=train/loss", "print_config=false", "logger=wandb")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    tmp = tmp_path_factory.mktemp("sweep")
    proc = run_cli("train", "-m", "loss.temperature=0.1,0.5,-1", *FAST, tmp_path=tmp)
    sweeps = list((tmp / "outputs" / "simclr" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps  # outputs/<task>/multiruns/<date>_<time>/
    return proc, sweeps[0], tmp


def test_jobs_complete_and_the_failure_is_recorded(sweep) -> None:
    proc, sweep_dir, _ = sweep
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1", "2"]
    for job, temperature in (("0", 0.1), ("1", 0.5)):
        metrics = json.loads((sweep_dir / job / "metrics.json").read_text())
        assert math.isfinite(metrics["train/loss"]) and metrics["trainer/epoch"] == 1
        assert f"loss.temperature={temperature}" in yaml.safe_load(
            (sweep_dir / job / ".hydra/overrides.yaml").read_text()
        )
        assert not (sweep_dir / job / "error.txt").exists()
    failed = json.loads((sweep_dir / "2" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "loss.temperature" in failed["error"]
    assert "ConfigError" in (sweep_dir / "2" / "error.txt").read_text()  # the traceback
    out = proc.stdout + proc.stderr
    assert "job 2 failed: ConfigError" in out and "3 jobs: 1 failed" in out  # reported at the end


def test_wandb_runs_share_the_sweep_group_and_are_named_by_overrides(sweep) -> None:
    _, sweep_dir, tmp = sweep
    # what wandb held for each job's run (its public attributes, saved by the logger in wandb_run.json)
    runs = {job: read_run_info(sweep_dir / job) for job in ("0", "1", "2")}
    assert runs["2"] is None and not (sweep_dir / "2" / "wandb").exists()  # failed before W&B started
    r0, r1 = runs["0"], runs["1"]
    assert r0["group"] == r1["group"] == sweep_dir.name
    assert r0["name"].startswith("temperature=0.1,") and r1["name"].startswith("temperature=0.5,")
    assert "objective:simclr" in r0["tags"] and r0["job_type"] == "train"
    assert r0["id"] != r1["id"] and r0["id"] == (sweep_dir / "0" / "wandb_run_id").read_text().strip()
    for job, info in (("0", r0), ("1", r1)):  # each job logged into its own run, every logging call once
        assert info["status"] == "success" and math.isfinite(info["summary"]["train/loss"])
        assert info["logged_steps"] == len(read_history(sweep_dir / job))
        assert Path(info["sync_dir"]).parent == sweep_dir / job / "wandb"
    # W&B's own `wandb sync` finds exactly the two runs to upload
    sync = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "sync", "--dry-run", r0["sync_dir"], r1["sync_dir"]],
        capture_output=True,
        text=True,
        cwd=tmp,
        timeout=120,
    )
    assert "Would sync 2 run(s)" in sync.stdout + sync.stderr, sync.stdout + sync.stderr


def test_compare_on_the_sweep(sweep) -> None:
    _, sweep_dir, tmp = sweep
    proc = run_cli("compare", "--metric", "train/loss", tmp_path=tmp)  # default: the latest sweep
    assert "3 runs from" in proc.stdout and "run 2 failed: ConfigError" in proc.stdout
    table = pd.read_csv(sweep_dir / "compare.csv")
    assert table["loss.temperature"].tolist()[2] == -1  # the failed run last
    assert table["train/loss"].iloc[0] <= table["train/loss"].iloc[1]  # sorted: lowest loss first
    assert {"run", "status", "time/wall_s"} <= set(table.columns)
    assert (sweep_dir / "compare.md").read_text().startswith("| run | status |")
    assert (sweep_dir / "compare.png").read_bytes()[:4] == b"\x89PNG"
