"""A killed run, resumed from its ``last.ckpt``, continues the same (offline) W&B run."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_env, train_run

from contrastlab.tracking.history import read_history
from contrastlab.tracking.loggers import RESUMED_FROM_FILE, RUN_ID_FILE, read_run_info

FAST = ("debug=fast", "callbacks=none", "optimized_metric=train/loss", "print_config=false")


def wait_for_checkpoint(path: Path, proc: subprocess.Popen, guard_s: float = 600) -> bytes:
    """The bytes of the first complete checkpoint at ``path`` written while ``proc`` runs."""
    deadline = time.monotonic() + guard_s  # a guard against hanging forever, not a timing assertion
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc={proc.returncode}) before writing {path}")
        try:
            data = path.read_bytes()
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
            return data
        except (OSError, EOFError, RuntimeError, ValueError):  # not there yet, or half-written
            time.sleep(0.5)
    raise AssertionError(f"no checkpoint at {path}")


@pytest.mark.slow
def test_killed_run_resumes_the_same_wandb_run(tmp_path: Path) -> None:
    run1 = tmp_path / "run1"
    last = run1 / "checkpoints" / "last.ckpt"
    checkpointing = (
        "+callbacks.ckpt={_target_:lightning.pytorch.callbacks.ModelCheckpoint,"
        f"dirpath:'{run1}/checkpoints',save_last:true}}"
    )
    args = ["logger=wandb", *FAST, checkpointing, "trainer.max_epochs=1000", f"hydra.run.dir={run1}"]
    log = (tmp_path / "run1.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "contrastlab.cli.train", *args],
        env=cli_env(tmp_path),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        good = wait_for_checkpoint(last, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # killed mid-training, W&B run never finished
        proc.wait()
        log.close()
    try:  # the kill may have cut a newer last.ckpt short: keep the complete one
        torch.load(last, map_location="cpu", weights_only=False)
    except (EOFError, RuntimeError):
        last.write_bytes(good)
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    run_id = (run1 / RUN_ID_FILE).read_text().strip()

    target = ckpt["epoch"] + 2
    resumed = train_run(
        tmp_path, "logger=wandb", *FAST, f"ckpt_path={last}", f"trainer.max_epochs={target}", name="run2"
    )
    run2 = resumed.run_dir
    # training continued from the checkpoint, not from scratch
    assert resumed.metrics["trainer/epoch"] == target
    assert resumed.metrics["trainer/global_step"] == ckpt["global_step"] + 3 * (target - ckpt["epoch"] - 1)
    # ... into the same W&B run: same id in the id file and in the offline run, linked to the old run
    assert (run2 / RUN_ID_FILE).read_text().strip() == run_id
    assert Path((run2 / RESUMED_FROM_FILE).read_text().strip()) == run1
    # both offline folders carry the id in their names: `wandb sync` of both appends to the one run
    assert list((run1 / "wandb").glob(f"offline-run-*-{run_id}")), "the killed run had no offline W&B run"
    (second,) = (run2 / "wandb").glob(f"offline-run-*-{run_id}")
    # what wandb itself held for the resumed run (its public attributes, saved by the logger)
    first_info, info = read_run_info(run1), read_run_info(run2)
    assert first_info is not None, "W&B never started in run1:\n" + (tmp_path / "run1.log").read_text()[-3000:]
    assert first_info["id"] == info["id"] == run_id and info["sync_dir"] == str(second)
    assert info["status"] == "success"
    # the resumed run logged only after the checkpoint's step, into the W&B run and its own history
    steps = read_history(run2).dropna(subset=["train/loss"])["step"]
    assert len(steps) and steps.min() >= ckpt["global_step"]
    assert info["summary"]["trainer/global_step"] == steps.max()
    assert info["logged_steps"] == len(read_history(run2))  # every logging call reached the W&B run once
    assert json.loads((run2 / "metrics.json").read_text())["trainer/epoch"] == target
