"""The triplet objective in-process: wiring checks, view positives with ANN-mined negatives, the collapse guard."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from conftest import quiet_trainer
from hydra import compose, initialize_config_dir

from contrastlab.config import build
from contrastlab.encoders import ProjectionHead, SmallCNN
from contrastlab.evaluation.health import dimension_std
from contrastlab.losses import NTXentLoss, TripletMarginLoss
from contrastlab.negatives import InBatch, TripletMiner
from contrastlab.objectives import Triplet
from contrastlab.objectives.collapse_guard import CollapseGuard, CollapseWarning


def test_spread_is_zero_for_identical_embeddings_and_about_one_over_sqrt_d_when_spread():
    assert dimension_std(torch.ones(10, 4)) == pytest.approx(0.0, abs=1e-7)
    z = torch.randn(4000, 64, generator=torch.Generator().manual_seed(0))
    assert dimension_std(z) == pytest.approx(64**-0.5, rel=0.05)
    naive = torch.nn.functional.normalize(z, dim=1)
    stds = [naive[:, j].std().item() for j in range(64)]
    assert dimension_std(z) == pytest.approx(sum(stds) / 64, rel=1e-5)


def test_collapse_guard_averages_an_epoch_and_warns_once():
    guard = CollapseGuard(threshold=0.05)
    guard.update(torch.randn(32, 16))
    assert guard.epoch_end() > 0.05
    with pytest.warns(CollapseWarning, match="objective.collapse_threshold=0.05"):
        guard.update(torch.ones(32, 16) + 1e-6 * torch.randn(32, 16))
        assert guard.epoch_end() < 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second collapsed epoch does not warn again
        guard.update(torch.ones(32, 16))
        guard.epoch_end()
    assert guard.epoch_end() is None  # nothing seen this epoch


def _parts():
    encoder = SmallCNN(1, width=4, stages=1, out_dim=8)
    return {"encoder": encoder, "head": ProjectionHead(8, num_layers=0), "optimizer": torch.optim.SGD}


def test_objective_refuses_a_non_mining_sampler_or_an_infonce_loss():
    with pytest.raises(ValueError, match="set sampler=semi_hard"):
        Triplet(loss=TripletMarginLoss(), negatives=InBatch(), **_parts())
    with pytest.raises(ValueError, match="needs loss=triplet"):
        Triplet(loss=NTXentLoss(), negatives=TripletMiner(), **_parts())
    with pytest.raises(ValueError, match="objective.positives"):
        Triplet(loss=TripletMarginLoss(), negatives=TripletMiner(), positives="pairs", **_parts())


@pytest.mark.slow
def test_view_positives_with_ann_mined_negatives_train(tmp_path):
    """Self-supervised triplets (positives = the other view of the same image) with ANN-mined
    negatives served by the datamodule: two steps run, the table is mined, mining stats are logged."""
    with initialize_config_dir(build.CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "objective=triplet",
                "objective.positives=views",
                "sampler=ann_mined",
                "sampler.rank_max=10",
                "debug=fast",
                "data.batch_size=16",
                "data.limit_samples=64",
                "callbacks=none",
                f"paths.output_dir={tmp_path}",
                "task_name=test",
            ],
        )
    L.seed_everything(0)
    dm, model = build.build_datamodule(cfg), build.build_objective(cfg)
    trainer = quiet_trainer(
        max_steps=2,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm)
    ann = model.negatives
    assert int(ann.mined_epoch) == 0 and bool((ann.table >= 0).all())
    assert torch.equal(ann.shared_table, ann.table)
    assert (ann.table != torch.arange(len(ann.table))[:, None]).all()  # never the item itself
    metrics = trainer.callback_metrics
    assert metrics["train/num_candidates"] == 2 * 16 + 16  # both views + one mined negative per item
    assert metrics["train/mining/num_triplets"] == 32  # batch-hard: one triplet per anchor row
