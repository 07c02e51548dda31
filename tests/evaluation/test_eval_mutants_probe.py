"""Pins left open by mutation testing of the linear probe, kNN, clustering, embedding-health and embedding-loop
modules: default arguments, the held-out search (split, tie rule, labels), dtype and device handling, each against
a naive reference (loops, scikit-learn) or an exact expected value on small hand-made data."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.model_selection import train_test_split
from torch import Tensor

from contrastlab.evaluation import knn as knn_module
from contrastlab.evaluation.clustering import clustering_metrics, kmeans_assign
from contrastlab.evaluation.embed import embed_loader
from contrastlab.evaluation.health import alignment, dimension_std, embedding_health, uniformity
from contrastlab.evaluation.knn import knn_accuracy, knn_scores, topk_accuracy
from contrastlab.evaluation.linear_probe import fit_logistic_regression, linear_probe

DEFAULT_WDS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


# --- linear probe: the fit ------------------------------------------------------------------------
def overlapping_classes(n: int, dtype: torch.dtype, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Three imbalanced, overlapping classes in 4-D (a finite optimum for any weight decay)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.multinomial(torch.tensor([0.6, 0.3, 0.1]), n, replacement=True, generator=g)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    x[:, 0] += 1.2 * y
    x[:, 1] -= 0.8 * (y == 2)
    return x.to(dtype), y


def sklearn_probabilities(x: Tensor, y: Tensor, weight_decay: float) -> np.ndarray:
    """Class probabilities of scikit-learn's LogisticRegression at the same optimum (C = 1 / (wd * N))."""
    sk = LogisticRegression(C=1 / (weight_decay * len(y)), tol=1e-12, max_iter=100000)
    sk.fit(x.double().numpy(), y.numpy())
    return sk.predict_proba(x.double().numpy())


def test_fit_default_weight_decay_is_1e_4() -> None:
    """Without ``weight_decay`` the fit reaches scikit-learn's optimum for weight decay 1e-4."""
    x, y = overlapping_classes(120, torch.float64)
    w, b = fit_logistic_regression(x, y, 3, tolerance=1e-10)
    ours = torch.softmax(x @ w.T + b, 1).numpy()
    np.testing.assert_allclose(ours, sklearn_probabilities(x, y, 1e-4), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fit_weights_and_bias_keep_the_input_dtype(dtype: torch.dtype) -> None:
    """Weights and bias are in the features' dtype (a float64 fit keeps a float64 bias)."""
    x, y = overlapping_classes(60, dtype)
    double = dtype == torch.float64
    w, b = fit_logistic_regression(x, y, 3, 1e-2, tolerance=1e-10 if double else 1e-6)
    assert w.dtype == dtype and b.dtype == dtype
    ours = torch.softmax(x.double() @ w.double().T + b.double(), 1).numpy()
    np.testing.assert_allclose(ours, sklearn_probabilities(x, y, 1e-2), atol=1e-6 if double else 1e-3)


def test_fit_parameters_live_on_the_features_device_not_the_default_device() -> None:
    """Weights and bias are created on ``x``'s device: with another default device (here ``meta``, as
    ``torch.set_default_device("cuda")`` would) the fit on CPU features is unchanged."""
    x, y = overlapping_classes(50, torch.float64)
    ref_w, ref_b = fit_logistic_regression(x, y, 3, 1e-2)
    with torch.device("meta"):
        w, b = fit_logistic_regression(x, y, 3, 1e-2)
    assert w.device.type == "cpu" and b.device.type == "cpu"
    assert torch.equal(w, ref_w) and torch.equal(b, ref_b)


def initial_gradient_max(x: Tensor, y: Tensor, num_classes: int) -> float:
    """Largest |gradient| of the penalised mean cross-entropy at W = 0, b = 0 (softmax uniform), by loops."""
    n, d = x.shape
    grads = []
    for c in range(num_classes):
        residual = [1 / num_classes - (1.0 if int(y[i]) == c else 0.0) for i in range(n)]
        grads.append(abs(sum(residual) / n))  # bias
        grads.extend(abs(sum(residual[i] * float(x[i, j]) for i in range(n)) / n) for j in range(d))
    return max(grads)


def test_fit_stops_at_once_when_the_initial_gradient_is_within_tolerance() -> None:
    """``tolerance`` is L-BFGS's gradient tolerance: above the largest initial gradient entry nothing moves
    (W and b stay exactly zero); below it the fit moves."""
    x, y = overlapping_classes(40, torch.float64)
    g0 = initial_gradient_max(x, y, 3)
    w, b = fit_logistic_regression(x, y, 3, 1e-2, tolerance=1.5 * g0)
    assert torch.equal(w, torch.zeros_like(w)) and torch.equal(b, torch.zeros_like(b))
    w, _ = fit_logistic_regression(x, y, 3, 1e-2, tolerance=0.5 * g0)
    assert w.abs().max() > 0


def test_fit_converges_on_badly_scaled_features() -> None:
    """Unstandardised features of very different scales (an ill-conditioned problem that needs the line search and
    more than a few L-BFGS iterations) still reach scikit-learn's optimum."""
    x, y = overlapping_classes(120, torch.float64, seed=1)
    x = x * torch.tensor([30.0, 0.05, 4.0, 1.0], dtype=torch.float64) + torch.tensor([5.0, 0.0, -3.0, 0.0])
    w, b = fit_logistic_regression(x, y, 3, 1e-3, tolerance=1e-10)
    ours = torch.softmax(x @ w.T + b, 1).numpy()
    np.testing.assert_allclose(ours, sklearn_probabilities(x, y, 1e-3), atol=1e-5)


def test_fit_default_tolerance_reaches_the_optimum() -> None:
    """The default tolerance (gradient 1e-6, loss change 1e-9) gives scikit-learn's probabilities to 1e-4 (here
    about 1e-5; a loss-change tolerance of 1e-6 stops about 5e-3 away)."""
    x, y = overlapping_classes(200, torch.float64, seed=2)
    x = x * torch.tensor([3.0, 0.3, 1.0, 2.0], dtype=torch.float64)
    w, b = fit_logistic_regression(x, y, 3, 1e-2)
    ours = torch.softmax(x @ w.T + b, 1).numpy()
    np.testing.assert_allclose(ours, sklearn_probabilities(x, y, 1e-2), atol=1e-4)


class RecordingLBFGS(torch.optim.LBFGS):
    """torch's L-BFGS, remembering every instance (to read the settings it ran with)."""

    made: list[torch.optim.LBFGS] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        RecordingLBFGS.made.append(self)


@pytest.fixture
def lbfgs_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[torch.optim.LBFGS]]:
    """Every L-BFGS optimiser created during the test, in order."""
    RecordingLBFGS.made = []
    monkeypatch.setattr(torch.optim, "LBFGS", RecordingLBFGS)
    yield RecordingLBFGS.made


def lbfgs_settings(max_iter: int, tolerance: float) -> dict[str, Any]:
    """The documented probe optimiser: full-batch L-BFGS, unit step, strong-Wolfe line search, history 20."""
    return {
        "lr": 1.0,
        "max_iter": max_iter,
        "max_eval": max_iter * 5 // 4,
        "tolerance_grad": tolerance,
        "tolerance_change": tolerance * 1e-3,
        "history_size": 20,
        "line_search_fn": "strong_wolfe",
    }


def test_fit_and_probe_optimiser_settings(lbfgs_runs: list[torch.optim.LBFGS]) -> None:
    """The settings of every L-BFGS run: they fix the reported numbers whenever a fit stops at ``max_iter``
    (default 1000, passed on by the probe to every fit) rather than at the tolerance."""
    x, y = overlapping_classes(60, torch.float64)
    fit_logistic_regression(x, y, 3, 1e-2)
    fit_logistic_regression(x, y, 3, 1e-2, max_iter=7, tolerance=1e-4)
    assert [{k: o.defaults[k] for k in lbfgs_settings(1, 1)} for o in lbfgs_runs] == [
        lbfgs_settings(1000, 1e-6),
        lbfgs_settings(7, 1e-4),
    ]
    lbfgs_runs.clear()
    linear_probe(x[:40], y[:40], x[40:], y[40:], weight_decays=(1e-3, 1e-1))
    linear_probe(x[:40], y[:40], x[40:], y[40:], weight_decays=(1e-3, 1e-1), max_iter=5)
    assert [o.defaults["max_iter"] for o in lbfgs_runs] == [1000] * 3 + [5] * 3


# --- linear probe: the protocol -------------------------------------------------------------------
def reference_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    weight_decays: tuple[float, ...] = DEFAULT_WDS,
    holdout_fraction: float = 0.1,
    seed: int = 0,
    standardize: bool = True,
    max_iter: int = 1000,
) -> dict[str, float]:
    """The documented protocol written out: labelled rows only, float32 for integer / half features, per-dimension
    standardisation with the training split's statistics, a stratified held-out search (ties: the strongest
    penalty), a refit on the whole training split; accuracies counted by loops."""
    keep_tr = [i for i in range(len(train_y)) if int(train_y[i]) >= 0]
    keep_te = [i for i in range(len(test_y)) if int(test_y[i]) >= 0]
    xtr, ytr, xte, yte = train_x[keep_tr], train_y[keep_tr].long(), test_x[keep_te], test_y[keep_te].long()
    if xtr.dtype not in (torch.float32, torch.float64):
        xtr, xte = xtr.float(), xte.float()
    if standardize:
        mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-8)
        xtr, xte = (xtr - mean) / std, (xte - mean) / std
    num_classes = max(int(v) for v in list(ytr) + list(yte)) + 1

    def accuracy(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> float:
        hits = 0
        for i in range(len(y)):
            logits = [float(x[i] @ w[c] + b[c]) for c in range(num_classes)]
            hits += logits.index(max(logits)) == int(y[i])
        return hits / len(y)

    out: dict[str, float] = {}
    best_wd = max(weight_decays)
    if len(weight_decays) > 1:
        fit_idx, hold_idx = train_test_split(
            np.arange(len(ytr)), test_size=holdout_fraction, random_state=seed, stratify=ytr.numpy()
        )
        fit_idx, hold_idx = torch.as_tensor(fit_idx), torch.as_tensor(hold_idx)
        scores = {}
        for wd in weight_decays:
            w, b = fit_logistic_regression(xtr[fit_idx], ytr[fit_idx], num_classes, wd, max_iter)
            scores[wd] = accuracy(w, b, xtr[hold_idx], ytr[hold_idx])
        best_acc = max(scores.values())
        best_wd = max(wd for wd in weight_decays if scores[wd] == best_acc)
        out["holdout_top1"] = best_acc
    w, b = fit_logistic_regression(xtr, ytr, num_classes, best_wd, max_iter)
    return {"top1": accuracy(w, b, xte, yte), "weight_decay": float(best_wd), **out}


def probe_data(dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Imbalanced overlapping classes whose informative dimension has a tiny scale and whose dimensions have
    different offsets (standardisation matters), with unlabelled rows in both splits and label-0 test rows."""
    x, y = overlapping_classes(260, torch.float64, seed=5)
    x = x * torch.tensor([1e-3, 1.0, 2.0, 0.5], dtype=torch.float64) + torch.tensor([0.0, 50.0, -4.0, 1.0])
    y = y.clone()
    y[[3, 17, 200]] = -1
    x = x.to(dtype)
    return x[:200], y[:200], x[200:], y[200:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_probe_defaults_follow_the_protocol(dtype: torch.dtype) -> None:
    """With every default (weight decays, holdout 0.1, seed 0, standardisation, 1000 iterations) the probe's
    top-1, chosen weight decay and held-out top-1 equal the protocol written out."""
    xtr, ytr, xte, yte = probe_data(dtype)
    assert (yte == 0).any() and (yte < 0).any() and (ytr < 0).any()
    out = linear_probe(xtr, ytr, xte, yte)
    assert out == reference_probe(xtr, ytr, xte, yte)
    assert 0 < out["holdout_top1"] < 1  # the held-out search has something to report


def test_probe_options_follow_the_protocol() -> None:
    """Other seed, holdout fraction, no standardisation and a short iteration budget: still the protocol."""
    xtr, ytr, xte, yte = probe_data(torch.float64)
    kwargs: dict[str, Any] = {"weight_decays": (1e-4, 1e-2, 1.0), "holdout_fraction": 0.3, "seed": 4, "max_iter": 3}
    assert linear_probe(xtr, ytr, xte, yte, **kwargs) == reference_probe(xtr, ytr, xte, yte, **kwargs)
    kwargs = {"standardize": False, "max_iter": 40}
    assert linear_probe(xtr, ytr, xte, yte, **kwargs) == reference_probe(xtr, ytr, xte, yte, **kwargs)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float16, torch.bfloat16])
def test_probe_fits_integer_and_half_features_in_float32(dtype: torch.dtype) -> None:
    """Integer and half-precision features are probed in float32: the result equals the probe of the same values
    given as float32."""
    xtr, ytr, xte, yte = probe_data(torch.float64)
    xtr, xte = (xtr * torch.tensor([1e3, 1.0, 1.0, 1.0], dtype=torch.float64)), xte * 1e3  # integer-friendly scales
    xtr, xte = (xtr * 4).round().to(dtype), (xte * 4).round().to(dtype)
    out = linear_probe(xtr, ytr, xte, yte, weight_decays=(1e-3, 1e-1))
    assert out == linear_probe(xtr.float(), ytr, xte.float(), yte, weight_decays=(1e-3, 1e-1))
    assert out == reference_probe(xtr, ytr, xte, yte, weight_decays=(1e-3, 1e-1))


def test_probe_reports_a_held_out_top1_of_zero() -> None:
    """Held-out points on the wrong side of the boundary: every strength scores 0 on them; the probe still reports
    ``holdout_top1 == 0.0`` and, as for any tie, keeps the strongest penalty."""
    y = torch.arange(20) % 2
    _, hold_idx = train_test_split(np.arange(20), test_size=0.1, random_state=0, stratify=y.numpy())
    x = torch.where(y == 1, 2.0, -2.0) + torch.linspace(-0.5, 0.5, 20)
    x[hold_idx] = -x[hold_idx]  # flipped: the fit part says the opposite
    out = linear_probe(x[:, None], y, x[:, None], y)
    assert out["holdout_top1"] == 0.0 and out["weight_decay"] == max(DEFAULT_WDS)


def test_probe_ties_keep_the_strongest_penalty() -> None:
    """Well-separated classes: every strength scores 1 on the held-out part; the strongest penalty is chosen
    whatever the order of ``weight_decays``."""
    x, y = overlapping_classes(100, torch.float64, seed=3)
    x[:, 0] = 10.0 * y + 0.1 * x[:, 0]
    for wds in ((1e-4, 1e-3, 1e-1), (1e-1, 1e-4, 1e-3)):
        out = linear_probe(x[:80], y[:80], x[80:], y[80:], weight_decays=wds)
        assert out["holdout_top1"] == 1.0 and out["weight_decay"] == 1e-1


def test_probe_has_one_class_per_label_up_to_the_largest_of_either_split(lbfgs_runs: list[torch.optim.LBFGS]) -> None:
    """The probe's weight matrix has ``max label + 1`` rows, the largest label taken over both splits (a test class
    absent from training still gets its row; no spare row)."""
    x, y = overlapping_classes(90, torch.float64, seed=4)
    yte = y[60:].clone()
    yte[0] = 3  # a class the training split lacks
    linear_probe(x[:60], y[:60], x[60:], yte, weight_decays=(1e-2,))
    linear_probe(x[:60], y[:60], x[60:], y[60:], weight_decays=(1e-2,))
    assert [tuple(o.param_groups[0]["params"][0].shape) for o in lbfgs_runs] == [(4, 4), (3, 4)]


def test_probe_keeps_float64_features_in_float64() -> None:
    """float64 features are probed as given: class information finer than float32's resolution (offsets of 1e8,
    where float32 steps by 8) is still used, as in the protocol run in float64."""
    x, y = overlapping_classes(150, torch.float64, seed=6)
    x[:, 0] = 1e8 + 2.0 * y.double() + 0.3 * x[:, 0]
    out = linear_probe(x[:100], y[:100], x[100:], y[100:], weight_decays=(1e-3, 1e-1))
    assert out == reference_probe(x[:100], y[:100], x[100:], y[100:], weight_decays=(1e-3, 1e-1))
    assert out["top1"] > 0.9  # float32 would have lost the informative dimension


# --- clustering -----------------------------------------------------------------------------------
def cluster_data() -> tuple[np.ndarray, np.ndarray]:
    """60 points in 3-D of very different norms and 6 random labels: k-means with 6 clusters has many local optima
    here (the result depends on the seed, the number of restarts and the normalisation)."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(60, 3)) * rng.uniform(0.2, 3.0, size=(60, 1))
    return x, rng.integers(0, 6, 60)


def sklearn_kmeans(x: np.ndarray, k: int, n_init: int = 10, seed: int = 0, normalize: bool = True) -> np.ndarray:
    """scikit-learn's k-means on the rows of ``x`` (float64), L2-normalised first when ``normalize``."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True) if normalize else x
    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kmeans_assign_defaults_are_ten_restarts_seed_0_on_normalised_rows(dtype: torch.dtype) -> None:
    """The default assignment is scikit-learn's KMeans(n_init=10, random_state=0) on the L2-normalised rows,
    label for label; each of those settings changes the assignment on this data."""
    x, _ = cluster_data()
    x64 = torch.tensor(x).to(dtype).double().numpy()
    ours = kmeans_assign(torch.tensor(x).to(dtype), 6)
    np.testing.assert_array_equal(ours, sklearn_kmeans(x64, 6))
    for other in ({"n_init": 11}, {"n_init": 1}, {"seed": 1}, {"normalize": False}):
        assert not np.array_equal(ours, sklearn_kmeans(x64, 6, **other)), other


def test_kmeans_assign_options() -> None:
    """Explicit restarts, seed and ``normalize=False`` (k-means on the raw rows) reach scikit-learn's KMeans."""
    x, _ = cluster_data()
    np.testing.assert_array_equal(kmeans_assign(torch.tensor(x), 6, n_init=3, seed=5), sklearn_kmeans(x, 6, 3, 5))
    np.testing.assert_array_equal(
        kmeans_assign(torch.tensor(x), 6, normalize=False), sklearn_kmeans(x, 6, 10, 0, False)
    )


def test_kmeans_assign_accepts_1_to_n_clusters_and_names_the_range_otherwise() -> None:
    """``n_clusters`` may be anything from 1 to the number of rows (not of dimensions); outside, the error names
    the valid range."""
    x = torch.tensor(cluster_data()[0][:10, :2])  # 10 rows, 2 dimensions
    assert sorted(kmeans_assign(x, 10).tolist()) == list(range(10))  # every row its own cluster
    assert len(set(kmeans_assign(x, 3).tolist())) == 3
    with pytest.raises(ValueError, match=r"^n_clusters must be in \[1, 10\], got 11$"):
        kmeans_assign(x, 11)
    with pytest.raises(ValueError, match=r"^n_clusters must be in \[1, 10\], got 0$"):
        kmeans_assign(x, 0)
    with pytest.raises(ValueError, match=r"^n_clusters must be in \[1, 3\], got 5$"):
        kmeans_assign(torch.ones(3, 8), 5)  # more dimensions than rows


def reference_clustering(x: np.ndarray, y: np.ndarray, n_init: int = 10, seed: int = 0) -> dict[str, float]:
    """NMI and ARI (scikit-learn) of scikit-learn's k-means on the labelled rows, k = their distinct labels."""
    keep = y >= 0
    a = sklearn_kmeans(x[keep], len(set(y[keep].tolist())), n_init, seed)
    return {"nmi": normalized_mutual_info_score(y[keep], a), "ari": adjusted_rand_score(y[keep], a)}


def test_clustering_metrics_defaults_and_options_match_sklearn() -> None:
    """Labelled rows only (label 0 is a label, -1 is not), k = their distinct labels, 10 restarts and seed 0 by
    default, otherwise the given ones."""
    x, y = cluster_data()
    x = np.concatenate([x, cluster_data()[0][:3] + 0.5])
    y = np.concatenate([y, [-1, -1, -1]])  # unlabelled rows
    assert (y == 0).sum() > 5
    ours = clustering_metrics(torch.tensor(x), torch.tensor(y))
    assert ours == pytest.approx(reference_clustering(x, y), abs=1e-12)
    for other in ({"n_init": 11}, {"seed": 1}):
        assert reference_clustering(x, y, **other) != pytest.approx(ours, abs=1e-6)  # the defaults matter here
    ours = clustering_metrics(torch.tensor(x), torch.tensor(y), n_init=1, seed=3)
    assert ours == pytest.approx(reference_clustering(x, y, 1, 3), abs=1e-12)
    assert reference_clustering(x, y, 1, 0) != pytest.approx(ours, abs=1e-6)


# --- kNN ------------------------------------------------------------------------------------------
def reference_knn_scores(
    train: Tensor, train_y: Tensor, query: Tensor, k: int, temperature: float, num_classes: int
) -> list[list[float]]:
    """Class scores by loops: cosine similarities, the k most similar training rows, ``exp(s / T)`` votes."""

    def cos(a: Tensor, b: Tensor) -> float:
        dot = sum(float(u) * float(v) for u, v in zip(a, b, strict=True))
        return dot / math.sqrt(sum(float(u) ** 2 for u in a) * sum(float(v) ** 2 for v in b))

    out = []
    for q in query:
        sims = sorted(((cos(q, t), int(c)) for t, c in zip(train, train_y, strict=True)), reverse=True)[:k]
        scores = [0.0] * num_classes
        for s, c in sims:
            scores[c] += math.exp(s / temperature)
        out.append(scores)
    return out


def reference_topk(scores: list[list[float]], labels: Tensor, t: int) -> float:
    """Share of rows whose label is among their ``t`` highest scores."""
    hits = 0
    for row, label in zip(scores, labels.tolist(), strict=True):
        ranked = sorted(range(len(row)), key=lambda c: -row[c])
        hits += label in ranked[:t]
    return hits / len(scores)


def knn_data() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """80 training and 60 query rows of 4 overlapping classes in 6-D."""
    g = torch.Generator().manual_seed(7)
    means = torch.randn(4, 6, generator=g)
    ytr, yq = torch.randint(0, 4, (80,), generator=g), torch.randint(0, 4, (60,), generator=g)
    return (
        means[ytr] + 1.2 * torch.randn(80, 6, generator=g),
        ytr,
        means[yq] + 1.2 * torch.randn(60, 6, generator=g),
        yq,
    )


def at_angles(angles: list[float]) -> Tensor:
    """Unit vectors in the plane at the given angles (radians)."""
    return torch.tensor([[math.cos(a), math.sin(a)] for a in angles])


def test_knn_accuracy_defaults_are_k20_and_temperature_0_07() -> None:
    """Hand-made neighbourhoods. Query (1, 0): ten class-0 and ten class-1 rows at almost the same similarity
    (class 0 slightly closer), the 21st neighbour of class 1: class 0 wins with 20 neighbours, class 1 with 21.
    Query (0, 1): three class-2 rows very close, seventeen class-3 rows farther: class 2 wins at T = 0.07 only.
    The default top-1 is 1 (the loop reference agrees); k = 21 or a larger temperature loses one query."""
    train = torch.cat(
        [
            at_angles([0.300] * 10 + [0.301] * 10 + [0.310]),
            at_angles([math.pi / 2 - 0.0447] * 3 + [math.pi / 2 - 0.6435] * 17),
        ]
    )
    ytr = torch.tensor([0] * 10 + [1] * 11 + [2] * 3 + [3] * 17)
    query, yq = at_angles([0.0, math.pi / 2]), torch.tensor([0, 2])
    assert knn_accuracy(train, ytr, query, yq) == {1: 1.0}
    assert reference_topk(reference_knn_scores(train, ytr, query, 20, 0.07, 4), yq, 1) == 1.0
    for k, temperature in ((21, 0.07), (20, 1.07), (20, 4.0)):
        assert reference_topk(reference_knn_scores(train, ytr, query, k, temperature, 4), yq, 1) == 0.5


def test_knn_accuracy_has_a_class_per_label_of_either_set() -> None:
    """Scores have one column per class up to the largest label of the training and query sets: top-C accuracy is 1
    even for query classes the training set lacks (here only class 0 is in the training set)."""
    tr, _, q, yq = knn_data()
    ytr = torch.zeros(80, dtype=torch.long)
    yq = yq % 3
    assert set(yq.tolist()) == {0, 1, 2}
    assert knn_accuracy(tr, ytr, q, yq, k=5, top=(1, 3)) == {1: float((yq == 0).float().mean()), 3: 1.0}


def test_knn_accuracy_passes_on_the_bank_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """``bank_chunk_size`` (the memory bound) reaches the neighbour search; the accuracy is that of one block."""
    tr, ytr, q, yq = knn_data()
    whole = knn_accuracy(tr, ytr, q, yq, k=7, top=(1, 2))
    seen: list[int] = []
    search = knn_module.knn_neighbours

    def recording(*args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        seen.append(kwargs["bank_chunk_size"] if "bank_chunk_size" in kwargs else args[5])
        return search(*args, **kwargs)

    monkeypatch.setattr(knn_module, "knn_neighbours", recording)
    assert knn_accuracy(tr, ytr, q, yq, k=7, top=(1, 2), bank_chunk_size=9) == whole
    assert seen == [9]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_knn_scores_default_temperature_and_dtype(dtype: torch.dtype) -> None:
    """``sum_j exp(s_j / T) [y_j == c]`` with T = 0.07 by default (else the given T), in the similarities' dtype."""
    g = torch.Generator().manual_seed(8)
    sims = (torch.rand(5, 4, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    labels = torch.randint(0, 3, (5, 4), generator=g)
    for temperature, scores in ((0.07, knn_scores(sims, labels, 3)), (0.5, knn_scores(sims, labels, 3, 0.5))):
        ref = [[0.0] * 3 for _ in range(5)]
        for i in range(5):
            for j in range(4):
                ref[i][int(labels[i, j])] += math.exp(float(sims[i, j]) / temperature)
        assert scores.dtype == dtype
        torch.testing.assert_close(
            scores, torch.tensor(ref, dtype=dtype), rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=0
        )


def test_knn_scores_live_on_the_similarities_device_not_the_default_device() -> None:
    """The score matrix is created on the similarities' device, whatever the default device (``meta`` here)."""
    sims, labels = torch.rand(3, 4), torch.randint(0, 3, (3, 4))
    ref = knn_scores(sims, labels, 3)
    with torch.device("meta"):
        scores = knn_scores(sims, labels, 3)
    assert scores.device.type == "cpu" and torch.equal(scores, ref)


def test_topk_accuracy_matches_loops() -> None:
    """Top-t accuracy per t (partial accuracies, t up to beyond the number of classes) against loops."""
    g = torch.Generator().manual_seed(9)
    scores, labels = torch.rand(30, 5, generator=g), torch.randint(0, 5, (30,), generator=g)
    out = topk_accuracy(scores, labels, (1, 2, 4, 7))
    rows = scores.tolist()
    assert out == {t: pytest.approx(reference_topk(rows, labels, t), abs=1e-7) for t in (1, 2, 4, 7)}
    assert 0 < out[1] < out[2] < 1 and out[7] == 1.0


# --- embedding loop -------------------------------------------------------------------------------
def test_embed_loader_moves_tensors_and_mappings_of_tensors_to_the_device() -> None:
    """Tensors, and tensors inside a mapping (tokenised text), reach ``fn`` on ``device`` (``meta`` here); other
    mapping values are passed unchanged."""
    seen: list[Any] = []

    def fn(x: Any) -> Tensor:
        if isinstance(x, Tensor):
            seen.append(x.device.type)
            return torch.zeros(x.shape[0], 2)
        seen.append({k: v.device.type if isinstance(v, Tensor) else v for k, v in x.items()})
        return torch.zeros(x["ids"].shape[0], 2)

    text = [{"text": {"ids": torch.arange(3), "mask": torch.ones(3), "lang": "en"}, "label": torch.tensor([0, 1, 2])}]
    feats, labels = embed_loader(fn, text, device="meta", key="text")
    assert seen == [{"ids": "meta", "mask": "meta", "lang": "en"}]
    assert feats.shape == (3, 2) and feats.device.type == "cpu" and labels.tolist() == [0, 1, 2]
    seen.clear()
    embed_loader(fn, [{"image": torch.ones(2, 5), "label": torch.tensor([0, 1])}], device="meta")
    assert seen == ["meta"]


def test_embed_loader_fills_a_missing_field_with_a_long_tensor() -> None:
    """A field the batch lacks is ``fill`` repeated as a long tensor, whatever int it is given as (a bool is an
    int: True fills 1s, not a bool tensor)."""
    data = [{"image": torch.ones(2, 3)}, {"image": torch.ones(1, 3)}]
    for fill, want in ((-1, [-1, -1, -1]), (True, [1, 1, 1])):
        _, labels = embed_loader(lambda x: x, data, fill=fill)
        assert labels.dtype == torch.long and labels.tolist() == want


def test_embed_loader_with_a_bound_method_of_a_plain_object() -> None:
    """A bound method of an object that is not a module needs no mode switching: features as the plain loop."""

    class Tower:
        def embed(self, x: Tensor) -> Tensor:
            return 2 * x

    data = [{"image": torch.ones(2, 3), "label": torch.tensor([0, 1])}, {"image": torch.zeros(1, 3), "label": [5]}]
    feats, labels = embed_loader(Tower().embed, data)
    assert torch.equal(feats, torch.cat([2 * b["image"] for b in data])) and labels.tolist() == [0, 1, 5]


# --- embedding health -----------------------------------------------------------------------------
def loop_alignment(z1: Tensor, z2: Tensor, alpha: float) -> float:
    """Mean over rows of ``||z1_i/|z1_i| - z2_i/|z2_i|||^alpha`` by loops."""
    total = 0.0
    for a, b in zip(z1.tolist(), z2.tolist(), strict=True):
        na, nb = math.sqrt(sum(v * v for v in a)), math.sqrt(sum(v * v for v in b))
        total += math.sqrt(sum((u / na - v / nb) ** 2 for u, v in zip(a, b, strict=True))) ** alpha
    return total / len(z1)


def loop_uniformity(z: Tensor, t: float) -> float:
    """``log mean_{i<j} exp(-t ||n(z_i) - n(z_j)||^2)`` by loops."""
    rows = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in z.tolist()]
    vals = [
        math.exp(-t * sum((a - b) ** 2 for a, b in zip(rows[i], rows[j], strict=True)))
        for i in range(len(rows))
        for j in range(i + 1, len(rows))
    ]
    return math.log(sum(vals) / len(vals))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_embedding_health_alpha_t_and_pairs(dtype: torch.dtype) -> None:
    """Alignment of the two members of each pair with alpha = 2 and uniformity with t = 2 by default, else the
    given alpha and t."""
    g = torch.Generator().manual_seed(10)
    z1, z2 = torch.randn(12, 4, generator=g, dtype=dtype), torch.randn(12, 4, generator=g, dtype=dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    out = embedding_health(z1, pairs=(z1, z2))
    assert out["alignment"] == pytest.approx(loop_alignment(z1, z2, 2.0), rel=tol)
    assert out["uniformity"] == pytest.approx(loop_uniformity(z1, 2.0), rel=tol)
    out = embedding_health(z1, pairs=(z1, z2), alpha=1.0, t=0.5)
    assert out["alignment"] == pytest.approx(loop_alignment(z1, z2, 1.0), rel=tol)
    assert out["uniformity"] == pytest.approx(loop_uniformity(z1, 0.5), rel=tol)


def test_embedding_health_subsamples_uniformity_above_4096_rows_with_seed_0() -> None:
    """Default subsampling: above 4,096 rows uniformity is that of the first 4,096 rows of a seed-0 permutation."""
    z = torch.randn(4097, 3, generator=torch.Generator().manual_seed(11))
    out = embedding_health(z)
    sub = z[torch.randperm(4097, generator=torch.Generator().manual_seed(0))[:4096]]
    assert out["uniformity"] == uniformity(sub)
    other = z[torch.randperm(4097, generator=torch.Generator().manual_seed(1))[:4096]]
    assert uniformity(z) != out["uniformity"] != uniformity(other)  # the default size and seed matter here


def test_embedding_health_uses_every_row_at_exactly_max_samples() -> None:
    """At exactly ``max_samples`` rows there is no subsampling: uniformity is bit for bit that of ``z`` itself (here
    the same rows in another order would round differently in float32)."""
    z = torch.randn(50, 32, generator=torch.Generator().manual_seed(12))
    assert embedding_health(z, max_samples=50)["uniformity"] == uniformity(z)
    shuffled = z[torch.randperm(50, generator=torch.Generator().manual_seed(0))]
    assert uniformity(shuffled) != uniformity(z)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_embeddings_are_measured_in_float32(dtype: torch.dtype) -> None:
    """Half-precision embeddings are normalised and measured in float32: the same numbers as for their float32
    values."""
    g = torch.Generator().manual_seed(13)
    z1, z2 = torch.randn(20, 8, generator=g).to(dtype), torch.randn(20, 8, generator=g).to(dtype)
    assert alignment(z1, z2) == alignment(z1.float(), z2.float())
    assert uniformity(z1) == uniformity(z1.float())
    assert dimension_std(z1) == dimension_std(z1.float())
