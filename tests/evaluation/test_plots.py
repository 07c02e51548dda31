"""2-D projections and the PNG pictures of an embedding space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from contrastlab.evaluation.plots import (
    import_umap,
    plot_title,
    project_2d,
    save_embedding_plots,
    subsample,
)


def blobs(n: int = 90, d: int = 12, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = 4 * torch.randn(classes, d, generator=g)
    return centres[y] + 0.3 * torch.randn(n, d, generator=g), y


def test_subsample_is_fixed_sorted_and_bounded() -> None:
    a, b = subsample(100, 30, seed=1), subsample(100, 30, seed=1)
    assert np.array_equal(a, b) and len(a) == 30 and np.all(np.diff(a) > 0)
    assert np.array_equal(subsample(10, 30), np.arange(10))
    assert np.array_equal(subsample(10, None), np.arange(10))


@pytest.mark.parametrize("method", ["pca", "tsne", "umap"])
def test_projections_separate_clusters(method: str) -> None:
    x, y = blobs()
    pts = project_2d(x, method, seed=0, umap_epochs=30, tsne_iter=250)
    assert pts.shape == (90, 2) and pts.dtype == np.float32 and np.isfinite(pts).all()
    # each point's nearest 2-D neighbour has its class (the blobs are far apart)
    d = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (y.numpy()[d.argmin(1)] == y.numpy()).mean() > 0.95


def test_import_umap_restores_numba_decorators() -> None:
    import numba

    njit, jit = numba.njit, numba.jit
    assert import_umap().UMAP is not None
    assert numba.njit is njit and numba.jit is jit


def test_projection_errors() -> None:
    with pytest.raises(ValueError, match="plots.methods"):
        project_2d(np.zeros((5, 2)), "mds")
    with pytest.raises(ValueError, match="at least 3"):
        project_2d(np.zeros((2, 2)), "pca")


def test_plot_title() -> None:
    title = plot_title(
        "simclr",
        ["loss.temperature=0.2", "hydra.run.dir=/x", "print_config=false", "sampler=memory_bank"],
        0.9712,
    )
    assert title == "simclr | loss.temperature=0.2, sampler=memory_bank | kNN top-1 0.971"
    assert plot_title("triplet", [], None, "epoch 3") == "triplet | defaults | epoch 3"


def test_save_embedding_plots_writes_pngs(tmp_path: Path) -> None:
    x, y = blobs(60)
    paths = save_embedding_plots(
        x,
        y,
        tmp_path / "plots",
        ("pca", "tsne"),
        "simclr | defaults",
        "_epoch001",
        max_points=40,
        tsne_iter=250,
    )
    assert set(paths) == {"pca", "tsne"}
    for method, p in paths.items():
        assert p == tmp_path / "plots" / f"{method}_epoch001.png"
        img = imread(p)
        assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300
    # unlabelled data (labels all -1, or none) draws one colour
    assert save_embedding_plots(x, None, tmp_path, ("pca",))["pca"].exists()
    assert save_embedding_plots(x, torch.full((60,), -1), tmp_path, ("pca",), suffix="_u")["pca"].exists()
    with pytest.raises(ValueError, match="plots.methods must list methods among umap, tsne, pca, got 'isomap'"):
        save_embedding_plots(x, y, tmp_path, ("isomap",))
