"""Host synchronisations per training step: at most one (the NaN guard's skip decision), none without it.

On a GPU every tensor-to-host conversion (``item``, ``bool``, ``int``, ``float``, ``tolist``, ``numpy``,
``cpu``, ``.to("cpu")``, ``torch.equal``) waits for the queued kernels, and so does ``self.log`` of a
Python number (Lightning copies it to the device). This test patches those and counts the calls whose
calling frame is contrastlab code (``src/contrastlab``), outside data loading (a frame of
``torch.utils.data`` on the stack), during each optimizer step of a real run of each objective built from
the shipped config with the default callbacks (``log_every_n_steps`` beyond the run, so no logging
interval falls inside it). Implicit synchronisations of data-dependent shapes (``nonzero``, boolean-mask
indexing in the triplet miners) are not conversions and are not counted here.
"""

from __future__ import annotations

import numbers
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

import contrastlab
from contrastlab import api
from contrastlab.config import build
from contrastlab.training import reliability
from contrastlab.training.data_order import DataOrder

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = str(Path(contrastlab.__file__).resolve().parent)
DATA_LOADING = f"{Path(torch.__file__).resolve().parent}/utils/data/"
STEPS = 4
CONVERSIONS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "__format__")


def _caller(depth: int = 2) -> str | None:
    """``file:line`` of the code that made the conversion when it is contrastlab's (and not data loading)."""
    frame = sys._getframe(depth)
    where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
    if not frame.f_code.co_filename.startswith(SRC):
        return None
    while frame is not None:
        if frame.f_code.co_filename.startswith(DATA_LOADING):
            return None
        frame = frame.f_back
    return where


class SyncCounter:
    """Patches the conversions; ``calls`` collects the contrastlab call sites while ``active``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.active = False
        self.calls: list[str] = []
        for name in CONVERSIONS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(getattr(torch.Tensor, name)))
        original_to = torch.Tensor.to

        def to(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            target = kwargs.get("device", args[0] if args else None)
            if self.active and isinstance(target, str) and target.startswith("cpu"):
                self._record()
            return original_to(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "to", to)
        original_equal = torch.equal

        def equal(*args: Any, **kwargs: Any) -> bool:
            if self.active:
                self._record()
            return original_equal(*args, **kwargs)

        monkeypatch.setattr(torch, "equal", equal)
        original_log = L.LightningModule.log

        def log(module: L.LightningModule, name: str, value: Any, *args: Any, **kwargs: Any) -> Any:
            # Lightning copies a Python number to the device (torch.tensor(value, device=...)), which waits for
            # the queued kernels like a read does: contrastlab logs tensors
            if self.active and isinstance(value, numbers.Number):
                self._record(f" log({name}) of a Python number")
            return original_log(module, name, value, *args, **kwargs)

        monkeypatch.setattr(L.LightningModule, "log", log)

    def _record(self, what: str = "") -> None:
        where = _caller(3)
        if where is not None:
            self.calls.append(where + what)

    def _wrap(self, method: Any) -> Any:
        counter = self

        def wrapper(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if counter.active:
                counter._record()
            return method(tensor, *args, **kwargs)

        return wrapper


class StepWindows(L.Callback):
    """Splits the counted calls into optimizer steps (from one batch start to the next, the last ending at the
    epoch end); first in the callback list, so every other hook of a step falls inside its window."""

    def __init__(self, counter: SyncCounter) -> None:
        self.counter = counter
        self.marks: list[int] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.marks.append(len(self.counter.calls))
        self.counter.active = True

    def on_train_epoch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.marks.append(len(self.counter.calls))
        self.counter.active = False

    def per_step(self) -> list[list[str]]:
        return [self.counter.calls[a:b] for a, b in zip(self.marks, self.marks[1:], strict=False)]


RUNS = {
    "simclr": ["data.batch_size=16"],
    "simclr_memory_bank": ["data.batch_size=16", "sampler=memory_bank", "sampler.size=64"],
    "triplet": ["experiment=triplet_digits", "data.batch_size=16", "data.batch_sampler.k=4"],
    "triplet_batch_all": [
        "experiment=triplet_digits",
        "data.batch_size=16",
        "data.batch_sampler.k=4",
        "sampler=batch_all",
    ],
    "triplet_memory_bank": [
        "experiment=triplet_digits",
        "data.batch_size=16",
        "data.batch_sampler.k=4",
        "sampler=memory_bank",
        "sampler.size=64",
    ],
    "clip": ["experiment=clip_shapes", "data.batch_size=8", "data.num_train=64", "data.num_val=16"],
    "clip_siglip": [
        "experiment=clip_shapes",
        "loss=siglip",
        "data.batch_size=8",
        "data.num_train=64",
        "data.num_val=16",
    ],
}


def run_counted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *overrides: str) -> list[list[str]]:
    """The contrastlab conversions of each of ``STEPS`` optimizer steps of a run with the default callbacks."""
    cfg = api.compose(
        [
            "debug=fast",
            "logger=csv",
            "print_config=false",
            f"trainer.limit_train_batches={STEPS}",
            "trainer.limit_val_batches=0",
            "trainer.log_every_n_steps=100",
            "trainer.enable_progress_bar=false",
            *overrides,
        ],
        tmp_path / "run",
    )
    L.seed_everything(0)
    datamodule = build.build_datamodule(cfg)
    model = build.build_objective(cfg)
    counter = SyncCounter(monkeypatch)
    windows = StepWindows(counter)
    data_order = DataOrder(cfg.seed)  # as training.fit.train wires a run
    data_order.attach(datamodule)
    callbacks = [windows, *build.build_callbacks(cfg, datamodule), data_order, *reliability.run_callbacks()]
    trainer = instantiate(cfg.trainer, logger=build.build_logger(cfg), callbacks=callbacks)
    trainer.fit(model, datamodule=datamodule)
    steps = windows.per_step()
    assert len(steps) == STEPS and trainer.global_step == STEPS
    return steps


def _report(steps: list[list[str]]) -> str:
    return "; ".join(f"step {i}: {dict(Counter(s))}" for i, s in enumerate(steps))


@pytest.mark.parametrize("run", sorted(RUNS))
def test_one_host_sync_per_step_with_the_nan_guard(monkeypatch, tmp_path, run):
    steps = run_counted(monkeypatch, tmp_path, *RUNS[run])
    guard = f"{Path(reliability.__file__)}"
    for i, calls in enumerate(steps):
        assert len(calls) == 1 and calls[0].startswith(guard), f"{run}: {_report(steps)} (step {i})"


@pytest.mark.parametrize("run", ["simclr", "triplet", "clip"])
def test_no_host_sync_without_the_nan_guard(monkeypatch, tmp_path, run):
    steps = run_counted(monkeypatch, tmp_path, *RUNS[run], "~callbacks.nan_guard")
    assert all(not calls for calls in steps), f"{run}: {_report(steps)}"
