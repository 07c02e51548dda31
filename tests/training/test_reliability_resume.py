"""Kill and resume: a run killed with SIGKILL mid-epoch, resumed with ``ckpt_path=last``, stopped with
SIGTERM, and resumed again with ``resume=auto`` ends exactly like a run that was never interrupted:
same step count, same metrics, same memory bank, one W&B run."""

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
from conftest import cli_env

from contrastlab.tracking.loggers import RUN_ID_FILE

EPOCHS, BATCHES = 2, 6  # 12 optimizer steps; every step writes checkpoints/last.ckpt
CONFIG = (
    "debug=fast",
    f"trainer.max_epochs={EPOCHS}",
    f"trainer.limit_train_batches={BATCHES}",
    "sampler=memory_bank",
    "sampler.size=256",  # 4 steps of 64 rows: the queue wraps around within the run
    "callbacks.step_checkpoint.every_n_train_steps=1",
    "print_config=false",
)
GUARD_S = 600  # a guard against a hung subprocess, not a timing assertion


def start(tmp_path: Path, run_dir: Path, *overrides: str) -> tuple[subprocess.Popen, Path]:
    log = run_dir.parent / f"{run_dir.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "contrastlab.cli.train", *CONFIG, *overrides, f"hydra.run.dir={run_dir}"],
        env=cli_env(tmp_path),
        cwd=tmp_path,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group (with the W&B service): killed together
    )
    return proc, log


def finish(proc: subprocess.Popen, log: Path) -> str:
    try:
        proc.wait(timeout=GUARD_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return log.read_text()


def checkpoint_step(path: Path) -> int | None:
    """The global step of the checkpoint at ``path`` (None while absent)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return int(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)["global_step"])


def wait_for_step(path: Path, proc: subprocess.Popen, log: Path, above: int) -> int:
    """Poll until ``path`` holds a checkpoint past step ``above`` (written atomically: never half a file)."""
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        step = checkpoint_step(path)
        if step is not None and step > above:
            return step
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc={proc.returncode}) first:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint past step {above} at {path}")


def final_metrics(run_dir: Path) -> dict[str, float]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # time differs; *_init values are logged once, by the validation before a fresh run's first step
    return {k: v for k, v in metrics.items() if k != "time/wall_s" and not k.endswith("_init")}


def bank(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("negatives.")}


@pytest.mark.slow
def test_sigkill_sigterm_and_resumes_end_like_an_uninterrupted_run(tmp_path: Path) -> None:
    runs = tmp_path / "outputs" / "simclr" / "runs"  # where ckpt_path=last / resume=auto search
    reference = tmp_path / "reference" / "A"  # outside the search root: never picked up for resuming
    ref_proc, ref_log = start(tmp_path, reference, "logger=csv")

    # B: SIGKILL (no chance to save anything) as soon as a mid-epoch step checkpoint exists
    b_dir = runs / "B"
    b_proc, b_log = start(tmp_path, b_dir, "logger=wandb")
    try:
        killed_at = wait_for_step(b_dir / "checkpoints" / "last.ckpt", b_proc, b_log, above=0)
    finally:
        os.killpg(b_proc.pid, signal.SIGKILL)
        finish(b_proc, b_log)
    killed_at = checkpoint_step(b_dir / "checkpoints" / "last.ckpt")
    assert killed_at is not None and killed_at % BATCHES != 0, "killed at an epoch boundary, not mid-epoch"
    assert not (b_dir / "metrics.json").exists()

    # C: ckpt_path=last finds B's checkpoint; SIGTERM once C has trained past it
    c_dir = runs / "C"
    c_proc, c_log = start(tmp_path, c_dir, "logger=wandb", "ckpt_path=last")
    try:
        seen = wait_for_step(c_dir / "checkpoints" / "last.ckpt", c_proc, c_log, above=killed_at)
        assert seen < EPOCHS * BATCHES, "C finished before it could be pre-empted"
        c_proc.send_signal(signal.SIGTERM)  # the Python process only, as SLURM's pre-emption notice
    finally:
        c_out = finish(c_proc, c_log)
    assert c_proc.returncode == 143, c_out[-3000:]
    assert f"resuming from {b_dir / 'checkpoints' / 'last.ckpt'}" in c_out
    sigterm_step = checkpoint_step(c_dir / "checkpoints" / "last.ckpt")
    assert sigterm_step is not None and seen <= sigterm_step < EPOCHS * BATCHES
    assert f"stopped by SIGTERM at step {sigterm_step}: saved {c_dir / 'checkpoints' / 'last.ckpt'}" in c_out
    assert "Traceback" not in c_out

    # D: resume=auto picks the newest checkpoint of this config (C's) and trains to the end
    d_dir = runs / "D"
    d_proc, d_log = start(tmp_path, d_dir, "logger=wandb", "resume=auto")
    d_out = finish(d_proc, d_log)
    assert d_proc.returncode == 0, d_out[-3000:]
    assert f"resuming from {c_dir / 'checkpoints' / 'last.ckpt'}" in d_out

    ref_out = finish(ref_proc, ref_log)
    assert ref_proc.returncode == 0, ref_out[-3000:]
    expected, got = final_metrics(reference), final_metrics(d_dir)
    assert got["trainer/global_step"] == expected["trainer/global_step"] == EPOCHS * BATCHES
    assert got.keys() == expected.keys()
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # the memory bank (queue, ids, labels, pointer) continued across both interruptions
    ref_bank, d_bank = bank(reference), bank(d_dir)
    assert ref_bank.keys() == d_bank.keys() and "negatives.queue" in ref_bank
    for key, value in ref_bank.items():
        torch.testing.assert_close(d_bank[key], value, rtol=1e-5, atol=1e-6)
    # one W&B run across the three processes
    run_id = (b_dir / RUN_ID_FILE).read_text().strip()
    assert (c_dir / RUN_ID_FILE).read_text().strip() == run_id
    assert (d_dir / RUN_ID_FILE).read_text().strip() == run_id
