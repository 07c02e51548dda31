"""Embedding-health metrics against numpy / python-loop references, including a collapsed embedding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contrastlab.evaluation.health import (
    alignment,
    dimension_std,
    effective_rank,
    embedding_health,
    uniformity,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ref_alignment(z1: np.ndarray, z2: np.ndarray, alpha: float) -> float:
    a, b = _unit(z1), _unit(z2)
    return sum(
        math.sqrt(sum((a[i, d] - b[i, d]) ** 2 for d in range(a.shape[1]))) ** alpha for i in range(len(a))
    ) / len(a)


def ref_uniformity(z: np.ndarray, t: float) -> float:
    u = _unit(z)
    vals = [
        math.exp(-t * sum((u[i, d] - u[j, d]) ** 2 for d in range(u.shape[1])))
        for i in range(len(u))
        for j in range(i + 1, len(u))
    ]
    return math.log(sum(vals) / len(vals))


def ref_effective_rank(z: np.ndarray) -> float:
    s = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    p = [v / s.sum() for v in s]
    return math.exp(-sum(q * math.log(q) for q in p if q > 0))


def ref_dim_std(z: np.ndarray) -> float:
    u = _unit(z)
    stds = []
    for d in range(u.shape[1]):
        col = u[:, d]
        m = sum(col) / len(col)
        stds.append(math.sqrt(sum((c - m) ** 2 for c in col) / (len(col) - 1)))
    return sum(stds) / len(stds)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_metrics_match_loop_references(dtype: torch.dtype, tol: float) -> None:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(17, 5, generator=g, dtype=torch.float64)
    z2 = z1 + 0.3 * torch.randn(17, 5, generator=g, dtype=torch.float64)
    a, b = z1.numpy(), z2.numpy()
    for alpha in (1.0, 2.0):
        assert alignment(z1.to(dtype), z2.to(dtype), alpha) == pytest.approx(ref_alignment(a, b, alpha), abs=tol)
    for t in (0.5, 2.0):
        assert uniformity(z1.to(dtype), t) == pytest.approx(ref_uniformity(a, t), abs=tol)
    assert effective_rank(z1.to(dtype)) == pytest.approx(ref_effective_rank(z1.to(dtype).numpy()), abs=tol * 10)
    assert dimension_std(z1.to(dtype)) == pytest.approx(ref_dim_std(a), abs=tol)


def test_metrics_do_not_track_gradients() -> None:
    z = torch.randn(8, 4, requires_grad=True)
    values = embedding_health(z, (z, z * 2))
    assert all(isinstance(v, float) for v in values.values())
    assert z.grad is None


def test_collapsed_embedding() -> None:
    """All rows identical: effective rank 1, uniformity 0 (its maximum), std 0, alignment 0."""
    z = torch.tensor([[0.3, -1.2, 2.0, 0.5]], dtype=torch.float64).repeat(32, 1)
    assert effective_rank(z) == pytest.approx(1.0, abs=1e-9)
    assert uniformity(z) == pytest.approx(0.0, abs=1e-12)
    assert dimension_std(z) == pytest.approx(0.0, abs=1e-12)
    assert alignment(z, z) == pytest.approx(0.0, abs=1e-12)
    # any spread lowers uniformity below the collapsed value and raises the rank
    spread = z + 0.1 * torch.randn(32, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert uniformity(spread) < 0.0
    assert effective_rank(spread) > 1.0


def test_effective_rank_closed_forms() -> None:
    # k orthogonal directions of equal strength -> exactly k; all-zero -> 0 by convention
    eye = torch.eye(6, dtype=torch.float64)
    assert effective_rank(eye[:, :]) == pytest.approx(6.0, abs=1e-9)
    assert effective_rank(torch.cat([eye[:3], eye[:3]])) == pytest.approx(3.0, abs=1e-9)
    assert effective_rank(torch.zeros(5, 3)) == 0.0
    # ties among singular values: two equal, one double -> exp(H(1/4, 1/4, 1/2))
    z = torch.diag(torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64))
    assert effective_rank(z) == pytest.approx(math.exp(-(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))), abs=1e-9)


def test_uniformity_of_antipodal_points_and_bounds() -> None:
    # two antipodal points: squared distance 4 -> log(exp(-8)) = -8 for t = 2
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    assert uniformity(z, t=2.0) == pytest.approx(-8.0)
    x = torch.randn(200, 64, generator=torch.Generator().manual_seed(0))
    u = uniformity(x)
    assert -4.0 < u < 0.0  # spread points on S^63: about -t * E||x - y||^2 = -4


def test_dim_std_of_isotropic_embeddings() -> None:
    x = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert dimension_std(x) == pytest.approx(1 / math.sqrt(16), rel=0.03)


def test_embedding_health_subsamples_uniformity_only() -> None:
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full = embedding_health(x, max_samples=None)
    sub = embedding_health(x, max_samples=20, seed=3)
    assert "alignment" not in full
    assert sub["effective_rank"] == full["effective_rank"] and sub["dim_std"] == full["dim_std"]
    idx = torch.randperm(50, generator=torch.Generator().manual_seed(3))[:20]
    assert sub["uniformity"] == pytest.approx(uniformity(x[idx]))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="paired"):
        alignment(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        uniformity(torch.zeros(1, 2))


@pytest.mark.parametrize("batched", [True, False])
def test_augmented_pairs_are_distinct_reproducible_and_leave_the_rng_alone(batched: bool) -> None:
    from contrastlab.data import BatchSimCLRAugment, DigitsDataModule, SimCLRAugment
    from contrastlab.evaluation.pairs import augmented_pairs

    aug = BatchSimCLRAugment(image_size=16, hflip_p=0.0) if batched else SimCLRAugment(image_size=16, hflip_p=0.0)
    dm = DigitsDataModule(augment=aug, limit_samples=20)
    state = torch.get_rng_state()
    a, b = augmented_pairs(dm, n=6, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    c, d = augmented_pairs(dm, n=6, seed=1)
    assert a.shape == b.shape == (6, 1, 16, 16)
    assert torch.equal(a, c) and torch.equal(b, d)
    assert not torch.equal(a, b)  # two different views of each image
    assert augmented_pairs(DigitsDataModule(augment=None), n=6) is None


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_collapse_guard_spread_is_the_mean_dim_std_and_warns_with_the_one_collapse_warning(
    dtype: torch.dtype, tol: float
) -> None:
    """The triplet objective's guard and the collapse monitor share ``dimension_std`` and ``CollapseWarning``."""
    from contrastlab.evaluation import collapse
    from contrastlab.objectives import collapse_guard

    assert collapse.CollapseWarning is collapse_guard.CollapseWarning
    g = torch.Generator().manual_seed(0)
    zs = [torch.randn(9, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    guard = collapse_guard.CollapseGuard(threshold=None)
    for z in zs:
        guard.update(z.to(dtype).clone().requires_grad_())  # a training batch: the guard needs no grad
    guard.update(zs[0][:1])  # one row has no spread: skipped
    assert guard.epoch_end() == pytest.approx(sum(ref_dim_std(z.to(dtype).numpy()) for z in zs) / 3, abs=tol)
    guard = collapse_guard.CollapseGuard(threshold=0.5)
    guard.update(zs[0].to(dtype))
    with pytest.warns(collapse.CollapseWarning, match="objective.collapse_threshold=0.5"):
        guard.epoch_end()
