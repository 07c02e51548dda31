"""The non-finite step guard, atomic checkpoint writes, the resumable data order and the W&B fallback."""

from __future__ import annotations

import io
import json
import random
import resource
import signal
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from contrastlab.cli import boundary
from contrastlab.cli.train import CONF_DIR, train
from contrastlab.training.checkpoints import load_checkpoint
from contrastlab.training.data_order import DataOrder, SeededBatches, mix64, resumable, rng_states, set_rng_states
from contrastlab.training.reliability import (
    AtomicCheckpointIO,
    CheckpointWriteError,
    NonFiniteLossError,
    NonFiniteStepWarning,
)

LEAN = (
    "~callbacks.knn",
    "~callbacks.model_checkpoint",
    "~callbacks.collapse",
    "~callbacks.embedding_plot",
    "~callbacks.lr_monitor",
)


class InjectNaN(L.Callback):
    """Turns one input value of every batch at the given steps (``from_step`` on, if set) into NaN,
    and records the parameters at the start of every step."""

    def __init__(self, steps: list[int] = (), from_step: int | None = None) -> None:
        self.steps, self.from_step = set(steps), from_step
        self.params: dict[int, torch.Tensor] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        step = trainer.global_step
        self.params[step] = torch.cat([p.detach().flatten() for p in pl_module.encoder.parameters()]).clone()
        if step in self.steps or (self.from_step is not None and step >= self.from_step):
            batch["views"][0][0, 0, 0, 0] = float("nan")


def compose_run(tmp_path: Path, *overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "debug=fast",
                "logger=csv",
                "print_config=false",
                f"paths.output_dir={tmp_path / 'run'}",
                f"paths.log_dir={tmp_path / 'outputs'}",
                *LEAN,
                *overrides,
            ],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


@pytest.fixture
def captured_injector(monkeypatch):
    """The InjectNaN instance the run builds (Hydra instantiates it from the config)."""
    made: list[InjectNaN] = []
    original = InjectNaN.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(InjectNaN, "__init__", init)
    return made


def test_non_finite_steps_are_skipped_counted_and_undone(tmp_path, captured_injector):
    cfg = compose_run(
        tmp_path,
        "trainer.limit_train_batches=6",
        "sampler=memory_bank",
        "sampler.size=256",
        "callbacks.nan_guard.max_consecutive=3",
        f"+callbacks.inject={{_target_:{__name__}.InjectNaN,steps:[1,2]}}",
    )
    with pytest.warns(NonFiniteStepWarning) as record:
        metrics = train(cfg)
    guard = [str(w.message) for w in record if w.category is NonFiniteStepWarning]
    assert [m.split(":")[0] for m in guard] == ["step 1", "step 2"]  # one warning per bad step
    assert "non-finite loss or gradient; the step is skipped (1 in a row, 1 in all;" in guard[0]
    (inject,) = captured_injector
    assert metrics["train/skipped_steps"] == 2
    assert metrics["trainer/global_step"] == 6
    # the two bad steps changed no weight; the good ones did
    torch.testing.assert_close(inject.params[3], inject.params[1], rtol=0, atol=0)
    assert not torch.equal(inject.params[1], inject.params[0])
    assert not torch.equal(inject.params[4], inject.params[3])
    # the NaN embeddings enqueued during the bad steps were taken out of the memory bank again
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert int(state["negatives.filled"]) == 4 * 64  # 4 good steps x (2 views x 32)
    assert torch.isfinite(state["negatives.queue"]).all()


def test_non_finite_steps_past_the_limit_stop_with_a_usable_checkpoint(tmp_path, captured_injector):
    cfg = compose_run(
        tmp_path,
        "trainer.limit_train_batches=8",
        "callbacks.nan_guard.max_consecutive=3",
        f"+callbacks.inject={{_target_:{__name__}.InjectNaN,from_step:2}}",
    )
    with pytest.raises(NonFiniteLossError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(cfg)
    (inject,) = captured_injector
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    message = str(info.value)
    assert "3 steps in a row had a non-finite loss or gradient" in message
    assert f"the last good weights are in {last}" in message
    assert "callbacks.nan_guard.max_consecutive" in message
    # stopped at once (steps 2, 3, 4 skipped), not at the end of the epoch
    assert max(inject.params) == 4
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["train/skipped_steps"] == 3
    # the command line reports it in one line, exit status 1
    assert boundary.message_for(info.value) == message and "\n" not in message
    with pytest.raises(SystemExit) as exit_info:
        boundary.exit_if_known(info.value)
    assert exit_info.value.code == 1
    # the checkpoint holds the weights from before the first bad step, loads safely and embeds
    loaded = load_checkpoint(last, expect_objective="simclr", device="cpu")
    encoder = torch.cat([p.detach().flatten() for p in loaded.model.encoder.parameters()])
    torch.testing.assert_close(encoder, inject.params[2], rtol=0, atol=0)
    batch = next(iter(loaded.datamodule.val_dataloader()))
    with torch.no_grad():
        assert torch.isfinite(loaded.model.embed(batch["image"])).all()


# ----------------------------------------------------------------------------- atomic checkpoints
def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    """A write that runs out of space (here: the file-size limit, EFBIG like ENOSPC) fails loudly and
    leaves the previous checkpoint readable and unchanged, with no temporary file behind."""
    io_ = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    old = {"state_dict": {"w": torch.arange(10.0)}, "global_step": 1}
    io_.save_checkpoint(old, path)
    before = path.read_bytes()
    big = {"state_dict": {"w": torch.zeros(4_000_000)}, "global_step": 2}  # ~16 MB
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write() instead of a signal
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, hard))
        with pytest.raises(CheckpointWriteError, match=r"could not write checkpoint .*last\.ckpt .*unchanged"):
            io_.save_checkpoint(big, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    io_.save_checkpoint(big, path)  # with room again the new checkpoint replaces the old one
    assert torch.load(path, weights_only=True)["global_step"] == 2


# ------------------------------------------------------------------------------------ data order
def test_mix64_is_fixed_and_spreads():
    assert mix64(42, 0) == mix64(42, 0)
    assert len({mix64(42, e, 0, b, j) for e in range(3) for b in range(10) for j in range(10)}) == 300
    assert 0 <= mix64(2**70, -1) < 2**63


def test_a_pass_is_a_function_of_seed_and_epoch_and_resumes_mid_way():
    loader = DataLoader(list(range(20)), batch_size=4, shuffle=True, drop_last=True)
    order = DataOrder(seed=7)
    wrapped = resumable(loader, order)
    epoch0, epoch1 = list(wrapped), list(wrapped)  # two passes: epochs 0 and 1 (no trainer: counted)
    assert [len(b) for b in epoch0] == [4] * 5
    assert sorted(torch.cat(epoch0).tolist()) == list(range(20))
    assert not torch.equal(torch.cat(epoch0), torch.cat(epoch1))
    torch.manual_seed(123)  # the global RNG does not decide the order
    again = DataOrder(seed=7)
    assert [b.tolist() for b in resumable(loader, again)] == [b.tolist() for b in epoch0]
    # a resumed run whose checkpoint says "epoch 1, 3 batches done" gets the rest of epoch 1
    resumed = DataOrder(seed=7)
    resumed.load_state_dict({"epoch": 1, "batches": 3, "epoch_batches": 5, "rng": rng_states()})
    assert [b.tolist() for b in resumable(loader, resumed)] == [b.tolist() for b in epoch1[3:]]
    # ... and one saved at the end of epoch 0 starts epoch 1 from its first batch
    at_end = DataOrder(seed=7)
    at_end.load_state_dict({"epoch": 0, "batches": 5, "epoch_batches": 5, "rng": rng_states()})
    assert [b.tolist() for b in resumable(loader, at_end)] == [b.tolist() for b in epoch1]


def test_item_seeds_make_augmentations_independent_of_history():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.rand(()) + i  # an "augmentation" drawn from the global RNG

    loader = DataLoader(Noisy(), batch_size=2, shuffle=True)
    first = list(resumable(loader, DataOrder(seed=1)))
    torch.rand(100)  # other code consumed random numbers in between
    second = list(resumable(loader, DataOrder(seed=1)))
    torch.testing.assert_close(torch.cat(second), torch.cat(first), rtol=0, atol=0)
    seeds = [
        s for batch in SeededBatches(BatchSampler(RandomSampler(range(8)), 2, False), DataOrder(1)) for _, s in batch
    ]
    assert len(set(seeds)) == 8


def test_rng_states_survive_a_weights_only_checkpoint():
    state = rng_states()
    buffer = io.BytesIO()
    torch.save({"rng": state}, buffer)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_states(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    torch.testing.assert_close(got[0], expected[0])
    assert list(got[1]) == list(expected[1]) and got[2] == expected[2]


# ------------------------------------------------------------------------------------------- W&B
def test_wandb_unreachable_or_failing_never_stops_training(tmp_path, monkeypatch, capsys):
    import wandb

    from contrastlab.tracking.loggers import RUN_ID_FILE, WandbFallbackWarning, WandbRunLogger, read_run_info

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # "credentials": the logger goes online ...
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # ... to a server that is not there
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbRunLogger(save_dir=str(tmp_path), project="faults", init_timeout=3)
    assert logger._wandb_init["mode"] == "online" and logger._wandb_init["settings"].init_timeout == 3
    with pytest.warns(WandbFallbackWarning, match="W&B could not start online"):
        run = logger.experiment  # wandb.init gives up after init_timeout; the same run starts offline
    assert run.settings.mode == "offline" and run.id == (tmp_path / RUN_ID_FILE).read_text().strip()
    assert Path(run.settings.sync_dir).parent == tmp_path / "wandb"
    assert read_run_info(tmp_path)["mode"] == "offline"
    assert "W&B could not start online (CommError" in capsys.readouterr().out
    logger.log_metrics({"train/loss": 1.0}, step=0)
    assert run.summary["train/loss"] == 1.0

    # a W&B call failing mid-run: W&B is off for the rest of the run, the run goes on
    calls = []

    def broken(*args, **kwargs):
        calls.append(args)
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(type(run), "log", broken)
    with pytest.warns(WandbFallbackWarning, match="W&B log_metrics failed"):
        logger.log_metrics({"train/loss": 0.5}, step=1)
    logger.log_metrics({"train/loss": 0.25}, step=2)  # no error, and nothing reaches W&B any more
    logger.log_image(key="x", images=[])
    assert len(calls) == 1
    logger.experiment.log({"train/loss": 0.1})  # a no-op stand-in for the run
    logger.finalize("success")
    assert "status" not in read_run_info(tmp_path)  # nothing written by a W&B that is off
    wandb.finish()


def test_a_training_run_goes_on_when_wandb_cannot_start_online(tmp_path, monkeypatch):
    from contrastlab.tracking.history import read_history
    from contrastlab.tracking.loggers import WandbFallbackWarning, read_run_info
    from contrastlab.training.fit import finish_tracking

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_run(tmp_path, "logger=wandb", "logger.init_timeout=3")
    try:
        with pytest.warns(WandbFallbackWarning, match="W&B could not start online"):
            metrics = train(cfg)
    finally:
        finish_tracking()
    run_dir = tmp_path / "run"
    assert metrics["trainer/global_step"] == 3 and np.isfinite(metrics["train/loss"])
    info = read_run_info(run_dir)
    assert info["mode"] == "offline" and info["status"] == "success"
    assert info["summary"]["train/loss"] == pytest.approx(metrics["train/loss"])
    curves = read_history(run_dir)  # the run's own history has every step
    assert curves.dropna(subset=["train/loss"])["step"].tolist() == [0, 1, 2]
