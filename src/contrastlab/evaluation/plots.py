"""2-D pictures of an embedding space: UMAP (umap-learn) and t-SNE (scikit-learn), coloured by label.

    paths = save_embedding_plots(features, labels, "outputs/.../plots", methods=("umap", "tsne"),
                                 title=plot_title("simclr", ["loss.temperature=0.2"], knn_top1=0.97))

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot state, no display).
UMAP compiles its numba kernels on first use; umap-learn does not ask numba to cache them on disk,
so every new process would pay that compilation again (about 20 s on a small CPU). :func:`import_umap`
imports umap-learn with numba's on-disk cache switched on for its kernels, so the compilation
happens once per machine; later processes load the compiled code.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from contrastlab.errors import ConfigError

METHODS = ("umap", "tsne", "pca")
NAMES = {"umap": "UMAP", "tsne": "t-SNE", "pca": "PCA"}


def check_methods(methods: str | Sequence[str], key: str = "plots.methods") -> tuple[str, ...]:
    """``methods`` as a tuple (one name alone too: ``methods=pca``) when each is one of :data:`METHODS`, else a
    :class:`~contrastlab.errors.ConfigError` naming ``key``: checked before any picture is drawn, so a typo
    never costs the projections (or the training run) before it."""
    names = (methods,) if isinstance(methods, str) else tuple(methods)
    for method in names:
        if method not in METHODS:
            raise ConfigError(
                f"{key} must list methods among {', '.join(METHODS)}, got {method!r}; set e.g. {key}=[umap,tsne]."
            )
    return names


def import_umap() -> Any:
    """``import umap`` with ``cache=True`` as the default of numba's ``njit``/``jit`` while umap-learn
    (and pynndescent) define their kernels; a no-op when umap is already imported."""
    import sys

    if "umap" in sys.modules:
        return sys.modules["umap"]
    import numba

    njit, jit = numba.njit, numba.jit

    def cached(decorator: Any) -> Any:
        @functools.wraps(decorator)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("cache", True)
            return decorator(*args, **kwargs)

        return wrapper

    numba.njit, numba.jit = cached(njit), cached(jit)
    try:
        import umap
    finally:
        numba.njit, numba.jit = njit, jit
    return umap


def subsample(n: int, max_points: int | None, seed: int = 0) -> np.ndarray:
    """Sorted row indices of a fixed random subset of size ``min(n, max_points)``."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def project_2d(
    features: np.ndarray | Tensor,
    method: str = "umap",
    seed: int = 0,
    umap_epochs: int | None = 200,
    umap_neighbors: int = 15,
    tsne_iter: int = 1000,
    perplexity: float = 30.0,
) -> np.ndarray:
    """(N, D) -> (N, 2) float32 with ``method`` in ``umap`` | ``tsne`` | ``pca``, on L2-normalised features
    (UMAP and t-SNE with the cosine geometry the metrics use)."""
    x = torch.nn.functional.normalize(torch.as_tensor(np.asarray(features), dtype=torch.float32), dim=1).numpy()
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"need at least 3 points for a 2-D projection, got {n}")
    if method == "umap":
        umap = import_umap()
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=min(umap_neighbors, n - 1),
            n_epochs=umap_epochs,
            random_state=seed,
            init="random",
        )
        with warnings.catch_warnings():  # "n_jobs overridden by setting random_state": we want reproducible
            warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
            return np.asarray(reducer.fit_transform(x), dtype=np.float32)
    if method == "tsne":
        from sklearn.manifold import TSNE

        tsne = TSNE(
            2,
            perplexity=min(perplexity, (n - 1) / 3),
            init="pca",
            random_state=seed,
            max_iter=max(tsne_iter, 250),
        )
        return np.asarray(tsne.fit_transform(x), dtype=np.float32)
    if method == "pca":
        from sklearn.decomposition import PCA

        return np.asarray(PCA(2, random_state=seed).fit_transform(x), dtype=np.float32)
    raise ValueError(f"unknown projection method {method!r}; choose from {', '.join(METHODS)} (plots.methods)")


def plot_title(
    objective: str | None = None,
    overrides: Sequence[str] = (),
    knn_top1: float | None = None,
    extra: str = "",
) -> str:
    """``"simclr | loss.temperature=0.2 | kNN top-1 0.971"``: the run's key overrides and kNN accuracy."""
    keep = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "print_config", "paths.", "ckpt_path"))]
    parts = [p for p in (objective, ", ".join(keep) or "defaults") if p]
    if knn_top1 is not None:
        parts.append(f"kNN top-1 {knn_top1:.3f}")
    if extra:
        parts.append(extra)
    return " | ".join(parts)


def plot_projection(
    points: np.ndarray,
    labels: np.ndarray | None,
    title: str,
    path: str | Path,
    method: str = "",
    class_names: Sequence[str] | None = None,
) -> Path:
    """Scatter (N, 2) ``points`` coloured by ``labels`` (legend up to 20 classes) into a PNG at ``path``."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 6.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if labels is None or (np.asarray(labels) < 0).all():
        ax.scatter(points[:, 0], points[:, 1], s=6, c="tab:blue", alpha=0.8, linewidths=0)
    else:
        labels = np.asarray(labels)
        classes = np.unique(labels)
        palette = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo"]
        for i, c in enumerate(classes):
            m = labels == c
            colour = palette(i if len(classes) <= 20 else i / max(len(classes) - 1, 1))
            name = str(c) if class_names is None or c < 0 or c >= len(class_names) else class_names[int(c)]
            ax.scatter(points[m, 0], points[m, 1], s=6, color=colour, alpha=0.85, linewidths=0, label=name)
        if len(classes) <= 20:
            ax.legend(markerscale=3, fontsize=7, loc="best", frameon=False, ncol=2 if len(classes) > 10 else 1)
    ax.set_xticks([])
    ax.set_yticks([])
    if method:
        ax.set_xlabel(f"{NAMES.get(method, method)} 1")
        ax.set_ylabel(f"{NAMES.get(method, method)} 2")
    ax.set_title(title, fontsize=8, wrap=True)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def save_embedding_plots(
    features: np.ndarray | Tensor,
    labels: np.ndarray | Tensor | None,
    out_dir: str | Path,
    methods: Sequence[str] = ("umap", "tsne"),
    title: str = "",
    suffix: str = "",
    max_points: int | None = 2000,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    **projection_kwargs: object,
) -> dict[str, Path]:
    """One PNG per method, ``<out_dir>/<method><suffix>.png``; returns ``{method: path}``. Every method name is
    checked before the first projection (:func:`check_methods`)."""
    methods = check_methods(methods)
    feats = np.asarray(features.cpu() if isinstance(features, Tensor) else features, dtype=np.float32)
    labs = None if labels is None else np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    idx = subsample(len(feats), max_points, seed)
    feats = feats[idx]
    labs = None if labs is None else labs[idx]
    paths: dict[str, Path] = {}
    for method in methods:
        points = project_2d(feats, method, seed=seed, **projection_kwargs)  # type: ignore[arg-type]
        head = f"{NAMES[method]} of {len(feats)} validation embeddings"
        paths[method] = plot_projection(
            points,
            labs,
            f"{head}\n{title}" if title else head,
            Path(out_dir) / f"{method}{suffix}.png",
            method,
            class_names,
        )
    return paths
