"""Mutation-killing tests of ``contrastlab.evaluation.plot_callback``: ``hydra_overrides``, ``log_images`` and
every hook of ``EmbeddingPlotCallback`` (defaults, ``_active``, ``setup``, ``draw``, ``on_validation_end``,
``on_train_end``) with stand-in trainers, modules and datamodules.

Nothing is embedded or drawn: ``split_embeddings`` hands out fixed tensors, ``save_embedding_plots`` records
its arguments and returns ``{method: <out>/<method><suffix>.png}``, and a ``WandbLogger`` subclass that
skips W&B's constructor records ``log_image`` calls, so the tests check exactly what the callback passes on.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import torch
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import WandbLogger
from omegaconf import OmegaConf
from torch import Tensor

from contrastlab.data.base import DataCapabilities
from contrastlab.errors import ConfigError
from contrastlab.evaluation import plot_callback, plots
from contrastlab.evaluation.plot_callback import EmbeddingPlotCallback, hydra_overrides, log_images
from contrastlab.evaluation.plots import plot_title

FEATS = torch.arange(12, dtype=torch.float32).reshape(4, 3)
LABELS = torch.tensor([0, 1, 0, 1])
OVERRIDES = ["loss.temperature=0.2", "hydra.run.dir=/x"]


class _DM(DataCapabilities):
    """A datamodule stand-in with labelled images (the class defaults of :class:`DataCapabilities`)."""

    def __init__(self, has_labels: bool = True) -> None:
        self.has_labels = has_labels


class _TextDM(_DM):
    """A datamodule stand-in without images."""

    has_images: ClassVar[bool] = False


class _Wandb(WandbLogger):
    """A ``WandbLogger`` (for ``isinstance``) that records ``log_image`` instead of talking to W&B."""

    def __init__(self) -> None:  # W&B's own constructor is deliberately not run
        self.calls: list[dict[str, Any]] = []

    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        self.calls.append({"key": key, "images": images, "step": step, **kwargs})


class _OtherLogger:
    """A logger that is not W&B but would accept the same call: it must receive nothing."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def log_image(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)


class _Recorder:
    """Stands in for ``split_embeddings`` and ``save_embedding_plots``; keeps every call."""

    def __init__(self) -> None:
        self.splits: list[tuple[Any, Any, str]] = []
        self.saves: list[dict[str, Any]] = []

    def split_embeddings(self, pl_module: Any, dm: Any, split: str) -> tuple[Tensor, Tensor]:
        self.splits.append((pl_module, dm, split))
        return FEATS, LABELS

    def save_embedding_plots(self, *args: Any, **kwargs: Any) -> dict[str, Path]:
        bound = inspect.signature(plots.save_embedding_plots).bind(*args, **kwargs)
        self.saves.append(dict(bound.arguments))
        out, suffix = Path(bound.arguments["out_dir"]), bound.arguments["suffix"]
        return {m: out / f"{m}{suffix}.png" for m in bound.arguments["methods"]}


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    r = _Recorder()
    monkeypatch.setattr(plot_callback, "split_embeddings", r.split_embeddings)
    monkeypatch.setattr(plot_callback, "save_embedding_plots", r.save_embedding_plots)
    monkeypatch.setattr(plot_callback, "hydra_overrides", lambda: list(OVERRIDES))
    return r


def _trainer(
    dm: Any = None,
    *,
    epoch: int = 3,
    step: int = 42,
    root: str = "/runs/r1",
    metrics: dict[str, Any] | None = None,
    loggers: list[Any] | None = None,
    global_zero: bool = True,
    sanity: bool = False,
) -> SimpleNamespace:
    return SimpleNamespace(
        datamodule=_DM() if dm is None else dm,
        current_epoch=epoch,
        global_step=step,
        default_root_dir=root,
        callback_metrics={"val/knn_top1": torch.tensor(0.8125)} if metrics is None else metrics,
        loggers=[] if loggers is None else loggers,
        is_global_zero=global_zero,
        sanity_checking=sanity,
    )


def _module(name: str = "simclr") -> SimpleNamespace:
    return SimpleNamespace(objective_name=name)


# --- hydra_overrides -------------------------------------------------------------------------------------


def test_hydra_overrides_outside_hydra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    assert hydra_overrides() == []


def test_hydra_overrides_inside_hydra(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = OmegaConf.create({"hydra": OmegaConf.structured(HydraConf)})
    cfg.hydra.overrides.task = ["loss.temperature=0.2", "sampler=memory_bank"]
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # restored after the test
    HydraConfig.instance().set_config(cfg)
    got = hydra_overrides()
    assert type(got) is list
    assert got == ["loss.temperature=0.2", "sampler=memory_bank"]


# --- log_images ------------------------------------------------------------------------------------------


def test_log_images_only_to_wandb_loggers() -> None:
    wb, other = _Wandb(), _OtherLogger()
    trainer = SimpleNamespace(loggers=[other, wb], global_step=17)
    paths = {"umap": Path("/p/umap_epoch002.png"), "tsne": Path("/p/tsne_epoch002.png")}
    log_images(trainer, paths, "simclr | defaults")  # type: ignore[arg-type]
    assert wb.calls == [
        {"key": "embeddings/umap", "images": ["/p/umap_epoch002.png"], "caption": ["simclr | defaults"], "step": 17},
        {"key": "embeddings/tsne", "images": ["/p/tsne_epoch002.png"], "caption": ["simclr | defaults"], "step": 17},
    ]
    assert other.calls == []


def test_log_images_prefix_and_every_wandb_logger() -> None:
    a, b = _Wandb(), _Wandb()
    log_images(SimpleNamespace(loggers=[a, b], global_step=0), {"pca": Path("x/pca.png")}, "t", prefix="pics")  # type: ignore[arg-type]
    expected = [{"key": "pics/pca", "images": ["x/pca.png"], "caption": ["t"], "step": 0}]
    assert a.calls == expected and b.calls == expected
    assert inspect.signature(log_images).parameters["prefix"].default == "embeddings"


# --- __init__ --------------------------------------------------------------------------------------------


def test_defaults() -> None:
    defaults = {k: p.default for k, p in inspect.signature(EmbeddingPlotCallback).parameters.items()}
    assert defaults == {
        "dirpath": None,
        "methods": ("umap", "tsne"),
        "every_n_epochs": 0,
        "max_points": 1000,
        "umap_epochs": 200,
        "tsne_iter": 500,
        "seed": 0,
        "debug_run": None,
        "in_debug": False,
    }
    cb = EmbeddingPlotCallback()
    assert cb.dirpath is None and cb.methods == ("umap", "tsne") and cb.every_n_epochs == 0
    assert (cb.max_points, cb.umap_epochs, cb.tsne_iter, cb.seed) == (1000, 200, 500, 0)
    assert cb.skip is False
    assert cb.paths == {} and type(cb.paths) is dict


def test_init_refuses_an_unknown_method_naming_the_key() -> None:
    """Checked when the callback is built (before training), not when the first picture is drawn."""
    with pytest.raises(ConfigError) as error:
        EmbeddingPlotCallback(methods=["umap", "isomap"])
    assert str(error.value).startswith("callbacks.embedding_plot.methods must list methods among umap, tsne, pca")
    assert EmbeddingPlotCallback(methods="pca").methods == ("pca",)


def test_init_stores_arguments() -> None:
    cb = EmbeddingPlotCallback("/out", ["pca"], 3, None, 7, 250, 5)
    assert (cb.dirpath, cb.methods, cb.every_n_epochs) == ("/out", ("pca",), 3)
    assert (cb.max_points, cb.umap_epochs, cb.tsne_iter, cb.seed) == (None, 7, 250, 5)
    assert EmbeddingPlotCallback(debug_run="fast").skip is True  # the default in_debug is False


@pytest.mark.parametrize(
    ("debug_run", "in_debug", "skip"),
    [
        (None, False, False),
        (None, True, False),
        ("", False, False),
        ("", True, False),
        ("None", False, False),
        ("None", True, False),
        ("none", False, True),
        ("fast", False, True),
        ("fast", True, False),
    ],
    ids=lambda v: repr(v),
)
def test_skip(debug_run: str | None, in_debug: bool, skip: bool) -> None:
    assert EmbeddingPlotCallback(debug_run=debug_run, in_debug=in_debug).skip is skip


# --- _active ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "trainer", "active"),
    [
        ({}, _trainer(), True),
        ({}, _trainer(_DM(has_labels=False)), True),
        ({}, SimpleNamespace(is_global_zero=True), False),  # a trainer without a datamodule attribute
        ({}, SimpleNamespace(datamodule=None, is_global_zero=True), False),
        ({}, _trainer(_TextDM()), False),
        ({"methods": ()}, _trainer(), False),
        ({"debug_run": "fast"}, _trainer(), False),
        ({"debug_run": "fast", "in_debug": True}, _trainer(), True),
        ({}, _trainer(global_zero=False), False),
    ],
    ids=[
        "active",
        "active-unlabelled",
        "no-datamodule-attribute",
        "datamodule-none",
        "no-images",
        "no-methods",
        "debug-run",
        "debug-run-in-debug",
        "not-rank-zero",
    ],
)
def test_active(kwargs: dict[str, Any], trainer: SimpleNamespace, active: bool) -> None:
    assert EmbeddingPlotCallback(**kwargs)._active(trainer) is active  # type: ignore[arg-type]


def test_active_with_undeclared_datamodule() -> None:
    """A datamodule from elsewhere (no :class:`DataCapabilities`) counts as holding images."""
    assert EmbeddingPlotCallback()._active(_trainer(object())) is True  # type: ignore[arg-type]


# --- setup -----------------------------------------------------------------------------------------------

MESSAGE = "embedding_plot: skipped in debug runs; callbacks.embedding_plot.in_debug=true draws"


@pytest.mark.parametrize(
    ("debug_run", "global_zero", "stage", "logged"),
    [
        ("fast", True, "fit", [MESSAGE]),
        ("fast", False, "fit", []),
        ("fast", True, "validate", []),
        (None, True, "fit", []),
        (None, False, "fit", []),
    ],
)
def test_setup_message(
    monkeypatch: pytest.MonkeyPatch, debug_run: str | None, global_zero: bool, stage: str, logged: list[str]
) -> None:
    seen: list[str] = []
    monkeypatch.setattr(plot_callback, "rank_zero_info", seen.append)
    cb = EmbeddingPlotCallback(debug_run=debug_run)
    cb.setup(_trainer(global_zero=global_zero), _module(), stage)  # type: ignore[arg-type]
    assert seen == logged


# --- draw ------------------------------------------------------------------------------------------------


def _expected_save(
    dm_labels: bool, out: Path, title: str, suffix: str, cb: EmbeddingPlotCallback, methods: tuple[str, ...]
) -> dict[str, Any]:
    return {
        "features": FEATS,
        "labels": LABELS if dm_labels else None,
        "out_dir": out,
        "methods": methods,
        "title": title,
        "suffix": suffix,
        "max_points": cb.max_points,
        "seed": cb.seed,
        "projection_kwargs": {"umap_epochs": cb.umap_epochs, "tsne_iter": cb.tsne_iter},
    }


def _assert_saves(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.keys() == e.keys()
        assert g["features"] is e["features"]
        assert g["labels"] is e["labels"]
        assert {k: v for k, v in g.items() if k not in ("features", "labels")} == {
            k: v for k, v in e.items() if k not in ("features", "labels")
        }


def test_draw_passes_everything_on(rec: _Recorder) -> None:
    wb, other = _Wandb(), _OtherLogger()
    dm = _DM()
    trainer = _trainer(dm, epoch=4, step=99, loggers=[wb, other])
    module = _module("simclr")
    cb = EmbeddingPlotCallback("/plots/here", ["umap", "pca"], 2, 300, 11, 222, 9)
    got = cb.draw(trainer, module, suffix="_epoch005")  # type: ignore[arg-type]

    title = plot_title("simclr", OVERRIDES, 0.8125, "epoch 4")
    assert title == "simclr | loss.temperature=0.2 | kNN top-1 0.812 | epoch 4"
    assert rec.splits == [(module, dm, "val")]
    _assert_saves(rec.saves, [_expected_save(True, Path("/plots/here"), title, "_epoch005", cb, ("umap", "pca"))])
    paths = {"umap": Path("/plots/here/umap_epoch005.png"), "pca": Path("/plots/here/pca_epoch005.png")}
    assert got == paths
    assert cb.paths == {"umap_epoch005": paths["umap"], "pca_epoch005": paths["pca"]}
    assert wb.calls == [
        {"key": f"embeddings/{m}", "images": [str(p)], "caption": [title], "step": 99} for m, p in paths.items()
    ]
    assert other.calls == []


def test_draw_defaults_without_labels_or_knn(rec: _Recorder) -> None:
    """No ``dirpath``: ``<default_root_dir>/plots``; no labels, no kNN metric, no objective name; suffix ''."""
    dm = _DM(has_labels=False)
    trainer = _trainer(dm, epoch=0, root="/runs/abc", metrics={"val/knn_top5": torch.tensor(0.9)})
    module = SimpleNamespace()
    cb = EmbeddingPlotCallback()
    got = cb.draw(trainer, module)  # type: ignore[arg-type]

    title = plot_title(None, OVERRIDES, None, "epoch 0")
    assert title == "loss.temperature=0.2 | epoch 0"
    assert rec.splits == [(module, dm, "val")]
    out = Path("/runs/abc/plots")
    _assert_saves(rec.saves, [_expected_save(False, out, title, "", cb, ("umap", "tsne"))])
    assert got == {"umap": out / "umap.png", "tsne": out / "tsne.png"}
    assert cb.paths == got


def test_draw_accumulates_paths(rec: _Recorder) -> None:
    cb = EmbeddingPlotCallback("/o", ["pca"])
    cb.draw(_trainer(), _module(), suffix="_epoch001")  # type: ignore[arg-type]
    cb.draw(_trainer(), _module())  # type: ignore[arg-type]
    assert cb.paths == {"pca_epoch001": Path("/o/pca_epoch001.png"), "pca": Path("/o/pca.png")}
    assert [s["suffix"] for s in rec.saves] == ["_epoch001", ""]


# --- on_validation_end / on_train_end --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("every", "drawn"),
    [
        (2, {1: "_epoch002", 3: "_epoch004"}),
        (1, {0: "_epoch001", 1: "_epoch002", 2: "_epoch003", 3: "_epoch004"}),
        (3, {2: "_epoch003"}),
        (0, {}),
        (-1, {}),
    ],
)
def test_on_validation_end_period(rec: _Recorder, every: int, drawn: dict[int, str]) -> None:
    cb = EmbeddingPlotCallback("/o", ["pca"], every_n_epochs=every)
    module = _module()
    for epoch in range(4):
        trainer = _trainer(epoch=epoch)
        n = len(rec.saves)
        cb.on_validation_end(trainer, module)  # type: ignore[arg-type]
        if epoch in drawn:
            assert len(rec.saves) == n + 1
            assert rec.saves[-1]["suffix"] == drawn[epoch]
            assert rec.saves[-1]["title"].endswith(f"| epoch {epoch}")
            assert rec.splits[-1] == (module, trainer.datamodule, "val")
        else:
            assert len(rec.saves) == n
    assert cb.paths == {f"pca{s}": Path(f"/o/pca{s}.png") for s in drawn.values()}


@pytest.mark.parametrize(
    ("kwargs", "trainer"),
    [
        ({}, _trainer(sanity=True)),
        ({}, _trainer(global_zero=False)),
        ({}, _trainer(_TextDM())),
        ({"debug_run": "fast"}, _trainer()),
        ({"methods": ()}, _trainer()),
    ],
    ids=["sanity-check", "not-rank-zero", "no-images", "debug-run", "no-methods"],
)
def test_on_validation_end_skipped(rec: _Recorder, kwargs: dict[str, Any], trainer: SimpleNamespace) -> None:
    cb = EmbeddingPlotCallback(every_n_epochs=1, **kwargs)
    cb.on_validation_end(trainer, _module())  # type: ignore[arg-type]
    assert rec.saves == [] and rec.splits == [] and cb.paths == {}


def test_on_train_end_draws_when_active(rec: _Recorder) -> None:
    wb = _Wandb()
    trainer = _trainer(epoch=9, step=500, loggers=[wb])
    module = _module("triplet")
    cb = EmbeddingPlotCallback("/final", ["tsne"], every_n_epochs=0)
    cb.on_train_end(trainer, module)  # type: ignore[arg-type]
    title = plot_title("triplet", OVERRIDES, 0.8125, "epoch 9")
    assert rec.splits == [(module, trainer.datamodule, "val")]
    _assert_saves(rec.saves, [_expected_save(True, Path("/final"), title, "", cb, ("tsne",))])
    assert cb.paths == {"tsne": Path("/final/tsne.png")}
    assert wb.calls == [{"key": "embeddings/tsne", "images": ["/final/tsne.png"], "caption": [title], "step": 500}]


@pytest.mark.parametrize(
    ("kwargs", "trainer"),
    [
        ({}, _trainer(global_zero=False)),
        ({}, _trainer(_TextDM())),
        ({"debug_run": "fast"}, _trainer()),
        ({"methods": ()}, _trainer()),
    ],
    ids=["not-rank-zero", "no-images", "debug-run", "no-methods"],
)
def test_on_train_end_skipped(rec: _Recorder, kwargs: dict[str, Any], trainer: SimpleNamespace) -> None:
    cb = EmbeddingPlotCallback(**kwargs)
    cb.on_train_end(trainer, _module())  # type: ignore[arg-type]
    assert rec.saves == [] and rec.splits == [] and cb.paths == {}
