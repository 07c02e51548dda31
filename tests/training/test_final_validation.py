"""Every run ends with one validation pass, whatever ``check_val_every_n_epoch`` and ``max_steps`` say."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import quiet_trainer, train_run
from torch.utils.data import DataLoader, TensorDataset

from contrastlab.training.final_validation import FinalValidation

pytestmark = pytest.mark.usefixtures("one_thread")


class Counting(L.LightningModule):
    """A linear model that records the global step of every validation pass."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.validated_at: list[int] = []

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", self.layer(batch[0]).mean())

    def on_validation_epoch_end(self) -> None:
        self.validated_at.append(self.trainer.global_step)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)  # 4 batches per epoch


def validations(callbacks: list, **trainer_kwargs) -> list[int]:
    model = Counting()
    trainer = quiet_trainer(callbacks=callbacks, **trainer_kwargs)
    trainer.fit(model, train_dataloaders=loader(), val_dataloaders=loader())
    return model.validated_at


@pytest.mark.parametrize(
    ("kwargs", "plain", "final"),
    [
        # 4 epochs, validation every 5: Lightning alone never validates; the final pass comes after step 16
        ({"max_epochs": 4, "check_val_every_n_epoch": 5}, [], [16]),
        # the last epoch validates anyway: still exactly one pass at the end, never two
        ({"max_epochs": 4, "check_val_every_n_epoch": 2}, [8, 16], [8, 16]),
        # max_steps ends the run in the middle of epoch 2 (step 6): validated there
        ({"max_epochs": 10, "max_steps": 6, "check_val_every_n_epoch": 1}, [4], [4, 6]),
        # max_steps at the end of an epoch that validates: one pass
        ({"max_epochs": 10, "max_steps": 8, "check_val_every_n_epoch": 1}, [4, 8], [4, 8]),
        # validation by steps (check_val_every_n_epoch=None, every 3 batches) and max_steps=7
        ({"max_steps": 7, "check_val_every_n_epoch": None, "val_check_interval": 3}, [3, 6], [3, 6, 7]),
    ],
)
def test_the_run_ends_with_exactly_one_final_validation(kwargs: dict, plain: list[int], final: list[int]) -> None:
    assert validations([], **kwargs) == plain  # what Lightning does on its own (the bug for the first case)
    assert validations([FinalValidation()], **kwargs) == final


def test_validation_switched_off_stays_off() -> None:
    assert validations([FinalValidation()], max_epochs=2, limit_val_batches=0) == []


@pytest.mark.slow
def test_a_run_shorter_than_the_validation_interval_writes_its_final_metrics(tmp_path) -> None:
    """The issue's case: ``trainer.max_epochs=4`` with the CPU trainer's ``check_val_every_n_epoch: 5``."""
    run = train_run(
        tmp_path,
        "trainer.max_epochs=4",
        "trainer.check_val_every_n_epoch=5",
        "data.limit_samples=256",
        "data.batch_size=128",
        "callbacks.embedding_plot=null",
    )
    metrics = run.metrics
    assert metrics["trainer/global_step"] == 4 * 256 // 128
    assert "val/knn_top1" in metrics and "val/knn_top1_init" in metrics
    assert (run.run_dir / "checkpoints" / "best.ckpt").is_file()
