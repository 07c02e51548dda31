"""``trainer=gpu``: bf16 autocast, cuDNN autotuning, channels-last image encoder, loaders with pinned memory and
prefetch, the SimCLR augmentation on the device. Checked on the CPU (the accelerator overridden): the preset's
settings reach the run and a run trains with them."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from contrastlab import api
from contrastlab.config import build
from contrastlab.training.loaders import LoaderSettings

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_preset_sets_what_a_gpu_run_needs(tmp_path) -> None:
    cfg = api.compose(["trainer=gpu", "augment=simclr"], tmp_path)
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision) == ("gpu", 1, "bf16-mixed")
    assert cfg.trainer.benchmark is True and cfg.trainer.max_epochs == 30  # the CPU defaults underneath
    assert cfg.objective.channels_last is True and cfg.objective.compile_encoder is False  # compile: opt-in
    assert OmegaConf.select(cfg, "augment.on_device") == "gpu"
    settings = [c for c in build.build_callbacks(cfg) if isinstance(c, LoaderSettings)]
    assert len(settings) == 1 and settings[0].pin_memory and settings[0].prefetch_factor == 4
    cpu = api.compose(["trainer=cpu", "augment=simclr"], tmp_path)
    assert "channels_last" not in cpu.objective and "loader_settings" not in cpu.callbacks
    assert OmegaConf.select(cpu, "augment.on_device") == "cpu"


class Probe(L.Callback):
    """What a training step sees: the loader's options, the encoder's weights and input layout, autocast."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        loader = trainer.train_dataloader
        self.seen["loader"] = (loader.pin_memory, loader.prefetch_factor, loader.persistent_workers)
        conv = next(m for m in pl_module.encoder.modules() if isinstance(m, torch.nn.Conv2d))
        self.seen["weight_channels_last"] = conv.weight.is_contiguous(memory_format=torch.channels_last)
        if "hook" not in self.seen:
            self.seen["hook"] = pl_module.encoder.register_forward_hook(self._input)

    def _input(self, module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        x = args[0]
        self.seen["input_channels_last"] = x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1
        self.seen["output_dtype"] = out.dtype


def test_a_run_with_the_preset_trains_channels_last_in_bf16_with_prefetching_workers(tmp_path) -> None:
    cfg = api.compose(
        [
            "trainer=gpu",
            "trainer.accelerator=cpu",  # the preset, on the CPU
            "trainer.benchmark=false",
            "debug=fast",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=0",
            "experiment=clip_shapes",  # colour images (3 channels), for the channels-last check
            "data.num_train=32",
            "data.num_val=16",
            "data.batch_size=8",
            "data.num_workers=1",
            "callbacks=none",
        ],
        tmp_path,
    )
    L.seed_everything(0)
    dm, model = build.build_datamodule(cfg), build.build_objective(cfg)
    probe = Probe()
    trainer = instantiate(cfg.trainer, callbacks=[*build.build_callbacks(cfg), probe], logger=False)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2
    assert probe.seen["loader"] == (False, 4, True)  # no CUDA here: memory is not pinned
    assert probe.seen["weight_channels_last"] and probe.seen["input_channels_last"]
    assert probe.seen["output_dtype"] == torch.bfloat16  # bf16-mixed autocast
    assert all(torch.isfinite(p).all() for p in model.parameters())
