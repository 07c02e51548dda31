"""Linear probe and clustering scores against scikit-learn and brute-force references."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.linear_model import LogisticRegression

from contrastlab.evaluation.callbacks import KNNMonitor
from contrastlab.evaluation.clustering import cluster_scores, clustering_metrics, kmeans_assign
from contrastlab.evaluation.knn import knn_accuracy
from contrastlab.evaluation.linear_probe import fit_logistic_regression, linear_probe


# --- linear probe ---------------------------------------------------------------------------------
@pytest.mark.parametrize("weight_decay", [1e-3, 1e-1])
def test_logistic_regression_matches_sklearn(weight_decay: float) -> None:
    """Same penalised objective as sklearn's multinomial LogisticRegression with C = 1 / (wd * N)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(150, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (150,), generator=g)
    x[y == 1] += 1.0
    x[y == 2, 0] -= 1.5
    w, b = fit_logistic_regression(x, y, 3, weight_decay, max_iter=2000, tolerance=1e-10)
    sk = LogisticRegression(C=1 / (weight_decay * len(y)), tol=1e-12, max_iter=20000).fit(x.numpy(), y.numpy())
    ours = torch.softmax(x @ w.T + b, 1).numpy()
    np.testing.assert_allclose(ours, sk.predict_proba(x.numpy()), atol=1e-5)
    # the softmax is shift-invariant over classes: compare centred weights
    np.testing.assert_allclose((w - w.mean(0)).numpy(), sk.coef_ - sk.coef_.mean(0), atol=1e-4)


def test_logistic_regression_float32_and_gradients_untouched() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(80, 4, generator=g, requires_grad=True)
    y = (x[:, 0] > 0).long()
    w, b = fit_logistic_regression(x, y, 2, 1e-2)
    assert w.dtype == torch.float32 and not w.requires_grad and x.grad is None
    assert float(((x @ w.T + b).argmax(1) == y).float().mean()) > 0.95


def test_linear_probe_protocol() -> None:
    x, y = make_blobs(n_samples=400, centers=4, n_features=8, cluster_std=2.0, random_state=0)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    y_tr = y[:300].clone()
    y_tr[:5] = -1  # unlabelled rows are left out
    out = linear_probe(x[:300], y_tr, x[300:], y[300:], weight_decays=(1e-4, 1e-2), seed=0)
    assert out["weight_decay"] in (1e-4, 1e-2)
    # reference: the same standardisation and the chosen strength, fitted by sklearn
    xtr, ytr = x[:300][y_tr >= 0].double(), y_tr[y_tr >= 0]
    mean, std = xtr.mean(0), xtr.std(0)
    n = len(ytr)
    sk = LogisticRegression(C=1 / (out["weight_decay"] * n), tol=1e-10, max_iter=10000)
    sk.fit(((xtr - mean) / std).numpy(), ytr.numpy())
    ref = float((sk.predict(((x[300:].double() - mean) / std).numpy()) == y[300:].numpy()).mean())
    assert out["top1"] == pytest.approx(ref, abs=1.5 / 100)  # at most one test point may flip (float32)
    # a single strength skips the held-out search
    single = linear_probe(x[:300], y[:300], x[300:], y[300:], weight_decays=(1e-3,))
    assert "holdout_top1" not in single and single["weight_decay"] == 1e-3


def test_linear_probe_scores_the_test_split_not_its_training_split() -> None:
    """Train features are separable; a third of the test labels are reassigned at random, so the probe's test
    top-1 is far below its training top-1. The reported top-1 must be sklearn's on the test split."""
    x, y = make_blobs(n_samples=600, centers=3, n_features=6, cluster_std=1.0, random_state=3)
    x, y = torch.tensor(x, dtype=torch.float64), torch.tensor(y)
    g = torch.Generator().manual_seed(0)
    y_test = y[400:].clone()
    noisy = torch.rand(len(y_test), generator=g) < 1 / 3
    y_test[noisy] = torch.randint(0, 3, (int(noisy.sum()),), generator=g)
    out = linear_probe(x[:400], y[:400], x[400:], y_test, weight_decays=(1e-3,))
    mean, std = x[:400].mean(0), x[:400].std(0)
    sk = LogisticRegression(C=1 / (1e-3 * 400), tol=1e-10, max_iter=10000)
    sk.fit(((x[:400] - mean) / std).numpy(), y[:400].numpy())
    test_ref = float((sk.predict(((x[400:] - mean) / std).numpy()) == y_test.numpy()).mean())
    train_ref = float((sk.predict(((x[:400] - mean) / std).numpy()) == y[:400].numpy()).mean())
    assert train_ref - test_ref > 0.15  # the two splits really differ: a probe scored on its training split fails
    assert out["top1"] == pytest.approx(test_ref, abs=1 / 200)


def test_linear_probe_on_random_features_is_near_chance() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(600, 16, generator=g), torch.randint(0, 5, (600,), generator=g)
    assert linear_probe(x[:400], y[:400], x[400:], y[400:])["top1"] < 0.35


# --- clustering -----------------------------------------------------------------------------------
def ref_nmi(a: list[int], b: list[int]) -> float:
    """Mutual information over the arithmetic mean of the entropies, from counts (loops)."""
    n = len(a)
    ca, cb, cab = Counter(a), Counter(b), Counter(zip(a, b, strict=True))
    mi = sum(c / n * math.log((c / n) / ((ca[i] / n) * (cb[j] / n))) for (i, j), c in cab.items())
    ha = -sum(c / n * math.log(c / n) for c in ca.values())
    hb = -sum(c / n * math.log(c / n) for c in cb.values())
    return 1.0 if ha == hb == 0 else mi / ((ha + hb) / 2)


def ref_ari(a: list[int], b: list[int]) -> float:
    """Adjusted Rand index by counting agreeing pairs (loops over all pairs)."""
    n = len(a)
    same_a = same_b = same_both = 0
    for i in range(n):
        for j in range(i + 1, n):
            sa, sb = a[i] == a[j], b[i] == b[j]
            same_a += sa
            same_b += sb
            same_both += sa and sb
    pairs = n * (n - 1) / 2
    expected = same_a * same_b / pairs
    max_index = (same_a + same_b) / 2
    return 1.0 if max_index == expected else (same_both - expected) / (max_index - expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cluster_scores_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 60)
    pred = np.where(rng.random(60) < 0.6, labels, rng.integers(0, 5, 60))
    out = cluster_scores(pred, labels)
    assert out["nmi"] == pytest.approx(ref_nmi(pred.tolist(), labels.tolist()), abs=1e-10)
    assert out["ari"] == pytest.approx(ref_ari(pred.tolist(), labels.tolist()), abs=1e-10)


def test_cluster_scores_invariant_to_renaming_and_perfect() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    renamed = np.array([5, 5, 3, 3, 9, 9, 9])
    assert cluster_scores(renamed, labels) == {"nmi": pytest.approx(1.0), "ari": pytest.approx(1.0)}


def test_kmeans_recovers_separated_clusters_and_collapse_scores_zero() -> None:
    x, y = make_blobs(n_samples=120, centers=[[5, 0, 0], [0, 5, 0], [0, 0, 5]], cluster_std=0.3, random_state=0)
    x, y = torch.tensor(x), torch.tensor(y)
    y[:3] = -1  # unlabelled rows are left out
    assert clustering_metrics(x, y) == {"nmi": pytest.approx(1.0), "ari": pytest.approx(1.0)}
    # collapsed embedding: k-means cannot split identical points -> one cluster -> NMI = ARI = 0
    same = kmeans_assign(torch.ones(30, 4), 1)
    assert cluster_scores(same, np.arange(30) % 3) == {"nmi": pytest.approx(0.0), "ari": pytest.approx(0.0)}
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans_assign(torch.ones(3, 2), 5)


# --- kNN: the evaluator reuses the monitor's code ---------------------------------------------------
def test_knn_monitor_score_is_knn_accuracy() -> None:
    g = torch.Generator().manual_seed(0)
    tr, va = torch.randn(50, 8, generator=g), torch.randn(20, 8, generator=g)
    ytr, yva = torch.randint(0, 3, (50,), generator=g), torch.randint(0, 3, (20,), generator=g)
    acc = knn_accuracy(tr, ytr, va, yva, k=7, temperature=0.1, top=(1, 5))
    assert KNNMonitor(k=7, temperature=0.1).score(tr, ytr, va, yva) == {
        "val/knn_top1": acc[1],
        "val/knn_top5": acc[5],
    }


def test_linear_probe_held_out_search_matches_sklearn() -> None:
    """Overlapping classes (held-out accuracy well below 1): the chosen strength and its held-out top-1 equal
    scikit-learn's LogisticRegression fitted on the same stratified split for each candidate."""
    from sklearn.model_selection import train_test_split

    x, y = make_blobs(n_samples=500, centers=3, n_features=6, cluster_std=5.0, random_state=2)
    x, y = torch.tensor(x, dtype=torch.float64), torch.tensor(y)
    wds = (1e-3, 1.0)
    out = linear_probe(x[:400], y[:400], x[400:], y[400:], weight_decays=wds, holdout_fraction=0.25, seed=3)
    xtr, ytr = x[:400], y[:400]
    xtr = ((xtr - xtr.mean(0)) / xtr.std(0)).numpy()
    fit_idx, hold_idx = train_test_split(range(400), test_size=0.25, random_state=3, stratify=ytr.numpy())
    holdout = {}
    for wd in wds:
        sk = LogisticRegression(C=1 / (wd * len(fit_idx)), tol=1e-10, max_iter=10000)
        sk.fit(xtr[fit_idx], ytr.numpy()[fit_idx])
        holdout[wd] = float((sk.predict(xtr[hold_idx]) == ytr.numpy()[hold_idx]).mean())
    best = max(sorted(wds, reverse=True), key=lambda wd: holdout[wd])  # ties: the stronger penalty
    assert holdout[best] < 0.95 and holdout[1e-3] != holdout[1.0]  # the search has something to choose
    assert out["weight_decay"] == best
    assert out["holdout_top1"] == pytest.approx(holdout[best], abs=1.5 / 100)  # one point may flip
