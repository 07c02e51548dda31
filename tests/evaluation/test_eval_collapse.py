"""The collapse monitor: a forced collapse (constant encoder) warns once; a healthy run does not."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import lightning as L
import pytest
import torch
from conftest import quiet_trainer

from contrastlab.data import DigitsDataModule, SimCLRAugment
from contrastlab.encoders import ProjectionHead, SmallCNN
from contrastlab.evaluation.collapse import CollapseMonitor, CollapseWarning, measure_health
from contrastlab.losses import NTXentLoss
from contrastlab.negatives.in_batch import InBatch
from contrastlab.objectives import SimCLR


class ConstantEncoderSimCLR(SimCLR):
    """After every optimizer step the encoder's last layer is zeroed: it outputs its bias for any input."""

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():
            self.encoder.fc.weight.zero_()


def tiny(model_cls: type = SimCLR) -> tuple[SimCLR, DigitsDataModule]:
    torch.manual_seed(0)
    dm = DigitsDataModule(
        batch_size=32, limit_samples=64, image_size=16, augment=SimCLRAugment(image_size=16, hflip_p=0)
    )
    encoder = SmallCNN(in_chans=1, width=8, stages=2, out_dim=12)
    model = model_cls(
        encoder=encoder,
        head=ProjectionHead(12, hidden_dim=16, out_dim=8),
        loss=NTXentLoss(0.5),
        negatives=InBatch(),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
        batch_size=32,
    )
    return model, dm


def fit(model: SimCLR, dm: DigitsDataModule, monitor: CollapseMonitor, epochs: int = 2) -> L.Trainer:
    trainer = quiet_trainer(
        max_epochs=epochs,
        limit_train_batches=1,
        callbacks=[monitor],
    )
    trainer.fit(model, datamodule=dm)
    return trainer


def collapse_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, CollapseWarning)]


def test_constant_encoder_triggers_one_collapse_warning() -> None:
    model, dm = tiny(ConstantEncoderSimCLR)
    monitor = CollapseMonitor(fraction=0.1, alignment_pairs=8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = fit(model, dm, monitor, epochs=2)
    messages = collapse_warnings(record)
    assert len(messages) == 1, messages  # two collapsed validations, one warning
    # at initialisation this encoder's raw features are already dominated by their mean (effective rank
    # about 2), so the rank cannot fall below 0.1 x that; the per-dimension std does (to exactly 0)
    assert "Embedding collapse" in messages[0] and "val/dim_std = 0" in messages[0]
    assert "callbacks.collapse.stop=true" in messages[0]
    assert trainer.current_epoch == 2  # no stop unless asked
    assert monitor.baseline is not None and monitor.baseline["dim_std"] > 0
    assert float(trainer.callback_metrics["val/effective_rank"]) == pytest.approx(1.0, abs=1e-6)
    assert float(trainer.callback_metrics["val/dim_std"]) == pytest.approx(0.0, abs=1e-6)
    assert float(trainer.callback_metrics["val/uniformity"]) == pytest.approx(0.0, abs=1e-6)
    assert float(trainer.callback_metrics["val/alignment"]) == pytest.approx(0.0, abs=1e-6)


def test_reference_initial_or_best() -> None:
    """A rank that grows during training (2 -> 30) then collapses (1): only ``best`` flags it."""
    seq = [{"effective_rank": 2.0, "dim_std": 0.05}, {"effective_rank": 30.0, "dim_std": 0.06}]
    collapsed = {"effective_rank": 1.0, "dim_std": 0.05}
    for reference, expected in (("initial", {}), ("best", {"effective_rank": (1.0, 30.0)})):
        monitor = CollapseMonitor(reference=reference, watch=("effective_rank",))
        assert monitor.check(seq[0]) == {}  # no baseline yet: this becomes it
        assert monitor.check(seq[1]) == {}
        assert monitor.check(collapsed) == expected


def test_stop_on_collapse_ends_training() -> None:
    model, dm = tiny(ConstantEncoderSimCLR)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = fit(model, dm, CollapseMonitor(stop=True, alignment_pairs=0), epochs=4)
    assert len(collapse_warnings(record)) == 1
    assert trainer.current_epoch == 1  # stopped after the first validation
    assert "val/alignment" not in trainer.callback_metrics  # alignment_pairs=0 skips it


def test_healthy_run_does_not_warn_and_state_round_trips() -> None:
    model, dm = tiny()
    monitor = CollapseMonitor(alignment_pairs=8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit(model, dm, monitor, epochs=1)
    assert collapse_warnings(record) == []
    assert not monitor.collapsed
    restored = CollapseMonitor()
    restored.load_state_dict(monitor.state_dict())
    assert restored.baseline == monitor.baseline and restored.collapsed is False
    # the baseline is what measure_health gives at initialisation (alignment pairs are drawn reproducibly)
    fresh, dm2 = tiny()
    assert measure_health(fresh, dm2, alignment_pairs=8) == measure_health(fresh, dm2, alignment_pairs=8)


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match="callbacks.collapse.fraction"):
        CollapseMonitor(fraction=1.5)
    with pytest.raises(ValueError, match="callbacks.collapse.watch"):
        CollapseMonitor(watch=("rank",))
    with pytest.raises(ValueError, match="callbacks.collapse.reference"):
        CollapseMonitor(reference="last")
