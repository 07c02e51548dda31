"""Exact behaviour of the collapse monitor and of the alignment pairs (kills mutmut survivors).

Stand-ins replace the trainer, the module and the expensive helpers so every call can be recorded;
``augmented_pairs`` runs on a tiny digits datamodule with a seeded noise augmentation.
"""

from __future__ import annotations

import inspect
import re
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor

import contrastlab.evaluation.collapse as collapse_mod
import contrastlab.evaluation.pairs as pairs_mod
from contrastlab.data import DigitsDataModule
from contrastlab.data.base import DataCapabilities
from contrastlab.data.transforms import to_float_image
from contrastlab.errors import ConfigError
from contrastlab.evaluation.collapse import CollapseMonitor, CollapseWarning, measure_health
from contrastlab.evaluation.pairs import augmented_pairs, embed_pairs

# ----------------------------------------------------------------------------- stand-ins


class ImageDM(DataCapabilities):
    """A datamodule stand-in that declares images."""


class TextDM(DataCapabilities):
    """A datamodule stand-in that declares no images."""

    has_images = False


class RecordingLogger:
    """Records ``log_metrics`` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, float], Any]] = []

    def log_metrics(self, metrics: dict[str, float], step: Any = "unset") -> None:
        self.calls.append((metrics, step))


class RecordingModule:
    """Records ``log`` calls (name, value, keyword arguments)."""

    def __init__(self) -> None:
        self.logged: list[tuple[str, float, dict[str, Any]]] = []

    def log(self, name: str, value: float, **kwargs: Any) -> None:
        self.logged.append((name, value, kwargs))


def make_trainer(dm: Any = None, step: int = 0, epoch: int = 0, sanity: bool = False) -> SimpleNamespace:
    """A trainer stand-in with the attributes the monitor reads."""
    return SimpleNamespace(
        datamodule=dm,
        global_step=step,
        current_epoch=epoch,
        sanity_checking=sanity,
        loggers=[RecordingLogger()],
        should_stop=False,
    )


def scripted(monitor: CollapseMonitor, seq: list[dict[str, float]]) -> list[Any]:
    """Make ``monitor.measure`` return the items of ``seq`` in turn; returns the recorded call args."""
    calls: list[Any] = []
    it = iter(seq)

    def fake(pl_module: Any, datamodule: Any) -> dict[str, float]:
        calls.append((pl_module, datamodule))
        return dict(next(it))

    monitor.measure = fake  # type: ignore[method-assign]
    return calls


# ----------------------------------------------------------------------------- constructor


def test_defaults_of_monitor_and_helpers() -> None:
    """The documented defaults: 2048 uniformity samples, 128 alignment pairs, seed 0, 512 pairs, batch 256."""
    monitor = CollapseMonitor()
    assert (monitor.max_samples, monitor.alignment_pairs, monitor.seed) == (2048, 128, 0)
    assert monitor.collapsed is False and monitor.baseline is None
    params = inspect.signature(measure_health).parameters
    assert (params["max_samples"].default, params["alignment_pairs"].default, params["seed"].default) == (2048, 128, 0)
    ap = inspect.signature(augmented_pairs).parameters
    assert (ap["n"].default, ap["seed"].default) == (512, 0)
    assert inspect.signature(embed_pairs).parameters["batch_size"].default == 256


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_fraction_bounds_are_open(fraction: float) -> None:
    """``fraction`` must lie strictly inside (0, 1): both 0 and 1 are rejected."""
    with pytest.raises(ValueError, match="callbacks.collapse.fraction"):
        CollapseMonitor(fraction=fraction)


def test_bad_reference_names_its_key() -> None:
    """An unknown ``reference`` raises a ConfigError naming ``callbacks.collapse.reference`` exactly."""
    with pytest.raises(ConfigError, match=r"^callbacks\.collapse\.reference must be one of"):
        CollapseMonitor(reference="last")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- _enabled


def test_enabled_needs_an_image_datamodule_outside_sanity_checking() -> None:
    """No datamodule (attribute missing or None), a text-only one, or sanity checking: disabled."""
    monitor = CollapseMonitor()
    assert monitor._enabled(SimpleNamespace(sanity_checking=False)) is False  # type: ignore[arg-type]
    assert monitor._enabled(make_trainer(None)) is False  # type: ignore[arg-type]
    assert monitor._enabled(make_trainer(TextDM())) is False  # type: ignore[arg-type]
    assert monitor._enabled(make_trainer(ImageDM(), sanity=True)) is False  # type: ignore[arg-type]
    assert monitor._enabled(make_trainer(ImageDM())) is True  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- check


def test_check_boundary_is_strict() -> None:
    """A value exactly ``fraction * reference`` is not a collapse; just below it is."""
    monitor = CollapseMonitor(fraction=0.5, watch=("effective_rank",))
    monitor.baseline = {"effective_rank": 4.0}
    assert monitor.check({"effective_rank": 2.0}) == {}
    assert monitor.check({"effective_rank": 1.999}) == {"effective_rank": (1.999, 4.0)}


def test_check_skips_a_metric_missing_from_the_baseline() -> None:
    """A watched metric absent from the baseline is never flagged (and never looked up)."""
    monitor = CollapseMonitor(fraction=0.5)
    monitor.baseline = {"dim_std": 0.2}
    assert monitor.check({"effective_rank": 0.0, "dim_std": 0.05}) == {"dim_std": (0.05, 0.2)}


def test_check_best_keeps_the_maximum_and_adds_new_metrics() -> None:
    """``best``: the reference is the running maximum per metric; new metrics enter with their value."""
    monitor = CollapseMonitor(reference="best", watch=("effective_rank",))
    monitor.baseline = {"effective_rank": 10.0}
    assert monitor.check({"effective_rank": 5.0, "alignment": 0.3}) == {}
    assert monitor.baseline == {"effective_rank": 10.0, "alignment": 0.3}
    assert monitor.check({"effective_rank": 12.0, "alignment": 0.1}) == {}
    assert monitor.baseline == {"effective_rank": 12.0, "alignment": 0.3}


# ----------------------------------------------------------------------------- state


def test_state_dict_keys_and_load() -> None:
    """``state_dict`` has exactly ``baseline`` and ``collapsed``; loading restores ``collapsed`` (default False)."""
    monitor = CollapseMonitor()
    monitor.baseline, monitor.collapsed = {"dim_std": 0.3}, True
    assert monitor.state_dict() == {"baseline": {"dim_std": 0.3}, "collapsed": True}
    restored = CollapseMonitor()
    restored.load_state_dict(monitor.state_dict())
    assert restored.collapsed is True and restored.baseline == {"dim_std": 0.3}
    partial = CollapseMonitor()
    partial.collapsed = True
    partial.load_state_dict({"baseline": {"dim_std": 0.1}})
    assert partial.collapsed is False and partial.baseline == {"dim_std": 0.1}


# ----------------------------------------------------------------------------- on_train_start


def test_train_start_measures_baseline_and_logs_at_step_zero() -> None:
    """At step 0 with images: the baseline is measured and logged as ``val/<k>_init`` at ``step=0``."""
    monitor = CollapseMonitor()
    calls = scripted(monitor, [{"dim_std": 0.25, "effective_rank": 3.0}])
    dm, module = ImageDM(), object()
    trainer = make_trainer(dm)
    monitor.on_train_start(trainer, module)  # type: ignore[arg-type]
    assert calls == [(module, dm)]
    assert monitor.baseline == {"dim_std": 0.25, "effective_rank": 3.0}
    assert trainer.loggers[0].calls == [({"val/dim_std_init": 0.25, "val/effective_rank_init": 3.0}, 0)]


def test_train_start_skips_when_resumed_disabled_or_baseline_set() -> None:
    """No measurement after step 0 (even step 1), without images, or when a baseline exists."""
    for trainer, baseline in (
        (make_trainer(ImageDM(), step=1), None),
        (make_trainer(None, step=0), None),
        (make_trainer(ImageDM(), step=0), {"dim_std": 1.0}),
    ):
        monitor = CollapseMonitor()
        monitor.baseline = baseline
        calls = scripted(monitor, [{"dim_std": 0.5}])
        monitor.on_train_start(trainer, object())  # type: ignore[arg-type]
        assert calls == [] and monitor.baseline == baseline
        assert trainer.loggers[0].calls == []


# ----------------------------------------------------------------------------- on_validation_epoch_end


def test_validation_logs_each_metric_unsynced_on_every_rank() -> None:
    """Each metric is logged as ``val/<k>`` with ``sync_dist=False, rank_zero_only=False`` exactly."""
    monitor = CollapseMonitor()
    monitor.baseline = {"dim_std": 0.2, "effective_rank": 3.0}
    scripted(monitor, [{"dim_std": 0.2, "effective_rank": 3.0}])
    module = RecordingModule()
    monitor.on_validation_epoch_end(make_trainer(ImageDM()), module)  # type: ignore[arg-type]
    expected = {"sync_dist": False, "rank_zero_only": False}
    assert module.logged == [("val/dim_std", 0.2, expected), ("val/effective_rank", 3.0, expected)]


def test_validation_skipped_when_disabled() -> None:
    """Sanity checking: nothing measured or logged."""
    monitor = CollapseMonitor()
    calls = scripted(monitor, [{"dim_std": 0.2}])
    module = RecordingModule()
    monitor.on_validation_epoch_end(make_trainer(ImageDM(), sanity=True), module)  # type: ignore[arg-type]
    assert calls == [] and module.logged == []


def test_collapse_warns_once_with_epoch_step_and_text() -> None:
    """One CollapseWarning naming epoch, step, metric, fraction and reference; no stop unless asked."""
    monitor = CollapseMonitor(fraction=0.5, watch=("dim_std",))
    monitor.baseline = {"dim_std": 0.2}
    scripted(monitor, [{"dim_std": 0.05}, {"dim_std": 0.01}])
    trainer = make_trainer(ImageDM(), step=17, epoch=3)
    with pytest.warns(CollapseWarning) as record:
        monitor.on_validation_epoch_end(trainer, RecordingModule())  # type: ignore[arg-type]
        monitor.on_validation_epoch_end(trainer, RecordingModule())  # type: ignore[arg-type]
    messages = [str(w.message) for w in record if issubclass(w.category, CollapseWarning)]
    assert len(messages) == 1
    assert messages[0].startswith(
        "Embedding collapse at epoch 3 (step 17): val/dim_std = 0.05, below 0.5 x its initial value 0.2."
    )
    assert messages[0].endswith("set callbacks.collapse.stop=true to stop such runs.")
    assert monitor.collapsed is True and trainer.should_stop is False


def test_stop_sets_should_stop_and_says_so() -> None:
    """``stop=True``: ``should_stop`` on every collapsed validation; the warning says training stops."""
    monitor = CollapseMonitor(fraction=0.5, watch=("effective_rank",), stop=True, reference="best")
    monitor.baseline = {"effective_rank": 8.0}
    scripted(monitor, [{"effective_rank": 1.0}])
    trainer = make_trainer(ImageDM(), step=4, epoch=1)
    with pytest.warns(CollapseWarning, match=re.escape("its best value 8. ")) as record:
        monitor.on_validation_epoch_end(trainer, RecordingModule())  # type: ignore[arg-type]
    assert str(record[0].message).endswith("training stops (callbacks.collapse.stop=true).")
    assert trainer.should_stop is True


# ----------------------------------------------------------------------------- measure / measure_health


def test_measure_passes_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """``measure`` calls ``measure_health`` with the monitor's max_samples, alignment_pairs and seed."""
    seen: list[tuple[Any, ...]] = []
    monkeypatch.setattr(collapse_mod, "measure_health", lambda *a: seen.append(a) or {"dim_std": 1.0})
    monitor = CollapseMonitor(max_samples=7, alignment_pairs=5, seed=3)
    assert monitor.measure("m", "d") == {"dim_std": 1.0}  # type: ignore[arg-type]
    assert seen == [("m", "d", 7, 5, 3)]


def patch_health(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Replace measure_health's helpers by recorders; returns the record."""
    rec: dict[str, list[Any]] = {"split": [], "aug": [], "embed": [], "health": []}
    z = torch.arange(12.0).reshape(4, 3)
    views = (torch.ones(2, 3), torch.zeros(2, 3))

    def split(pl_module: Any, dm: Any, split: str, **kw: Any) -> tuple[Tensor, Tensor]:
        rec["split"].append((pl_module, dm, split, kw))
        return z, torch.zeros(4)

    def aug(*a: Any, **kw: Any) -> tuple[Tensor, Tensor]:
        rec["aug"].append((a, kw))
        return views

    def emb(*a: Any, **kw: Any) -> tuple[Tensor, Tensor]:
        rec["embed"].append((a, kw))
        return views

    def health(*a: Any, **kw: Any) -> dict[str, float]:
        rec["health"].append((a, kw))
        return {"dim_std": 0.5}

    monkeypatch.setattr(collapse_mod, "split_embeddings", split)
    monkeypatch.setattr(collapse_mod, "augmented_pairs", aug)
    monkeypatch.setattr(collapse_mod, "embed_pairs", emb)
    monkeypatch.setattr(collapse_mod, "embedding_health", health)
    return rec


def test_measure_health_wiring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gathered val embeddings; pairs drawn with (n, seed) and embedded on the module's device; settings passed."""
    rec = patch_health(monkeypatch)
    module = SimpleNamespace(embed=lambda x: x, device="cpu:7")
    assert measure_health(module, "dm", max_samples=9, alignment_pairs=1, seed=5) == {"dim_std": 0.5}  # type: ignore[arg-type]
    assert rec["split"] == [(module, "dm", "val", {"across_ranks": True})]
    assert rec["aug"] == [(("dm", 1, 5), {})]
    ((args, kw),) = rec["embed"]
    assert args[0] is module.embed and args[2] == "cpu:7" and kw == {}
    ((hargs, hkw),) = rec["health"]
    assert hkw == {"max_samples": 9, "seed": 5}
    assert torch.equal(hargs[1][0], torch.ones(2, 3))


def test_measure_health_defaults_and_no_alignment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults reach the helpers (128 pairs, seed 0, 2048 samples); ``alignment_pairs=0`` draws no pairs."""
    rec = patch_health(monkeypatch)
    module = SimpleNamespace(embed=lambda x: x, device="cpu")
    measure_health(module, "dm")  # type: ignore[arg-type]
    assert rec["aug"] == [(("dm", 128, 0), {})]
    assert rec["health"][0][1] == {"max_samples": 2048, "seed": 0}
    measure_health(module, "dm", alignment_pairs=0)  # type: ignore[arg-type]
    assert len(rec["aug"]) == 1 and len(rec["embed"]) == 1
    assert rec["health"][1][0][1] is None


# ----------------------------------------------------------------------------- pairs.py


def noise_augment(img: Tensor) -> Tensor:
    """A random augmentation without a ``batched`` attribute: adds Gaussian noise."""
    return img + torch.randn_like(img)


def digits(augment: Any = noise_augment) -> DigitsDataModule:
    """A tiny digits datamodule with ``augment``."""
    dm = DigitsDataModule(batch_size=4, limit_samples=6, image_size=8)
    dm.augment = augment
    return dm


def expected_pairs(dm: DigitsDataModule, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Two views per image drawn directly: per image view 1 then view 2, normalised, under ``seed``."""
    dm.setup()
    images = [to_float_image(dm.val_base[i][0]) for i in range(n)]  # type: ignore[index]
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    first, second = [], []
    for img in images:
        first.append(dm.normalize(noise_augment(img)))
        second.append(dm.normalize(noise_augment(img)))
    torch.random.set_rng_state(gen_state)
    return torch.stack(first), torch.stack(second)


def test_augmented_pairs_match_direct_augmentation() -> None:
    """The views are the normalised augmentations drawn per image (two each) under the seed; RNG untouched."""
    dm = digits()
    before = torch.random.get_rng_state()
    a, b = augmented_pairs(dm, 3, seed=4)  # type: ignore[misc]
    assert torch.equal(torch.random.get_rng_state(), before)
    ea, eb = expected_pairs(dm, 3, 4)
    assert torch.equal(a, ea) and torch.equal(b, eb)


def test_augmented_pairs_single_image_and_none_cases() -> None:
    """n=1 gives one pair; n=0, a non-datamodule and no augmentation give None."""
    dm = digits()
    a, b = augmented_pairs(dm, 1, seed=2)  # type: ignore[misc]
    ea, eb = expected_pairs(dm, 1, 2)
    assert a.shape[0] == 1 and torch.equal(a, ea) and torch.equal(b, eb)
    assert augmented_pairs(dm, 0) is None
    assert augmented_pairs(SimpleNamespace(has_captions=False, augment=noise_augment), 2) is None
    assert augmented_pairs(digits(None), 2) is None


def test_embed_pairs_batches_and_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """``embed_pairs`` embeds in batches of 256 by default and hands the device to ``embed_loader``."""
    sizes: list[int] = []

    def embed(x: Tensor) -> Tensor:
        sizes.append(x.shape[0])
        return x[:, :2] * 2

    views = (torch.randn(300, 3), torch.randn(300, 3))
    a, b = embed_pairs(embed, views, "cpu")
    assert sizes == [256, 44, 256, 44]
    assert torch.equal(a, views[0][:, :2] * 2) and torch.equal(b, views[1][:, :2] * 2)
    devices: list[Any] = []
    real = pairs_mod.embed_loader

    def spy(fn: Any, loader: Any, device: Any = "unset", **kw: Any) -> Any:
        devices.append(device)
        return real(fn, loader, "cpu", **kw)

    monkeypatch.setattr(pairs_mod, "embed_loader", spy)
    embed_pairs(embed, views, "cpu:0")
    assert devices == ["cpu:0", "cpu:0"]


def test_augmented_pairs_defaults_draw_512_pairs_under_seed_0() -> None:
    """Called without ``n`` and ``seed`` (as a caller relying on the documented defaults does): 512 pairs of the
    first 512 validation images, the views drawn under seed 0."""
    dm = DigitsDataModule(batch_size=4, val_fraction=0.5, image_size=8)
    dm.augment = noise_augment
    a, b = augmented_pairs(dm)  # type: ignore[misc]
    assert len(dm.val_base) > 513  # type: ignore[arg-type]
    ea, eb = expected_pairs(dm, 512, 0)
    assert torch.equal(a, ea) and torch.equal(b, eb)
