"""``trainer=ddp_cpu`` (2 gloo processes) runs of SimCLR, triplet and CLIP through the real CLI, with the
W&B logger (offline): each writes ONE run directory, ONE W&B run and ONE metrics.json, and logs every
metric once per step (rank 0), not once per process. The three runs go side by side to save time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env

from contrastlab.tracking import loggers
from contrastlab.tracking.history import read_history

pytestmark = pytest.mark.slow  # three 2-process CLI runs

COMMON = ["trainer=ddp_cpu", "debug=fast", "logger=wandb", "print_config=false"]
RUNS = {
    # sqrt LR scaling in the global batch 2 x 32: lr = 2e-3 * sqrt(64 / 256) (1 process: sqrt(32 / 256))
    "simclr": ["objective.lr_scaling=sqrt", "scheduler=constant"],
    "triplet": ["objective=triplet", "sampler=batch_hard"],
    "clip": ["experiment=clip_shapes"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp_runs")
    env = {**cli_env(root), "OMP_NUM_THREADS": "1"}  # 6 processes of tiny models on a few cores
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "contrastlab.cli.train", *COMMON, *extra, f"hydra.run.dir={root / name}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=root,
        )
        for name, extra in RUNS.items()
    }
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{out[-6000:]}"
    return root


def test_ddp_runs_write_one_run_directory_each_and_nothing_else(runs: Path) -> None:
    assert sorted(p.name for p in runs.iterdir()) == sorted(RUNS)  # no stray outputs/, wandb/ or rank dirs
    for name in RUNS:
        tops = {p.name for p in (runs / name).iterdir()}
        assert {"metrics.json", "checkpoints", "wandb", ".hydra"} <= tops
        assert not [t for t in tops if "rank" in t and not t.endswith(".log")], tops  # no per-rank copies


@pytest.mark.parametrize("name", list(RUNS))
def test_one_wandb_run_with_each_step_logged_once(runs: Path, name: str) -> None:
    run_dir = runs / name
    (offline,) = run_dir.glob("wandb/offline-run-*")  # exactly one W&B run
    info = loggers.read_run_info(run_dir)  # what wandb held for it, saved by rank 0's logger
    assert info["id"] == (run_dir / "wandb_run_id").read_text().strip() and offline.name.endswith(info["id"])
    assert info["sync_dir"] == str(offline) and info["status"] == "success"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    steps = metrics["trainer/global_step"]
    assert steps == 3
    # rank 0 alone logs: one train/loss row per optimizer step (two processes logging would give 6) ...
    curves = read_history(run_dir)
    assert curves["train/loss"].notna().sum() == steps
    # ... and the W&B run received exactly those logging calls, ending at the last step
    assert info["logged_steps"] == len(curves)
    assert info["summary"]["trainer/global_step"] == curves["step"].max() == steps - 1


def test_lr_scaling_counts_every_process(runs: Path) -> None:
    metrics = json.loads((runs / "simclr" / "metrics.json").read_text())
    assert metrics["lr-AdamW/pg1"] == pytest.approx(2e-3 * (2 * 32 / 256) ** 0.5, rel=1e-6)
    assert metrics["train/num_candidates"] == 2 * 2 * 32  # each anchor saw the keys of both ranks' batches
