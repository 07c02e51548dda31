"""Reliability pieces in isolation, found untested by mutation testing (``make mutate``): the pre-emption exit
status, the guard's checkpoint state, buffers put back in place (or replaced when their shape changed), the
OSError behind a failed write, where ``last.ckpt`` goes, one SIGTERM save per step, and a resumed data order
that restores the RNGs and starts the right pass; a buffer deleted during a skipped step, and the CUDA RNG
states restored where CUDA is in use (torch.cuda faked)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

from contrastlab.errors import EXIT_PREEMPTED
from contrastlab.training import reliability
from contrastlab.training.data_order import DataOrder, rng_states, set_rng_states


def test_preempted_exits_143_with_its_message() -> None:
    err = reliability.Preempted("stopped by SIGTERM at step 3")
    assert err.code == EXIT_PREEMPTED == 143 and err.message == "stopped by SIGTERM at step 3"


def test_the_guard_state_survives_a_checkpoint() -> None:
    guard = reliability.NonFiniteGuard(max_consecutive=5)
    guard.skipped, guard.consecutive = 7, 2
    fresh = reliability.NonFiniteGuard()
    fresh.load_state_dict(guard.state_dict())
    assert (fresh.skipped, fresh.consecutive) == (7, 2)
    fresh.load_state_dict({"other": 1})  # a checkpoint of an older version: counts start at 0
    assert (fresh.skipped, fresh.consecutive) == (0, 0)


class Owner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.tensor([1.0, 2.0]))
        self.child = nn.Module()
        self.child.register_buffer("queue", torch.zeros(2, 3))
        self.child.register_buffer("lazy", torch.zeros(0))


def test_buffers_are_put_back_in_place_or_replaced_when_resized() -> None:
    module = Owner()
    guard = reliability.NonFiniteGuard()
    guard.on_train_batch_start(None, module, None, 0)  # type: ignore[arg-type]
    count, queue = module.count, module.child.queue
    with torch.no_grad():  # what a skipped step did: in place, resized, and dropped
        count.add_(5)
        queue.fill_(9)
    module.child.lazy = torch.ones(4, 3)  # a memory bank sized at its first enqueue
    guard._put_back_buffers(module)
    assert module.count is count and torch.equal(count, torch.tensor([1.0, 2.0]))
    assert module.child.queue is queue and torch.equal(queue, torch.zeros(2, 3))  # in place: views stay valid
    assert module.child.lazy.shape == (0,)  # the lazily sized buffer: the saved tensor itself
    guard.on_train_batch_start(None, module, None, 0)  # type: ignore[arg-type]
    module.child.queue = None  # a buffer set to None during the step
    guard._put_back_buffers(module)
    assert torch.equal(module.child.queue, torch.zeros(2, 3))
    guard._put_back_buffers(module)  # nothing saved: nothing to do


def test_a_buffer_deleted_during_the_step_is_put_back() -> None:
    module = Owner()
    guard = reliability.NonFiniteGuard()
    guard.on_train_batch_start(None, module, None, 0)  # type: ignore[arg-type]
    del module.child.queue  # the skipped step removed the buffer: nothing to copy into, so the saved one returns
    guard._put_back_buffers(module)
    assert torch.equal(module.child.queue, torch.zeros(2, 3))


def _returns_within(seconds: float, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` run on a daemon thread: a loop that never ends fails the test after ``seconds`` (and never
    keeps pytest alive) instead of hanging it."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} did not return within {seconds} s"
    assert out, f"{fn.__name__} raised (see the thread's traceback above)"
    return out[0]


def test_the_os_error_behind_a_failed_write_is_found_in_the_chain() -> None:
    """Itself, its cause, its context; None at the chain's end, and a cyclic chain (a cause or context pointing
    back) ends too."""
    find = reliability._os_error_in
    disk = OSError(28, "No space left on device")
    assert _returns_within(5, find, disk) is disk
    wrapped = RuntimeError("torch.save failed")
    wrapped.__cause__ = disk
    assert _returns_within(5, find, wrapped) is disk
    context = ValueError("while handling")
    context.__context__ = wrapped
    assert _returns_within(5, find, context) is disk
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a  # a cycle without an OSError ends
    assert _returns_within(5, find, a) is None
    assert _returns_within(5, find, RuntimeError("plain")) is None
    assert _returns_within(5, find, None) is None
    looped = RuntimeError("self")
    looped.__cause__ = looped
    assert _returns_within(5, find, looped) is None


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)


class SaveAtEnd(L.Callback):
    def on_train_end(self, trainer, pl_module) -> None:
        self.path = reliability.save_last(trainer)


@pytest.mark.parametrize(
    ("checkpoint", "expected"),
    [
        ({"dirpath": "ck", "save_last": True}, "ck/last.ckpt"),  # through the ModelCheckpoint that keeps last
        ({"dirpath": "ck", "save_last": True, "last_name": "last-{step}"}, "ck/last-step=1.ckpt"),  # its own name
        ({"dirpath": "ck", "save_last": False}, "root/checkpoints/last.ckpt"),  # one that keeps no last
        (None, "root/checkpoints/last.ckpt"),
    ],
)
def test_save_last_writes_where_a_resumed_run_looks(tmp_path: Path, checkpoint: dict | None, expected: str) -> None:
    saver = SaveAtEnd()
    callbacks: list = [saver]
    if checkpoint is not None:
        settings = {k: v for k, v in checkpoint.items() if k != "last_name"}
        callbacks.append(ModelCheckpoint(**{**settings, "dirpath": tmp_path / checkpoint["dirpath"]}))
        if "last_name" in checkpoint:  # Lightning's way to name last.ckpt, metrics filled in
            callbacks[-1].CHECKPOINT_NAME_LAST = checkpoint["last_name"]
    trainer = L.Trainer(
        default_root_dir=tmp_path / "root",
        max_steps=1,
        callbacks=callbacks,
        enable_checkpointing=checkpoint is not None,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny())
    assert saver.path == tmp_path / expected and saver.path.is_file()
    assert "state_dict" in torch.load(saver.path, weights_only=True)


def test_sigterm_saves_once_per_step(monkeypatch) -> None:
    saves: list[int] = []
    monkeypatch.setattr(reliability, "save_last", lambda trainer: saves.append(trainer.global_step) or Path("last"))
    callback = reliability.PreemptionCheckpoint()
    trainer = SimpleNamespace(global_step=0, received_sigterm=True, world_size=1)
    assert callback.message(trainer) == (  # type: ignore[arg-type]
        "stopped by SIGTERM at step 0: no checkpoint was saved (no step finished); continue with the same "
        "command plus ckpt_path=last (or resume=auto)."
    )
    callback.on_exception(trainer, None, SIGTERMException())  # type: ignore[arg-type]  # no step finished yet
    assert saves == []
    trainer.global_step = 1
    callback.on_exception(trainer, None, SIGTERMException())  # type: ignore[arg-type]  # one step finished
    assert saves == [1]
    saves.clear()
    callback = reliability.PreemptionCheckpoint()  # a fresh run
    trainer.global_step = 3
    callback.on_exception(trainer, None, RuntimeError("not SIGTERM"))  # type: ignore[arg-type]
    assert saves == []
    callback.on_train_batch_end(trainer, None, None, None, 0)  # type: ignore[arg-type]
    callback.on_exception(trainer, None, SIGTERMException())  # type: ignore[arg-type]  # the same step: saved
    trainer.global_step = 4
    callback.on_exception(trainer, None, SIGTERMException())  # type: ignore[arg-type]
    assert saves == [3, 4]
    assert callback.message(trainer) == (  # type: ignore[arg-type]
        "stopped by SIGTERM at step 4: saved last; continue with the same command plus ckpt_path=last (or resume=auto)."
    )
    trainer.world_size = 2  # under DDP the batch-end save waits for Lightning's SIGTERMException
    trainer.global_step = 5
    callback.on_train_batch_end(trainer, None, None, None, 0)  # type: ignore[arg-type]
    assert saves == [3, 4]


def test_a_resumed_data_order_restores_the_rngs_and_starts_the_right_pass() -> None:
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    saved = rng_states()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    for args in [(2, 5, 10, (2, 5)), (2, 10, 10, (3, 0)), (2, 0, 0, (3, 0)), (2, 7, -1, (2, 7))]:
        *state, pending = args
        order = DataOrder(seed=1)
        order.load_state_dict({"epoch": state[0], "batches": state[1], "epoch_batches": state[2], "rng": saved})
        assert order.next_pass() == pending  # then the plain count again
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        order.on_train_start(None, None)  # type: ignore[arg-type]
        got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
        assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_cuda_rng_states_are_restored_only_where_cuda_is_in_use(monkeypatch) -> None:
    """The CUDA branch of set_rng_states with torch.cuda faked (this machine may have no GPU): a saved state
    with "cuda" sets the states of the devices present here (extra ones dropped), one without it sets none."""
    calls: list[list[torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: calls.append(list(states)))
    saved = {key: value for key, value in rng_states().items() if key != "cuda"}
    set_rng_states(saved)
    assert calls == []
    first, second = torch.arange(4, dtype=torch.uint8), torch.arange(4, 8, dtype=torch.uint8)
    set_rng_states({**saved, "cuda": (first, second)})
    assert len(calls) == 1 and len(calls[0]) == 1 and torch.equal(calls[0][0], first)
