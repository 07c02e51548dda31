"""Scaling knobs: learning rate scaled by the global batch, SyncBatchNorm (refused on CPU DDP), mixed
precision on CPU, ``torch.compile`` of the towers by flag, and the multi-GPU / multi-node trainer config."""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from contrastlab.config import build
from contrastlab.config.checks import ConfigError, check_config
from contrastlab.encoders import ProjectionHead, SmallCNN
from contrastlab.losses import NTXentLoss
from contrastlab.negatives import InBatch
from contrastlab.objectives import SimCLR
from contrastlab.objectives.optim import scaled_lr


@pytest.fixture
def composed() -> Iterator:
    """``composed(*overrides)`` -> the train config as a run sees it (Hydra's runtime choices set)."""

    def _compose(*overrides: str) -> DictConfig:
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        return cfg

    with initialize_config_dir(build.CONF_DIR, version_base="1.3"):
        yield _compose
    HydraConfig.instance().cfg = None


def job_config(cfg: DictConfig) -> DictConfig:
    with open_dict(cfg):
        del cfg["hydra"]  # what a job sees
    return cfg


# --- learning-rate scaling ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rule", "batch", "want"),
    [("none", 1024, 0.1), ("linear", 1024, 0.4), ("linear", 64, 0.025), ("sqrt", 1024, 0.2), ("sqrt", 64, 0.05)],
)
def test_scaled_lr_rules(rule: str, batch: int, want: float) -> None:
    assert scaled_lr(0.1, batch, rule, base_batch=256) == pytest.approx(want)


def test_scaled_lr_rejects_an_unknown_rule() -> None:
    with pytest.raises(ValueError, match=r"objective\.lr_scaling must be one of none, linear, sqrt"):
        scaled_lr(0.1, 256, "cubic")


@pytest.mark.parametrize(("rule", "factor"), [("none", 1.0), ("linear", 0.5), ("sqrt", math.sqrt(0.5))])
def test_optimizer_lr_follows_the_global_batch_with_accumulation(rule: str, factor: float) -> None:
    """64 per step x 1 process x 2 accumulated batches = a global batch of 128 = half of base 256."""
    model = SimCLR(
        encoder=SmallCNN(1, width=4, stages=1, out_dim=8),
        head=ProjectionHead(8, out_dim=4, num_layers=1, batch_norm=False),
        loss=NTXentLoss(),
        negatives=InBatch(),
        optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.0),
        batch_size=64,
        lr_scaling=rule,
        base_batch_size=256,
    )
    model.trainer = L.Trainer(accelerator="cpu", devices=1, accumulate_grad_batches=2, logger=False)
    assert model.global_batch_size() == 128
    optimizer = model.configure_optimizers()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3 * factor] * 2)


@pytest.mark.parametrize("experiment", [[], ["experiment=clip_shapes"], ["experiment=biencoder_text_pairs"]])
def test_every_objective_takes_the_lr_scaling_keys(composed, experiment: list[str]) -> None:
    cfg = job_config(composed(*experiment, "objective.lr_scaling=sqrt", "objective.base_batch_size=64"))
    model = build.build_objective(cfg)
    assert (model.lr_scaling, model.base_batch_size, model.batch_size) == ("sqrt", 64, cfg.data.batch_size)


# --- SyncBatchNorm, multi-GPU / multi-node configs ------------------------------------------------------
def test_sync_batchnorm_is_refused_for_cpu_processes(composed) -> None:
    with pytest.raises(
        ConfigError, match=r"trainer\.sync_batchnorm=true needs GPUs .*set trainer\.sync_batchnorm=false"
    ):
        check_config(composed("trainer=ddp_cpu", "trainer.sync_batchnorm=true"))
    check_config(composed("trainer.sync_batchnorm=true"))  # one CPU process: Lightning leaves BatchNorm alone
    check_config(composed("trainer=ddp_cpu"))  # off by default


def test_ddp_trainer_config_for_gpus_and_nodes(composed) -> None:
    """``trainer=ddp``: NCCL, SyncBatchNorm, bf16, one process per GPU; ``trainer.num_nodes`` multiplies the
    world size the start-up checks (memory-bank size, drop_last) reason about."""
    from contrastlab.config.checks import _world

    cfg = composed("trainer=ddp", "trainer.devices=8", "trainer.num_nodes=4")
    t = cfg.trainer
    assert (t.accelerator, t.sync_batchnorm, t.precision, t.strategy.process_group_backend) == (
        "gpu",
        True,
        "bf16-mixed",
        "nccl",
    )
    assert _world(t) == 32


@pytest.mark.parametrize("visible", [0, 4, 8])
def test_gpu_trainers_need_the_gpus_they_ask_for(composed, monkeypatch, visible: int) -> None:
    """``trainer=ddp trainer.devices=8`` passes the start-up checks on a node with 8 GPUs; with fewer (or none,
    as on this CPU machine) it stops with one sentence naming the key, before Lightning's traceback."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    cfg = composed("trainer=ddp", "trainer.devices=8", "trainer.num_nodes=4")
    if visible == 8:
        check_config(cfg)
    elif visible == 0:
        with pytest.raises(ConfigError, match=r"no CUDA GPU is visible here; set trainer=cpu \(or trainer=ddp_cpu"):
            check_config(cfg)
    else:
        fewer = r"trainer\.devices=8 but this node has 4 visible GPU\(s\); set trainer\.devices=4"
        with pytest.raises(ConfigError, match=fewer):
            check_config(cfg)
    check_config(composed("trainer=cpu"))  # CPU trainers never ask


# --- torch.compile by flag --------------------------------------------------------------------------------
@pytest.mark.parametrize("experiment", [[], ["experiment=clip_shapes"]])
def test_compile_encoder_flag_compiles_the_towers_in_place(composed, experiment: list[str]) -> None:
    """Wiring only (compiling happens lazily at the first forward, too slow for a unit test on CPU)."""
    plain = build.build_objective(job_config(composed(*experiment)))
    plain.configure_model()
    assert all(t._compiled_call_impl is None for t in plain.compile_targets())
    model = build.build_objective(job_config(composed(*experiment, "objective.compile_encoder=true")))
    model.configure_model()  # Lightning calls it at fit start
    towers = model.compile_targets()
    assert model.encoder in towers and len(towers) == (2 if experiment else 1)  # CLIP: the text tower too
    assert all(t._compiled_call_impl is not None for t in towers)
    assert model.state_dict().keys() == plain.state_dict().keys()  # checkpoints keep their parameter names


# --- mixed precision on CPU, composed with gradient caching and accumulation --------------------------------
@pytest.mark.slow
def test_bf16_mixed_precision_with_grad_cache_and_accumulation_runs_on_cpu(train, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: extra threads only contend on a busy machine
    run = train(
        "debug=fast",
        "trainer.precision=bf16-mixed",
        "objective.grad_cache.micro_batch_size=16",
        "trainer.accumulate_grad_batches=2",
        "objective.lr_scaling=linear",
    )
    assert "bfloat16" in run.output  # Lightning: "Using bfloat16 Automatic Mixed Precision (AMP)"
    metrics = run.metrics
    assert metrics["trainer/global_step"] == 2  # 3 batches, 2 accumulated per step (the last one alone)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/knn_top1"])
