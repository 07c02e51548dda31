"""Shared test helpers: run the real command-line entry points in a subprocess."""

from __future__ import annotations

import json
import os
import re
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


#: runs ``contrastlab.cli.train.main`` (argv, Hydra and the error boundary) for each case in one process,
#: each under a 20 s alarm, so torch and Lightning are imported once for a table of cases; prints one JSON
#: line per case. With ``startup_only``, what follows the start-up rules is replaced by a sentinel (a case
#: that gets past them reports "passed the start-up rules" instead of training) and Hydra's first composition
#: (only to read ``hydra.mode``, which no config here sets) is skipped, halving the time per case.
CASE_RUNNER = r"""
import contextlib, io, json, signal, sys, traceback
from hydra.core.global_hydra import GlobalHydra
import lightning, contrastlab.objectives, contrastlab.negatives  # imported once, outside the alarms
from contrastlab.cli import train
from contrastlab.training import fit

cases, root, startup_only = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"

class Alarm(BaseException):
    pass

class PassedStartup(BaseException):  # not an Exception: no handler on the way may take it for an error
    pass

def alarm(*_):
    raise Alarm()

if startup_only:
    from hydra._internal.hydra import Hydra

    Hydra.get_mode = lambda self, config_name, overrides: None
    real_check = fit.check_config

    def check_then_stop(cfg):
        real_check(cfg)
        raise PassedStartup()  # the start-up rules let it through: what follows would train

    fit.check_config = check_then_stop
signal.signal(signal.SIGALRM, alarm)
for i, args in enumerate(cases):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["contrastlab-train", *args, f"hydra.run.dir={root}/case{i}"]
    if startup_only:
        sys.argv.append("hydra.output_subdir=null")
    signal.alarm(20)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                train.main()
                code = 0
            except SystemExit as e:
                code = e.code
            except PassedStartup:
                code = "passed the start-up rules"
            except Alarm:
                code = "no exit within 20 s"
            except BaseException:
                code = "raised"
                traceback.print_exc(file=err)
    finally:
        signal.alarm(0)
        GlobalHydra.instance().clear()
    print(json.dumps({"args": args, "code": code, "out": out.getvalue(), "err": err.getvalue()}), flush=True)
"""


def run_train_cases(cases: list[list[str]], tmp_path: Path, workers: int = 1, startup_only: bool = False) -> list[dict]:
    """``{"args", "code", "out", "err"}`` of each case (overrides for ``contrastlab-train``) through
    :data:`CASE_RUNNER` in ``workers`` subprocesses; ``code`` is the exit status or what stopped the case."""
    chunks = [cases[i::workers] for i in range(workers)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CASE_RUNNER, json.dumps(chunk), str(tmp_path / f"runs{i}"), str(int(startup_only))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(tmp_path),
            cwd=tmp_path,
        )
        for i, chunk in enumerate(chunks)
    ]
    results: list[list[dict]] = []
    for proc, chunk in zip(procs, chunks, strict=True):
        stdout, stderr = proc.communicate(timeout=60 + 30 * len(chunk))  # a guard; each case has a 20 s alarm
        got = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        assert len(got) == len(chunk), stdout[-2000:] + stderr[-4000:]
        results.append(got)
    return [results[i % workers][i // workers] for i in range(len(cases))]


# a Python warning attributed to contrastlab's code, as the warnings module prints it ("<file>:<line>: <Category>: ")
OWN_WARNING = re.compile(r"contrastlab/[\w/]+\.py:\d+: \w*Warning: .*")


def own_warnings(output: str) -> list[str]:
    """The warnings of ``output`` that contrastlab's own modules emitted (none is expected from a command a
    test runs unless the test says so)."""
    return OWN_WARNING.findall(output)


def run_cli(
    module: str,
    *args: str,
    tmp_path: Path,
    timeout: float = 300,
    check: bool = True,
    cwd: Path | None = None,
    expect_warnings: bool = False,
) -> subprocess.CompletedProcess:
    """``python -m contrastlab.cli.<module> args...``; on ``check`` failure the output is shown. A warning of
    contrastlab's own code in the output fails the call unless ``expect_warnings``."""
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
    if not expect_warnings:
        own = own_warnings(proc.stdout + proc.stderr)
        assert not own, f"{module} {' '.join(args)} printed contrastlab warnings: {own}"
    return proc


def train_run(
    tmp_path: Path,
    *overrides: str,
    name: str = "run",
    check: bool = True,
    timeout: float = 300,
    expect_warnings: bool = False,
) -> Run:
    """One ``contrastlab-train`` run into ``tmp_path/name`` (csv logger and no config print unless overridden);
    a contrastlab warning in its output fails the call unless ``expect_warnings``."""
    run_dir = tmp_path / name
    args = ["logger=csv", "print_config=false", *overrides, f"hydra.run.dir={run_dir}"]
    proc = run_cli("train", *args, tmp_path=tmp_path, check=check, timeout=timeout, expect_warnings=expect_warnings)
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
