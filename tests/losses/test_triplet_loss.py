"""The triplet losses against naive loops over triplets (values and gradients, float32 and float64)."""

from __future__ import annotations

import math

import pytest
import torch

from contrastlab.losses import (
    TripletMarginLoss,
    batch_all_triplet_margin,
    pairwise_distance,
    triplet_margin,
    triplet_margin_from_distances,
)


def naive_distance(x: torch.Tensor, y: torch.Tensor, distance: str) -> torch.Tensor:
    """One pair, element by element (torch scalars so autograd can follow)."""
    if distance == "cosine":
        dot = sum(x[i] * y[i] for i in range(len(x)))
        nx = torch.sqrt(sum(x[i] * x[i] for i in range(len(x))))
        ny = torch.sqrt(sum(y[i] * y[i] for i in range(len(y))))
        return 1 - dot / (nx * ny)
    return torch.sqrt(sum((x[i] - y[i]) ** 2 for i in range(len(x))))


def naive_triplet(a, p, n, margin, distance, soft):
    losses = []
    for t in range(a.shape[0]):
        z = naive_distance(a[t], p[t], distance) - naive_distance(a[t], n[t], distance)
        losses.append(torch.log1p(torch.exp(z)) if soft else torch.clamp(z + margin, min=0))
    return sum(losses) / len(losses)


def naive_batch_all(dist, pos, neg, margin):
    total, count = 0.0, 0
    n, m = dist.shape
    for a in range(n):
        for p in range(m):
            if not pos[a, p]:
                continue
            for q in range(m):
                if neg[a, q]:
                    val = dist[a, p] - dist[a, q] + margin
                    if val > 0:
                        total, count = total + val, count + 1
    return total / count if count else dist.sum() * 0


def leaf(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)


TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("soft", [False, True])
def test_triplet_margin_matches_naive_values_and_gradients(dtype, distance, soft):
    a, p, n = (leaf((7, 5), dtype, s) for s in (0, 1, 2))
    fast = triplet_margin(a, p, n, margin=0.3, distance=distance, soft_margin=soft)
    grads = torch.autograd.grad(fast, (a, p, n))
    a2, p2, n2 = (t.detach().double().requires_grad_(True) for t in (a, p, n))
    ref = naive_triplet(a2, p2, n2, 0.3, distance, soft)
    ref_grads = torch.autograd.grad(ref, (a2, p2, n2))
    assert fast.dtype == dtype
    torch.testing.assert_close(fast.double(), ref.detach(), **TOL[dtype])
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), r, **TOL[dtype])
    with torch.no_grad():  # and without gradients
        torch.testing.assert_close(triplet_margin(a, p, n, 0.3, distance, soft).double(), ref.detach(), **TOL[dtype])


def test_triplet_margin_hinge_is_zero_for_easy_triplets_and_linear_for_hard():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[1.0, 0.0]])  # d(a, p) = 0
    n = torch.tensor([[-1.0, 0.0]])  # cosine distance 2
    assert triplet_margin(a, p, n, margin=0.2).item() == 0.0
    assert triplet_margin(a, n, p, margin=0.2).item() == pytest.approx(2.2)
    assert triplet_margin(a, n, p, distance="euclidean", margin=0.5).item() == pytest.approx(2.5)


def test_no_triplets_gives_zero_loss_with_a_graph():
    z = torch.randn(4, 3, requires_grad=True)
    loss = triplet_margin(z[:0], z[:0], z[:0])
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_pairwise_distance_matches_naive(dtype, distance):
    x, y = leaf((6, 4), dtype, 3), leaf((5, 4), dtype, 4)
    fast = pairwise_distance(x, y, distance)
    ref = torch.stack(
        [torch.stack([naive_distance(x[i].double(), y[j].double(), distance) for j in range(5)]) for i in range(6)]
    )
    torch.testing.assert_close(
        fast.double(),
        ref,
        **({"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}),
    )
    g_fast = torch.autograd.grad(fast.sum(), x)[0]
    g_ref = torch.autograd.grad(ref.sum(), x)[0]
    torch.testing.assert_close(g_fast.double(), g_ref.double(), rtol=1e-4, atol=1e-5)


def test_euclidean_distance_of_identical_rows_is_zero_with_finite_gradient():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0]], requires_grad=True)
    d = pairwise_distance(x, x, "euclidean")
    assert torch.equal(d.detach(), torch.zeros(2, 2))
    d.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_from_distances_equals_rows(distance):
    z = leaf((9, 4), torch.float64, 5)
    a, p, n = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7]), torch.tensor([8, 0, 1, 2])
    rows = triplet_margin(z[a], z[p], z[n], 0.25, distance)
    mat = triplet_margin_from_distances(pairwise_distance(z, z, distance), a, p, n, 0.25)
    torch.testing.assert_close(mat, rows)
    torch.testing.assert_close(torch.autograd.grad(mat, z)[0], torch.autograd.grad(rows, z)[0])


def masks(labels: torch.Tensor, keys: torch.Tensor, self_rows: bool):
    pos = labels[:, None] == keys[None, :]
    if self_rows:
        pos.fill_diagonal_(False)
    return pos, labels[:, None] != keys[None, :]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("margin", [0.0, 0.2, 5.0])
def test_batch_all_matches_naive_triple_loop(dtype, margin):
    # labels 0,0,0,1,1,2,3: anchors 5 and 6 have no positive; cosine distances of random rows
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3])
    z = leaf((7, 3), dtype, 6)
    dist = pairwise_distance(z, z)
    pos, neg = masks(labels, labels, True)
    fast = batch_all_triplet_margin(dist, pos, neg, margin)
    z2 = z.detach().double().requires_grad_(True)
    ref = naive_batch_all(pairwise_distance(z2, z2), pos, neg, margin)
    torch.testing.assert_close(fast.double(), ref.detach(), **TOL[dtype])
    g, g_ref = torch.autograd.grad(fast, z)[0], torch.autograd.grad(ref, z2)[0]
    torch.testing.assert_close(g.double(), g_ref, **TOL[dtype])


def test_batch_all_rectangular_with_ties_and_no_active_triplet():
    dist = torch.tensor([[0.0, 0.5, 0.5, 0.7, 0.5], [0.3, 0.0, 0.9, 0.1, 0.1]], dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([[False, True, False, False, False], [True, False, False, False, False]])
    neg = torch.tensor([[False, False, True, True, True], [False, False, True, True, True]])
    fast = batch_all_triplet_margin(dist, pos, neg, 0.1)
    ref = naive_batch_all(dist, pos, neg, 0.1)
    torch.testing.assert_close(fast, ref)
    easy = torch.tensor([[0.0, 0.1, 1.0]], requires_grad=True)
    zero = batch_all_triplet_margin(
        easy, torch.tensor([[False, True, False]]), torch.tensor([[False, False, True]]), 0.2
    )
    assert zero.item() == 0.0 and zero.requires_grad


def test_module_scores_mined_forms_and_refuses_soft_batch_all():
    loss = TripletMarginLoss(margin=0.1, distance="euclidean")
    z = leaf((5, 3), torch.float64, 7)
    d = loss.distances(z, z)
    labels = torch.tensor([0, 0, 1, 1, 2])
    pos, neg = masks(labels, labels, True)
    assert math.isfinite(loss.from_distances(d, positive_mask=pos, negative_mask=neg).item())
    a, p, n = torch.tensor([0]), torch.tensor([1]), torch.tensor([2])
    torch.testing.assert_close(loss.from_distances(d, a, p, n), loss(z[a], z[p], z[n]))
    with pytest.raises(ValueError, match="loss.soft_margin=false"):
        TripletMarginLoss(soft_margin=True).from_distances(d, positive_mask=pos, negative_mask=neg)


def test_bad_arguments_name_the_config_key():
    with pytest.raises(ValueError, match="loss.margin"):
        TripletMarginLoss(margin=-0.1)
    with pytest.raises(ValueError, match="loss.distance"):
        TripletMarginLoss(distance="manhattan")
    with pytest.raises(ValueError, match=r"\(T, D\)"):
        triplet_margin(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2, 2))
