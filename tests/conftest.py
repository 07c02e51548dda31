"""Shared test helpers: run the real command-line entry points in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    run_dir: Path

    @property
    def metrics(self) -> dict:
        return json.loads((self.run_dir / "metrics.json").read_text())

    @property
    def output(self) -> str:
        return self.proc.stdout + self.proc.stderr

    def checkpoint_metrics(self) -> dict[str, float]:
        """``evaluate_metrics`` of the run's last checkpoint (a dual-encoder objective: CLIP, bi-encoder),
        recomputed in this process: the numbers the run's final validation must have logged."""
        from contrastlab import api

        model, dm, _ = api.load_checkpoint(self.run_dir / "checkpoints" / "last.ckpt")
        return model.evaluate_metrics(dm)

    def assert_metrics_match_checkpoint(self, *keys: str) -> dict[str, float]:
        """Every ``keys`` entry of ``metrics.json`` (all recomputed ones when none are named) equals its value
        recomputed from the last checkpoint; returns the recomputed metrics."""
        again, logged = self.checkpoint_metrics(), self.metrics
        for key in keys or tuple(k for k in again if not k.endswith("_chance")):
            assert logged[key] == pytest.approx(again[key], abs=1e-6), key
        return again


def cli_env(tmp_path: Path) -> dict[str, str]:
    # WANDB_SERVICE is set by wandb in a process that started its service (an in-process W&B test run); a child
    # inheriting it connects to that service, which may be gone by then: every command starts its own
    inherited = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {
        **inherited,
        "CONTRASTLAB_OUTPUTS": str(tmp_path / "outputs"),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "PYTHONUNBUFFERED": "1",
        # tiny models: a second intra-op thread only adds contention (tests run in parallel workers)
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }


def run_cli(
    module: str, *args: str, tmp_path: Path, timeout: float = 300, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``python -m contrastlab.cli.<module> args...``; on ``check`` failure the output is shown."""
    proc = subprocess.run(
        [sys.executable, "-m", f"contrastlab.cli.{module}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(tmp_path),
        cwd=cwd or tmp_path,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{module} {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def train_run(tmp_path: Path, *overrides: str, name: str = "run", check: bool = True, timeout: float = 300) -> Run:
    """One ``contrastlab-train`` run into ``tmp_path/name`` (csv logger and no config print unless overridden)."""
    run_dir = tmp_path / name
    args = ["logger=csv", "print_config=false", *overrides, f"hydra.run.dir={run_dir}"]
    proc = run_cli("train", *args, tmp_path=tmp_path, check=check, timeout=timeout)
    return Run(proc, run_dir)


@pytest.fixture
def train(tmp_path: Path):
    """``train(*overrides)`` -> :class:`Run`."""

    def _train(*overrides: str, **kw) -> Run:
        return train_run(tmp_path, *overrides, **kw)

    return _train


def make_train(tmp_path: Path, *make_args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``make train [make_args]`` in the repository, as the README runs it. ``-o`` tells make that the virtual
    environment the suite runs in is up to date, so a test never reinstalls anything."""
    venv = Path(sys.prefix)
    return subprocess.run(
        ["make", "-C", str(ROOT), f"VENV={venv}", "-o", f"{venv}/.installed", "-o", f"{venv}/bin/python", "train",
         *make_args],
        env=cli_env(tmp_path), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def quiet_trainer(**kwargs):
    """A CPU Lightning ``Trainer`` that writes and prints nothing (no logger, checkpoints, progress bar, model
    summary or sanity check); ``kwargs`` add to or override these."""
    import lightning as L

    quiet = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return L.Trainer(**{**quiet, **kwargs})


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is fastest, and far faster on a busy machine. Use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
