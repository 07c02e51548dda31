"""End to end through the CLI: every sampler of objective=triplet, and SimCLR with a memory bank."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

TRIPLET_SAMPLERS = ["batch_hard", "semi_hard", "batch_all", "memory_bank", "ann_mined"]


@pytest.mark.slow
def test_every_sampler_trains_the_triplet_objective(tmp_path):
    """One multirun (one process) over the samplers, each a ``debug=fast`` run."""
    sweep = tmp_path / "sweep"
    run_cli(
        "train",
        "-m",
        "objective=triplet",
        f"sampler={','.join(TRIPLET_SAMPLERS)}",
        "debug=fast",
        "data.limit_samples=256",
        "trainer.limit_train_batches=2",
        "logger=csv",
        "print_config=false",
        f"hydra.sweep.dir={sweep}",
        tmp_path=tmp_path,
        timeout=900,
    )
    for job, name in enumerate(TRIPLET_SAMPLERS):  # jobs are numbered in the order of the sweep
        assert f"sampler={name}" in (sweep / str(job) / ".hydra" / "overrides.yaml").read_text()
        metrics = json.loads((sweep / str(job) / "metrics.json").read_text())
        assert metrics["val/knn_top1"] > 0.5, (
            name
        )  # chance is 0.1 on digits: a monitor with misaligned labels or features misses this
        assert metrics["train/mining/num_triplets"] > 0, name
        assert metrics["train/embedding_spread"] > 0, name


@pytest.mark.slow
def test_simclr_with_a_momentum_memory_bank(train):
    run = train("objective=simclr", "sampler=memory_bank", "sampler.momentum=0.9", "debug=fast")
    metrics = run.metrics
    assert (
        metrics["val/knn_top1"] > 0.5
    )  # chance is 0.1 on digits: a monitor with misaligned labels or features misses this
    # after 3 steps of 32 items x 2 views the keys are this batch (64) + the 2 queued batches (128)
    assert metrics["train/num_candidates"] == 64 + 128
