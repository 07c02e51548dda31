"""The exact contract of ``contrastlab.evaluation.plots``, pinned down to the argument.

- ``import_umap``: a no-op when umap is imported; otherwise numba's ``njit``/``jit`` default to ``cache=True``
  only while umap imports (a fake ``umap`` module and a fake ``numba`` stand in for the real ones).
- ``subsample``: numpy's ``default_rng(seed).choice`` without replacement, sorted; every row when it fits.
- ``project_2d``: what it asks of ``umap.UMAP``, ``sklearn.manifold.TSNE`` and ``sklearn.decomposition.PCA``
  (recording stand-ins): the parameters, the L2-normalised float32 input, the float32 output, the errors.
- ``plot_title``: the exact string, which overrides are left out, the ``defaults`` fallback.
- ``plot_projection``: what is drawn, read back from the Figure captured at ``savefig`` and from the PNG.
- ``save_embedding_plots``: the rows, labels, titles, paths and arguments it hands to ``project_2d`` and
  ``plot_projection`` (both replaced by recorders).
"""

from __future__ import annotations

import sys
import types
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from PIL import Image

from contrastlab.errors import ConfigError
from contrastlab.evaluation import plots
from contrastlab.evaluation.plots import (
    check_methods,
    import_umap,
    plot_projection,
    plot_title,
    project_2d,
    save_embedding_plots,
    subsample,
)

# ----------------------------------------------------------------------------------------------- import_umap


def test_import_umap_is_a_no_op_when_umap_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_umap = types.ModuleType("umap")
    monkeypatch.setitem(sys.modules, "umap", fake_umap)
    monkeypatch.setitem(sys.modules, "numba", None)  # numba is not even imported: `import numba` would fail
    assert import_umap() is fake_umap


@dataclass
class FakeNumba:
    """A ``numba`` module whose ``njit``/``jit`` record the keyword arguments they are called with."""

    module: types.ModuleType
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)


@pytest.fixture
def fake_numba(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeNumba]:
    module = types.ModuleType("numba")
    fake = FakeNumba(module)

    def decorator(name: str) -> Any:
        def decorate(*args: Any, **kwargs: Any) -> str:
            fake.calls.append((name, args, kwargs))
            return f"{name}-kernel"

        return decorate

    module.njit, module.jit = decorator("njit"), decorator("jit")
    monkeypatch.setitem(sys.modules, "numba", module)
    # sys.modules["umap"] comes back as it was (absent or the real module) after the fake one is imported
    monkeypatch.setitem(sys.modules, "umap", types.ModuleType("placeholder"))
    monkeypatch.delitem(sys.modules, "umap")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield fake


def test_import_umap_caches_numba_kernels_only_while_umap_imports(fake_numba: FakeNumba, tmp_path: Path) -> None:
    njit, jit = fake_numba.module.njit, fake_numba.module.jit
    (tmp_path / "umap.py").write_text(
        "import numba\n"
        "A = numba.njit(fastmath=True)\n"
        "B = numba.jit('f8(f8)', nopython=True)\n"
        "C = numba.njit(cache=False)\n"
    )
    umap = import_umap()
    assert umap is sys.modules["umap"] and Path(umap.__file__) == tmp_path / "umap.py"
    assert (umap.A, umap.B, umap.C) == ("njit-kernel", "jit-kernel", "njit-kernel")
    assert fake_numba.calls == [
        ("njit", (), {"fastmath": True, "cache": True}),
        ("jit", ("f8(f8)",), {"nopython": True, "cache": True}),
        ("njit", (), {"cache": False}),  # an explicit choice is kept
    ]
    # afterwards the decorators are numba's own again: other code's kernels are not cached behind its back
    assert fake_numba.module.njit is njit and fake_numba.module.jit is jit
    fake_numba.module.njit(parallel=True)
    assert fake_numba.calls[-1] == ("njit", (), {"parallel": True})


def test_import_umap_restores_numba_when_the_import_fails(fake_numba: FakeNumba, tmp_path: Path) -> None:
    njit, jit = fake_numba.module.njit, fake_numba.module.jit
    (tmp_path / "umap.py").write_text("raise ImportError('umap-learn is broken')\n")
    with pytest.raises(ImportError, match="umap-learn is broken"):
        import_umap()
    assert fake_numba.module.njit is njit and fake_numba.module.jit is jit


# ------------------------------------------------------------------------------------------------- subsample


def test_subsample_is_numpys_choice_without_replacement_sorted() -> None:
    for n, max_points, seed in [(100, 30, 5), (31, 30, 0), (1000, 7, 123)]:
        expected = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
        got = subsample(n, max_points, seed)
        assert np.array_equal(got, expected)
        assert len(np.unique(got)) == max_points
    assert np.array_equal(subsample(100, 30), subsample(100, 30, seed=0))


def test_subsample_keeps_every_row_when_they_fit() -> None:
    for n, max_points in [(10, None), (10, 30), (30, 30), (0, 5)]:
        got = subsample(n, max_points, seed=3)
        assert np.array_equal(got, np.arange(n)) and got.dtype.kind == "i"


# ------------------------------------------------------------------------------------------------ project_2d


class FakeEstimator:
    """Stand-in for ``UMAP``/``TSNE``/``PCA``: records its arguments and input, returns fixed float64 points."""

    made: ClassVar[list[FakeEstimator]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs
        self.fitted: Any = None
        type(self).made.append(self)

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        self.fitted = x
        return fake_points(len(x))


def fake_points(n: int) -> np.ndarray:
    return np.arange(2 * n, dtype=np.float64).reshape(n, 2) + 0.25


@dataclass
class Fakes:
    umap: type[FakeEstimator]
    tsne: type[FakeEstimator]
    pca: type[FakeEstimator]

    def only(self, method: str) -> FakeEstimator:
        """The one estimator made, which must be of ``method``."""
        made = {name: getattr(self, name).made for name in ("umap", "tsne", "pca")}
        assert {name: len(m) for name, m in made.items()} == {name: int(name == method) for name in made}
        return made[method][0]


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    umap_cls = type("FakeUMAP", (FakeEstimator,), {"made": []})
    tsne_cls = type("FakeTSNE", (FakeEstimator,), {"made": []})
    pca_cls = type("FakePCA", (FakeEstimator,), {"made": []})
    fake_umap = types.ModuleType("umap")
    fake_umap.UMAP = umap_cls  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "umap", fake_umap)
    monkeypatch.setattr("sklearn.manifold.TSNE", tsne_cls)
    monkeypatch.setattr("sklearn.decomposition.PCA", pca_cls)
    return Fakes(umap_cls, tsne_cls, pca_cls)


def features(n: int, d: int = 3, seed: int = 0) -> np.ndarray:
    """(n, d) float64 rows of very different norms."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * rng.uniform(0.1, 50.0, size=(n, 1))


def assert_normalised_input(estimator: FakeEstimator, x: np.ndarray) -> None:
    fitted = estimator.fitted
    assert isinstance(fitted, np.ndarray) and fitted.dtype == np.float32 and fitted.shape == x.shape
    np.testing.assert_allclose(fitted, x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6, atol=1e-7)


def assert_fake_output(points: np.ndarray, n: int) -> None:
    assert points.dtype == np.float32 and points.shape == (n, 2)
    np.testing.assert_array_equal(points, fake_points(n).astype(np.float32))


def test_project_2d_defaults_to_umap_with_its_default_parameters(fakes: Fakes) -> None:
    x = features(40)
    points = project_2d(x)
    reducer = fakes.only("umap")
    assert reducer.args == ()
    assert reducer.kwargs == {
        "n_components": 2,
        "n_neighbors": 15,
        "n_epochs": 200,
        "random_state": 0,
        "init": "random",
    }
    assert_normalised_input(reducer, x)
    assert_fake_output(points, 40)


@pytest.mark.parametrize(
    ("n", "d", "neighbors", "expected_neighbors"),
    [(6, 8, 15, 5), (40, 3, 3, 3), (3, 2, 15, 2), (17, 4, 16, 16)],
)
def test_project_2d_umap_neighbours_are_capped_at_n_minus_1(
    fakes: Fakes, n: int, d: int, neighbors: int, expected_neighbors: int
) -> None:
    x = features(n, d, seed=n)
    points = project_2d(torch.as_tensor(x), "umap", seed=7, umap_epochs=None, umap_neighbors=neighbors)
    reducer = fakes.only("umap")
    assert reducer.kwargs == {
        "n_components": 2,
        "n_neighbors": expected_neighbors,
        "n_epochs": None,
        "random_state": 7,
        "init": "random",
    }
    assert_normalised_input(reducer, x)
    assert_fake_output(points, n)


def test_project_2d_silences_only_umaps_n_jobs_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoisyUMAP(FakeEstimator):
        made: ClassVar[list[FakeEstimator]] = []

        def fit_transform(self, x: np.ndarray) -> np.ndarray:
            # umap-learn's own words when random_state is set
            warnings.warn(
                "n_jobs value 1 overridden to 1 by setting random_state. Use no seed for parallelism.", stacklevel=2
            )
            warnings.warn("Graph is not fully connected, spectral embedding may not work as expected.", stacklevel=2)
            warnings.warn("n_jobs value will change in a later release", FutureWarning, stacklevel=2)
            return super().fit_transform(x)

    fake_umap = types.ModuleType("umap")
    fake_umap.UMAP = NoisyUMAP  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "umap", fake_umap)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        project_2d(features(10), "umap")
        warnings.warn(
            "n_jobs value 4 overridden to 1 by setting random_state.", UserWarning, stacklevel=1
        )  # only inside
    assert [(w.category, str(w.message)) for w in caught] == [
        (UserWarning, "Graph is not fully connected, spectral embedding may not work as expected."),
        (FutureWarning, "n_jobs value will change in a later release"),
        (UserWarning, "n_jobs value 4 overridden to 1 by setting random_state."),
    ]


def test_project_2d_tsne_default_parameters(fakes: Fakes) -> None:
    x = features(100, 5)
    points = project_2d(x, "tsne")
    tsne = fakes.only("tsne")
    assert tsne.args == (2,)
    assert tsne.kwargs == {"perplexity": 30.0, "init": "pca", "random_state": 0, "max_iter": 1000}
    assert_normalised_input(tsne, x)
    assert_fake_output(points, 100)


@pytest.mark.parametrize(
    ("n", "perplexity", "tsne_iter", "expected_perplexity", "expected_iter"),
    [(10, 30.0, 100, 3.0, 250), (10, 2.0, 400, 2.0, 400), (31, 30.0, 250, 10.0, 250), (7, 30.0, 1000, 2.0, 1000)],
)
def test_project_2d_tsne_perplexity_and_iterations_are_bounded(
    fakes: Fakes, n: int, perplexity: float, tsne_iter: int, expected_perplexity: float, expected_iter: int
) -> None:
    x = features(n, 4, seed=n)
    points = project_2d(x, "tsne", seed=4, tsne_iter=tsne_iter, perplexity=perplexity)
    tsne = fakes.only("tsne")
    assert tsne.args == (2,)
    assert tsne.kwargs == {
        "perplexity": expected_perplexity,
        "init": "pca",
        "random_state": 4,
        "max_iter": expected_iter,
    }
    assert_normalised_input(tsne, x)
    assert_fake_output(points, n)


@pytest.mark.parametrize("seed", [0, 9])
def test_project_2d_pca(fakes: Fakes, seed: int) -> None:
    x = features(12, 6, seed=seed)
    points = project_2d(x, "pca", seed=seed)
    pca = fakes.only("pca")
    assert pca.args == (2,) and pca.kwargs == {"random_state": seed}
    assert_normalised_input(pca, x)
    assert_fake_output(points, 12)


def test_project_2d_real_pca_of_normalised_rows() -> None:
    # rows on two rays: after L2 normalisation they are two points, so PCA puts each ray at one spot
    x = np.array([[1.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 2.0]])
    points = project_2d(x, "pca")
    assert points.dtype == np.float32 and points.shape == (5, 2)
    np.testing.assert_allclose(points[0], points[1], atol=1e-6)
    np.testing.assert_allclose(points[2], points[3], atol=1e-6)


def test_project_2d_needs_three_rows(fakes: Fakes) -> None:
    with pytest.raises(ValueError) as error:
        project_2d(features(2, 5), "pca")
    assert str(error.value) == "need at least 3 points for a 2-D projection, got 2"
    # three rows of two dimensions are enough: it is the rows that count
    assert_fake_output(project_2d(features(3, 2), "pca"), 3)
    assert_fake_output(project_2d(features(5, 2), "pca"), 5)


@pytest.mark.parametrize("method", ["mds", "UMAP", "t-SNE", ""])
def test_project_2d_unknown_method(fakes: Fakes, method: str) -> None:
    with pytest.raises(ValueError) as error:
        project_2d(features(5), method)
    assert str(error.value) == f"unknown projection method {method!r}; choose from umap, tsne, pca (plots.methods)"
    assert fakes.umap.made == fakes.tsne.made == fakes.pca.made == []


# ------------------------------------------------------------------------------------------------ plot_title


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            (
                "simclr",
                [
                    "loss.temperature=0.2",
                    "+hydra.job.name=x",
                    "~paths.data_dir",
                    "print_config=true",
                    "ckpt_path=/a/last.ckpt",
                    "++hydra.verbose=true",
                    "~+ckpt_path",
                    "trainer.max_epochs=3",
                ],
                0.97149,
                "epoch 3",
            ),
            "simclr | loss.temperature=0.2, trainer.max_epochs=3 | kNN top-1 0.971 | epoch 3",
        ),
        (("triplet", ["hydra.run.dir=/x", "paths.root=/y"], 0.5), "triplet | defaults | kNN top-1 0.500"),
        # a key that merely contains or resembles a filtered prefix is the run's own setting; only the leading
        # '+'/'~' markers are stripped before the comparison
        (
            (None, ["paths=local", "model.hydra.x=1", "Xpaths.a=1", "my_ckpt_path=1", "loss+=1"]),
            "paths=local, model.hydra.x=1, Xpaths.a=1, my_ckpt_path=1, loss+=1",
        ),
        (("infonce", ["+sampler=memory_bank"], 0.0, ""), "infonce | +sampler=memory_bank | kNN top-1 0.000"),
        (("", [], None, "step 5"), "defaults | step 5"),
        ((None,), "defaults"),
        (("simclr",), "simclr | defaults"),
        ((), "defaults"),
    ],
)
def test_plot_title(args: tuple[Any, ...], expected: str) -> None:
    assert plot_title(*args) == expected


def test_plot_title_keywords() -> None:
    assert plot_title(objective="moco", overrides=("print_config=false",), extra="ep 2") == "moco | defaults | ep 2"


# ------------------------------------------------------------------------------------------- plot_projection


@dataclass
class Drawn:
    """A figure as ``plot_projection`` handed it to ``savefig``."""

    figure: Figure
    canvas: type
    path: Any


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Drawn]:
    """Every Figure saved during the test, captured on its way into the real ``Figure.savefig``."""
    figures: list[Drawn] = []
    savefig = Figure.savefig

    def capture(self: Figure, fname: Any, *args: Any, **kwargs: Any) -> None:
        figures.append(Drawn(self, type(self.canvas), fname))
        savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    return figures


def only_axes(drawn: list[Drawn]) -> matplotlib.axes.Axes:
    assert len(drawn) == 1
    (ax,) = drawn[0].figure.axes
    return ax


def scatter_points(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-5, 5, size=(n, 2))


@pytest.mark.parametrize("labels", [None, np.full(30, -1), np.array([-3, -1] * 15), torch.full((30,), -2)])
def test_plot_projection_unlabelled_points_are_one_blue_cloud(tmp_path: Path, drawn: list[Drawn], labels: Any) -> None:
    points = scatter_points(30)
    # the blue does not come from the style's colour cycle
    with matplotlib.rc_context({"axes.prop_cycle": matplotlib.cycler(color=["red", "green"])}):
        plot_projection(points, labels, "t", tmp_path / "u.png")
    ax = only_axes(drawn)
    (cloud,) = ax.collections
    assert isinstance(cloud, PathCollection)
    np.testing.assert_array_equal(cloud.get_offsets(), points)
    np.testing.assert_allclose(cloud.get_facecolor(), [to_rgba("tab:blue", 0.8)])
    assert cloud.get_alpha() == 0.8
    assert list(cloud.get_sizes()) == [6] and list(cloud.get_linewidths()) == [0]
    assert ax.get_legend() is None


@pytest.mark.parametrize(
    ("method", "axis_name"),
    [("umap", "UMAP"), ("tsne", "t-SNE"), ("pca", "PCA"), ("isomap", "isomap")],
)
def test_plot_projection_figure(tmp_path: Path, drawn: list[Drawn], method: str, axis_name: str) -> None:
    path = tmp_path / "a" / "b" / f"{method}.png"
    title = f"{axis_name} of 30 validation embeddings\nsimclr | defaults"
    got = plot_projection(scatter_points(30), np.arange(30) % 3, title, str(path), method)
    assert got == path and isinstance(got, Path) and path.is_file()
    assert drawn[0].path == path and drawn[0].canvas is FigureCanvasAgg  # drawn on an Agg canvas, no pyplot
    fig = drawn[0].figure
    assert tuple(fig.get_size_inches()) == (7, 6.2) and fig.dpi == 110
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (770, 682)
    ax = only_axes(drawn)
    assert ax.get_subplotspec().get_geometry() == (1, 1, 0, 0)
    assert len(ax.get_xticks()) == 0 and len(ax.get_yticks()) == 0
    assert (ax.get_xlabel(), ax.get_ylabel()) == (f"{axis_name} 1", f"{axis_name} 2")
    assert ax.title.get_text() == title
    assert ax.title.get_fontsize() == 8 and ax.title.get_wrap() is True
    # a second picture in the same, now existing, folder
    assert plot_projection(scatter_points(5), None, "", path.with_name("again.png"), method).is_file()


def test_plot_projection_without_method_has_no_axis_labels(tmp_path: Path, drawn: list[Drawn]) -> None:
    plot_projection(scatter_points(10), None, "just points", tmp_path / "p.png")
    ax = only_axes(drawn)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("", "")
    assert ax.title.get_text() == "just points"


def expected_colours(n_classes: int) -> list[tuple[float, float, float, float]]:
    if n_classes <= 10:
        return [matplotlib.colormaps["tab10"].colors[i] + (1.0,) for i in range(n_classes)]
    if n_classes <= 20:
        return [matplotlib.colormaps["tab20"].colors[i] + (1.0,) for i in range(n_classes)]
    turbo = matplotlib.colormaps["turbo"]
    return [turbo(i / (n_classes - 1)) for i in range(n_classes)]


def legend_columns(legend: Any) -> int:
    """How many columns the drawn legend has (its texts' distinct left edges)."""
    return len({round(text.get_window_extent().x0) for text in legend.get_texts()})


@pytest.mark.parametrize("n_classes", [1, 3, 10, 11, 12, 20, 21, 25])
def test_plot_projection_one_scatter_per_class(tmp_path: Path, drawn: list[Drawn], n_classes: int) -> None:
    rng = np.random.default_rng(n_classes)
    values = 3 * np.arange(n_classes)  # label values are not colour indices: classes are ranked
    labels = rng.permutation(np.repeat(values, 4))
    points = scatter_points(len(labels), seed=n_classes)
    plot_projection(points, labels, "classes", tmp_path / "c.png", "pca")
    ax = only_axes(drawn)
    assert len(ax.collections) == n_classes
    for collection, value, colour in zip(ax.collections, values, expected_colours(n_classes), strict=True):
        assert isinstance(collection, PathCollection)
        np.testing.assert_array_equal(collection.get_offsets(), points[labels == value])
        np.testing.assert_allclose(collection.get_facecolor(), [colour[:3] + (0.85,)], atol=1e-12)
        assert collection.get_alpha() == 0.85
        assert list(collection.get_sizes()) == [6] and list(collection.get_linewidths()) == [0]
        assert collection.get_label() == str(value)
    legend = ax.get_legend()
    if n_classes > 20:
        assert legend is None
        return
    assert [t.get_text() for t in legend.get_texts()] == [str(v) for v in values]
    assert all(t.get_fontsize() == 7 for t in legend.get_texts())
    assert legend.markerscale == 3 and legend.get_frame_on() is False
    assert legend_columns(legend) == (2 if n_classes > 10 else 1)


def test_plot_projection_class_names_name_only_known_classes(tmp_path: Path, drawn: list[Drawn]) -> None:
    labels = np.array([3, -1, 0, 1, 2, 0, 2, 1, -1, 3])
    plot_projection(scatter_points(10), labels, "named", tmp_path / "n.png", "umap", ["cat", "dog", "owl"])
    ax = only_axes(drawn)
    expected = ["-1", "cat", "dog", "owl", "3"]
    assert [c.get_label() for c in ax.collections] == expected
    assert [t.get_text() for t in ax.get_legend().get_texts()] == expected


def test_plot_projection_legend_style_does_not_follow_rc(tmp_path: Path, drawn: list[Drawn]) -> None:
    # the points crowd the upper left; the legend goes where it covers none ('best'), whatever the style says
    rng = np.random.default_rng(0)
    crowd = np.column_stack([rng.uniform(0, 4, 200), rng.uniform(6, 10, 200)])
    points = np.vstack([crowd, [[10.0, 0.0], [0.0, 0.0]]])
    labels = np.r_[np.arange(200) % 2, 0, 1]
    style = {
        "legend.loc": "upper left",
        "legend.frameon": True,
        "legend.fontsize": 12,
        "legend.markerscale": 1.0,
        "axes.titlesize": 20,
        "axes.prop_cycle": matplotlib.cycler(color=["red", "green"]),
    }
    with matplotlib.rc_context(style):
        plot_projection(points, labels, "styled", tmp_path / "s.png", "tsne", ["a", "b"])
    ax = only_axes(drawn)
    legend = ax.get_legend()
    box, axes_box = legend.get_window_extent(), ax.get_window_extent()
    assert box.x0 > (axes_box.x0 + axes_box.x1) / 2  # right half: away from the crowd
    assert legend.get_frame_on() is False and legend.markerscale == 3
    assert [t.get_fontsize() for t in legend.get_texts()] == [7, 7]
    assert ax.title.get_fontsize() == 8
    np.testing.assert_allclose(
        [c.get_facecolor()[0] for c in ax.collections], [(*c[:3], 0.85) for c in expected_colours(2)]
    )


# -------------------------------------------------------------------------------------- save_embedding_plots


@dataclass
class Pipeline:
    """What ``save_embedding_plots`` handed to ``project_2d`` and ``plot_projection``."""

    projections: list[dict[str, Any]] = field(default_factory=list)
    plots: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def pipeline(monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    recorded = Pipeline()

    def record_projection(features: Any, method: str = "umap", seed: int = 0, **kwargs: Any) -> np.ndarray:
        points = np.full((len(features), 2), float(len(recorded.projections)))
        recorded.projections.append(
            {"features": features, "method": method, "seed": seed, "kwargs": kwargs, "points": points}
        )
        return points

    def record_plot(points: Any, labels: Any, title: str, path: Any, method: str = "", class_names: Any = None) -> Path:
        recorded.plots.append(
            {
                "points": points,
                "labels": labels,
                "title": title,
                "path": path,
                "method": method,
                "class_names": class_names,
            }
        )
        return Path(path)

    monkeypatch.setattr(plots, "project_2d", record_projection)
    monkeypatch.setattr(plots, "plot_projection", record_plot)
    return recorded


def rows(n: int) -> np.ndarray:
    """float64 features whose first column is the row's index."""
    return np.column_stack([np.arange(n, dtype=np.float64), np.ones(n), -np.arange(n, dtype=np.float64)])


def test_save_embedding_plots_subsamples_and_hands_everything_on(tmp_path: Path, pipeline: Pipeline) -> None:
    x, y = rows(50), np.arange(50) % 7
    paths = save_embedding_plots(
        x,
        y,
        tmp_path / "plots",
        ("pca", "tsne"),
        "simclr | defaults",
        "_e1",
        max_points=20,
        seed=3,
        class_names=["a", "b"],
        tsne_iter=300,
        perplexity=5.0,
    )
    idx = np.sort(np.random.default_rng(3).choice(50, size=20, replace=False))
    assert paths == {"pca": tmp_path / "plots" / "pca_e1.png", "tsne": tmp_path / "plots" / "tsne_e1.png"}
    assert [p["method"] for p in pipeline.projections] == ["pca", "tsne"]
    for call in pipeline.projections:
        assert call["features"].dtype == np.float32
        np.testing.assert_array_equal(call["features"], x[idx].astype(np.float32))
        assert call["seed"] == 3 and call["kwargs"] == {"tsne_iter": 300, "perplexity": 5.0}
    for plot, projection, name in zip(pipeline.plots, pipeline.projections, ("PCA", "t-SNE"), strict=True):
        assert plot["points"] is projection["points"]
        np.testing.assert_array_equal(plot["labels"], y[idx])  # the labels of the same rows
        assert plot["title"] == f"{name} of 20 validation embeddings\nsimclr | defaults"
        assert plot["path"] == paths[projection["method"]] and plot["method"] == projection["method"]
        assert plot["class_names"] == ["a", "b"]


def test_save_embedding_plots_defaults(tmp_path: Path, pipeline: Pipeline) -> None:
    x = rows(2001)
    paths = save_embedding_plots(x, None, str(tmp_path))
    idx = np.sort(np.random.default_rng(0).choice(2001, size=2000, replace=False))
    assert paths == {"umap": tmp_path / "umap.png", "tsne": tmp_path / "tsne.png"}
    assert [(p["method"], p["seed"], p["kwargs"]) for p in pipeline.projections] == [("umap", 0, {}), ("tsne", 0, {})]
    for call in pipeline.projections:
        np.testing.assert_array_equal(call["features"], x[idx].astype(np.float32))
    assert [(p["labels"], p["title"], p["method"], p["class_names"]) for p in pipeline.plots] == [
        (None, "UMAP of 2000 validation embeddings", "umap", None),
        (None, "t-SNE of 2000 validation embeddings", "tsne", None),
    ]


def test_save_embedding_plots_keeps_every_row_up_to_max_points(tmp_path: Path, pipeline: Pipeline) -> None:
    x, y = rows(12), np.arange(12)[::-1].copy()
    save_embedding_plots(x, y, tmp_path, ("pca",), max_points=None, seed=5)
    np.testing.assert_array_equal(pipeline.projections[0]["features"], x.astype(np.float32))
    np.testing.assert_array_equal(pipeline.plots[0]["labels"], y)
    assert pipeline.projections[0]["seed"] == 5
    assert pipeline.plots[0]["title"] == "PCA of 12 validation embeddings"


class AcceleratorTensor(torch.Tensor):
    """A tensor numpy cannot read until it is moved with ``.cpu()``, like one on a GPU."""

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError("can't convert an accelerator tensor to numpy: use .cpu() first")

    def cpu(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.as_subclass(torch.Tensor)


@pytest.mark.parametrize("on_accelerator", [False, True])
def test_save_embedding_plots_accepts_tensors(tmp_path: Path, pipeline: Pipeline, on_accelerator: bool) -> None:
    x, y = torch.as_tensor(rows(30), dtype=torch.float64), torch.arange(30) % 4
    if on_accelerator:
        x, y = x.as_subclass(AcceleratorTensor), y.as_subclass(AcceleratorTensor)
    save_embedding_plots(x, y, tmp_path, ("umap",), max_points=10, seed=1, umap_epochs=5)
    idx = np.sort(np.random.default_rng(1).choice(30, size=10, replace=False))
    (projection,), (plot,) = pipeline.projections, pipeline.plots
    assert isinstance(projection["features"], np.ndarray) and projection["features"].dtype == np.float32
    np.testing.assert_array_equal(projection["features"], rows(30)[idx].astype(np.float32))
    assert projection["kwargs"] == {"umap_epochs": 5}
    assert isinstance(plot["labels"], np.ndarray)
    np.testing.assert_array_equal(plot["labels"], idx % 4)


@pytest.mark.parametrize("methods", [("isomap",), ("pca", "isomap"), ["umap", "tsne", "isomap"]])
def test_save_embedding_plots_rejects_an_unknown_method_before_drawing(
    tmp_path: Path, pipeline: Pipeline, methods: tuple[str, ...]
) -> None:
    """Every name is checked first: a typo after a valid method costs no projection and writes no file."""
    with pytest.raises(ConfigError) as error:
        save_embedding_plots(rows(10), None, tmp_path, methods)
    assert str(error.value) == (
        "plots.methods must list methods among umap, tsne, pca, got 'isomap'; set e.g. plots.methods=[umap,tsne]."
    )
    assert pipeline.projections == [] and pipeline.plots == [] and not list(tmp_path.iterdir())


def test_check_methods() -> None:
    """A tuple of the names, in order; one name alone is one method (not its letters); the key is named."""
    assert check_methods(["tsne", "pca"]) == ("tsne", "pca") and check_methods(()) == ()
    assert check_methods("pca", "k") == ("pca",)
    with pytest.raises(ConfigError, match=r"^eval\.plots\.methods must list methods among umap, tsne, pca, got 'u'"):
        check_methods(["u"], "eval.plots.methods")


def test_save_embedding_plots_draws_real_pictures(tmp_path: Path, drawn: list[Drawn]) -> None:
    x = np.vstack([rows(20), -rows(20)])
    paths = save_embedding_plots(x, np.r_[np.zeros(20), np.ones(20)].astype(int), tmp_path, ("pca",), "t", "_x")
    assert paths == {"pca": tmp_path / "pca_x.png"} and paths["pca"].is_file()
    ax = only_axes(drawn)
    assert ax.title.get_text() == "PCA of 40 validation embeddings\nt" and ax.get_xlabel() == "PCA 1"
    assert [c.get_label() for c in ax.collections] == ["0", "1"]
