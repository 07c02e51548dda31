"""The non-finite guard on a finite loss with a non-finite gradient: the step is skipped, counted and changes no
weight; with ``check_gradients=false`` the same step goes through (and spoils the weights, so the losses after
it are not finite)."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from test_reliability_guard import compose_run

from contrastlab.training.fit import train
from contrastlab.training.reliability import NonFiniteStepWarning


class InfGradient(L.Callback):
    """After the backward of the given steps, one gradient entry of the first encoder parameter becomes +inf
    (the loss itself stays finite); records the encoder's parameters at the start of every step."""

    def __init__(self, steps: list[int] = ()) -> None:
        self.steps = set(steps)
        self.params: dict[int, torch.Tensor] = {}
        self.losses: dict[int, float] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self.params[trainer.global_step] = torch.cat([p.detach().flatten() for p in pl_module.encoder.parameters()])

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step in self.steps:
            first = next(p for p in pl_module.encoder.parameters() if p.grad is not None)
            first.grad.view(-1)[0] = float("inf")


made: list[InfGradient] = []


class RecordedInfGradient(InfGradient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        made.append(self)


def run(tmp_path, *overrides: str) -> tuple[dict, InfGradient]:
    made.clear()
    cfg = compose_run(
        tmp_path,
        "trainer.limit_train_batches=4",
        f"+callbacks.inf_grad={{_target_:{__name__}.RecordedInfGradient,steps:[1]}}",
        *overrides,
    )
    metrics = train(cfg)
    (callback,) = made
    return metrics, callback


def test_an_infinite_gradient_with_a_finite_loss_skips_the_step(tmp_path) -> None:
    with pytest.warns(NonFiniteStepWarning, match=r"step 1: non-finite loss or gradient; the step is skipped"):
        metrics, cb = run(tmp_path)
    assert metrics["train/skipped_steps"] == 1
    assert metrics["trainer/global_step"] == 4
    assert torch.equal(cb.params[2], cb.params[1])  # the bad step changed no weight
    assert not torch.equal(cb.params[1], cb.params[0]) and not torch.equal(cb.params[3], cb.params[2])
    assert torch.isfinite(cb.params[3]).all()


def test_check_gradients_false_lets_the_infinite_gradient_through(tmp_path) -> None:
    with pytest.warns(NonFiniteStepWarning) as record:  # the losses after the spoiled step
        metrics, cb = run(
            tmp_path, "callbacks.nan_guard.check_gradients=false", "callbacks.nan_guard.max_consecutive=100"
        )
    assert [str(w.message).split(":")[0] for w in record if w.category is NonFiniteStepWarning] == ["step 2", "step 3"]
    assert not torch.equal(cb.params[2], cb.params[1])  # the step went through ...
    assert not torch.isfinite(cb.params[2]).all()  # ... and the infinite gradient reached the weights,
    assert metrics["train/skipped_steps"] == 2  # so the loss of steps 2 and 3 is not finite: only those skipped
