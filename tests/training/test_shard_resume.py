"""Exact mid-epoch resume from tar shards: a ``data=webdataset`` run with ``trainer=ddp_cpu`` (2 ranks) and 2
loader workers per rank (4 stream slots), killed with SIGKILL mid-epoch and resumed with ``ckpt_path=last``,
ends with the same global step, train/loss, val/knn_top1 and weights as a run that was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli_env
from test_reliability_resume import checkpoint_step, final_metrics, finish, wait_for_step
from writers import write_image_shards

EPOCHS, BATCHES = 2, 6  # 96 samples / (2 ranks x 2 workers x 8) = 3 batches per slot, 6 per rank and epoch


def start(tmp_path: Path, run_dir: Path, shards: Path, *overrides: str) -> tuple[subprocess.Popen, Path]:
    config = (
        "data=webdataset",
        f"data.urls='{shards}/train-{{000000..000004}}.tar'",
        f"data.val_urls={shards}/val-000000.tar",
        "data.image_size=16",
        "data.batch_size=8",
        "data.num_workers=2",
        "data.shuffle_buffer=16",
        "data.eval_train_samples=32",
        "augment=simclr",
        "encoder.width=8",
        "trainer=ddp_cpu",
        f"trainer.max_epochs={EPOCHS}",
        "callbacks.step_checkpoint.every_n_train_steps=1",
        "callbacks.embedding_plot=null",
        "logger=csv",
        "print_config=false",
    )
    log = run_dir.parent / f"{run_dir.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "contrastlab.cli.train", *config, *overrides, f"hydra.run.dir={run_dir}"],
        env={**cli_env(tmp_path), "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # ranks and loader workers in one process group: killed together
    )
    return proc, log


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_a_killed_ddp_run_on_shards_resumes_like_an_uninterrupted_one(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    write_image_shards(shards, n=96, per_shard=20)  # 5 shards of 20, 20, 20, 20, 16: split by member ranges
    write_image_shards(shards, name="val", n=24, per_shard=24, seed=1)
    runs = tmp_path / "outputs" / "simclr" / "runs"  # where ckpt_path=last searches
    reference = tmp_path / "reference" / "A"  # outside the search root
    ref_proc, ref_log = start(tmp_path, reference, shards)

    b_dir = runs / "B"
    b_proc, b_log = start(tmp_path, b_dir, shards)
    try:
        wait_for_step(b_dir / "checkpoints" / "last.ckpt", b_proc, b_log, above=0)
    finally:
        os.killpg(b_proc.pid, signal.SIGKILL)  # every rank and loader worker, no chance to save anything
        finish(b_proc, b_log)
    killed_at = checkpoint_step(b_dir / "checkpoints" / "last.ckpt")
    assert killed_at is not None and killed_at % BATCHES != 0, f"killed at step {killed_at}, not mid-epoch"
    assert not (b_dir / "metrics.json").exists()

    c_dir = runs / "C"
    c_proc, c_log = start(tmp_path, c_dir, shards, "ckpt_path=last")
    c_out = finish(c_proc, c_log)
    assert c_proc.returncode == 0, c_out[-4000:]
    assert f"resuming from {b_dir / 'checkpoints' / 'last.ckpt'}" in c_out
    ref_out = finish(ref_proc, ref_log)
    assert ref_proc.returncode == 0, ref_out[-4000:]

    expected, got = final_metrics(reference), final_metrics(c_dir)
    assert got["trainer/global_step"] == expected["trainer/global_step"] == EPOCHS * BATCHES
    assert got.keys() == expected.keys() and {"train/loss", "val/knn_top1", "data/skipped_samples"} <= got.keys()
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    ref_w, got_w = weights(reference), weights(c_dir)
    assert ref_w.keys() == got_w.keys()
    for key, value in ref_w.items():
        torch.testing.assert_close(got_w[key], value, rtol=1e-5, atol=1e-6)
