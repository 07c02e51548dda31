"""NT-Xent / InfoNCE against naive python-loop references (values and gradients), the fused and
chunked kernels against the plain autograd formulation, closed forms, autocast and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from contrastlab.losses import InfoNCELoss, NTXentLoss, info_nce, nt_xent
from contrastlab.losses import fused_info_nce as fused
from contrastlab.losses.checks import checking_inputs
from contrastlab.losses.info_nce import info_nce_plain

DTYPES = [torch.float64, torch.float32]


# ----------------------------------------------------------------------------- naive references
def _unit(v: torch.Tensor, normalize: bool) -> torch.Tensor:
    return v / torch.sqrt((v * v).sum()) if normalize else v


def _lse(values: list[torch.Tensor]) -> torch.Tensor:
    top = max(values, key=lambda v: float(v))
    total = sum(torch.exp(v - top) for v in values)
    return top + torch.log(total)


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """SimCLR loss with loops: -log(exp(cos(i, i+)/t) / sum_{k != i} exp(cos(i, k)/t)), mean over 2N."""
    views = [z1[i] for i in range(z1.shape[0])] + [z2[i] for i in range(z2.shape[0])]
    n2 = len(views)
    total = 0.0
    for i in range(n2):
        pos = (i + n2 // 2) % n2
        cos = [(views[i] * views[k]).sum() / (views[i].norm() * views[k].norm()) for k in range(n2)]
        denom = _lse([cos[k] / t for k in range(n2) if k != i])
        total = total + denom - cos[pos] / t
    return total / n2


def naive_info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    positives: list[list[int]],
    excluded: list[int | None],
    t: float | torch.Tensor,
    normalize: bool = True,
) -> torch.Tensor:
    """Loops over (query, key) pairs: lse over non-excluded keys minus the mean positive logit,
    averaged over queries that have at least one positive."""
    per_query = []
    for i in range(q.shape[0]):
        pos = [p for p in positives[i] if p != excluded[i]]
        if not pos:
            continue
        qi = _unit(q[i], normalize)
        logit = {j: (qi * _unit(k[j], normalize)).sum() / t for j in range(k.shape[0]) if j != excluded[i]}
        per_query.append(_lse(list(logit.values())) - sum(logit[p] for p in pos) / len(pos))
    return sum(per_query) / len(per_query)


def _grads(loss: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, inputs))


def _leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-8, "atol": 1e-8} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-5}


# ----------------------------------------------------------------------------- NT-Xent
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("temperature", [0.5, 0.07, 0.01])
def test_nt_xent_matches_naive(dtype: torch.dtype, chunk_size: int | None, temperature: float) -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 4, generator=g, dtype=dtype), torch.randn(5, 4, generator=g, dtype=dtype)
    t = torch.tensor(temperature, dtype=dtype)
    a1, a2, at = _leaves(z1, z2, t)
    b1, b2, bt = _leaves(z1.double(), z2.double(), t.double())
    ours = nt_xent(a1, a2, at, chunk_size=chunk_size)
    ref = naive_nt_xent(b1, b2, bt)
    assert ours.dtype == dtype
    grads, ref_grads = _grads(ours, [a1, a2, at]), _grads(ref, [b1, b2, bt])
    if dtype == torch.float64:  # acceptance: equal to the naive reference to 1e-6 in value and gradient
        assert abs(ours.item() - ref.item()) <= 1e-6
        assert all((a - b).abs().max().item() <= 1e-6 for a, b in zip(grads, ref_grads, strict=True))
    scale = 1.0 / temperature  # float32 error grows with the logit range
    tol = _tol(dtype) if dtype == torch.float64 else {"rtol": 2e-5 * scale, "atol": 2e-5 * scale}
    torch.testing.assert_close(ours, ref.to(dtype), **tol)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b.to(dtype), **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nt_xent_float_temperature_and_module(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 3, generator=g, dtype=dtype), torch.randn(4, 3, generator=g, dtype=dtype)
    a1, a2 = _leaves(z1, z2)
    b1, b2 = _leaves(z1.double(), z2.double())
    z = torch.cat([a1, a2])
    pos, excl = _nt_indices(4)
    ours = NTXentLoss(temperature=0.3)(z, z, pos, exclude_index=excl, positive_mask=None)
    ref = naive_nt_xent(b1, b2, 0.3)
    torch.testing.assert_close(ours, ref.to(dtype), **_tol(dtype))
    for a, b in zip(_grads(ours, [a1, a2]), _grads(ref, [b1, b2]), strict=True):
        torch.testing.assert_close(a, b.to(dtype), **_tol(dtype))


def _nt_indices(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.arange(2 * n)
    return (idx + n) % (2 * n), idx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.parametrize("n", [1, 2, 6])
def test_nt_xent_identical_embeddings_give_log_2n_minus_1(dtype: torch.dtype, chunk_size: int | None, n: int) -> None:
    v = torch.tensor([0.3, -1.2, 2.0, 0.5], dtype=dtype)
    z = v.repeat(n, 1).requires_grad_(True)
    for temperature in (0.5, 0.1):
        loss = nt_xent(z, z, temperature, chunk_size=chunk_size)
        assert loss.item() == pytest.approx(math.log(2 * n - 1), abs=1e-5 if dtype == torch.float32 else 1e-12)
        (grad,) = torch.autograd.grad(loss, [z])
        assert grad.abs().max().item() < (1e-5 if dtype == torch.float32 else 1e-12)


# ----------------------------------------------------------------------------- InfoNCE
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("normalize", [True, False])
def test_info_nce_positive_index_exclude_and_extra_keys(
    dtype: torch.dtype, chunk_size: int | None, normalize: bool
) -> None:
    g = torch.Generator().manual_seed(2)
    n, m = 5, 9  # more keys than queries: extra negatives
    q = torch.randn(n, 3, generator=g, dtype=dtype) * 2.0  # not unit norm
    k = torch.randn(m, 3, generator=g, dtype=dtype) * 0.5
    pos = torch.tensor([3, 0, 8, 8, 1])
    excl = torch.tensor([0, 1, 2, 7, 5])
    t = torch.tensor(0.2, dtype=dtype)
    aq, ak, at = _leaves(q, k, t)
    bq, bk, bt = _leaves(q.double(), k.double(), t.double())
    ours = info_nce(aq, ak, pos, at, exclude_index=excl, normalize=normalize, chunk_size=chunk_size)
    ref = naive_info_nce(bq, bk, [[int(p)] for p in pos], [int(x) for x in excl], bt, normalize)
    torch.testing.assert_close(ours, ref.to(dtype), **_tol(dtype))
    for a, b in zip(_grads(ours, [aq, ak, at]), _grads(ref, [bq, bk, bt]), strict=True):
        torch.testing.assert_close(a, b.to(dtype), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_info_nce_default_positives_are_the_diagonal_with_extra_negatives(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(4, 6, generator=g, dtype=dtype), torch.randn(10, 6, generator=g, dtype=dtype)
    aq, ak = _leaves(q, k)
    bq, bk = _leaves(q.double(), k.double())
    ours = InfoNCELoss(temperature=0.1)(aq, ak)
    ref = naive_info_nce(bq, bk, [[i] for i in range(4)], [None] * 4, 0.1)
    torch.testing.assert_close(ours, ref.to(dtype), **_tol(dtype))
    for a, b in zip(_grads(ours, [aq, ak]), _grads(ref, [bq, bk]), strict=True):
        torch.testing.assert_close(a, b.to(dtype), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_exclude", [False, True])
def test_info_nce_positive_mask_several_positives_and_rows_without(dtype: torch.dtype, with_exclude: bool) -> None:
    g = torch.Generator().manual_seed(4)
    n, m = 5, 7
    q, k = torch.randn(n, 3, generator=g, dtype=dtype), torch.randn(m, 3, generator=g, dtype=dtype)
    positives = [[1, 2, 6], [], [0], [3, 4], []]  # rows 1 and 4 have no positive and leave the mean
    mask = torch.zeros(n, m, dtype=torch.bool)
    for i, ps in enumerate(positives):
        mask[i, ps] = True
    excl = torch.tensor([2, 0, 1, 5, 6]) if with_exclude else None  # row 0 loses positive 2 to the exclusion
    t = torch.tensor(0.25, dtype=dtype)
    aq, ak, at = _leaves(q, k, t)
    bq, bk, bt = _leaves(q.double(), k.double(), t.double())
    ours = info_nce(aq, ak, temperature=at, positive_mask=mask, exclude_index=excl)
    ref = naive_info_nce(bq, bk, positives, [None] * n if excl is None else [int(x) for x in excl], bt)
    torch.testing.assert_close(ours, ref.to(dtype), **_tol(dtype))
    grads = _grads(ours, [aq, ak, at])
    for a, b in zip(grads, _grads(ref, [bq, bk, bt]), strict=True):
        torch.testing.assert_close(a, b.to(dtype), **_tol(dtype))
    assert grads[0][1].abs().max().item() == 0.0 and grads[0][4].abs().max().item() == 0.0


def test_info_nce_positive_mask_without_any_positive_is_zero_with_zero_gradient() -> None:
    q = torch.randn(3, 4, requires_grad=True)
    loss = info_nce(
        q,
        q,
        temperature=0.1,
        positive_mask=torch.zeros(3, 3, dtype=torch.bool),
        exclude_index=torch.arange(3),
    )
    (grad,) = torch.autograd.grad(loss, [q])
    assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))


def test_info_nce_temperature_with_one_element_and_int32_indices() -> None:
    g = torch.Generator().manual_seed(5)
    q, k = (
        torch.randn(4, 3, generator=g, dtype=torch.float64),
        torch.randn(6, 3, generator=g, dtype=torch.float64),
    )
    t = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([5, 4, 3, 2], dtype=torch.int32)
    loss = info_nce(q, k, pos, t)
    ref = naive_info_nce(q, k, [[5], [4], [3], [2]], [None] * 4, t)
    (dt,), (ref_dt,) = torch.autograd.grad(loss, [t]), torch.autograd.grad(ref, [t])
    assert dt.shape == (1,)
    assert loss.shape == ()  # a scalar even for a (1,) temperature
    torch.testing.assert_close(loss, ref.reshape(()), **_tol(torch.float64))
    torch.testing.assert_close(dt, ref_dt, **_tol(torch.float64))


# ----------------------------------------------------------------------------- fused/chunked == plain
def _compare_with_plain(q, k, pos, excl, t, *, normalize=True, chunk_size=None, same=False) -> None:
    aq, ak, at = _leaves(q, k, t)
    bq, bk, bt = _leaves(q, k, t)
    keys_a, keys_b = (aq, bq) if same else (ak, bk)
    ours = info_nce(aq, keys_a, pos, at, exclude_index=excl, normalize=normalize, chunk_size=chunk_size)
    ref = info_nce_plain(bq, keys_b, pos, bt, exclude_index=excl, normalize=normalize)
    tol = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(ours, ref, **tol)
    inputs_a, inputs_b = ([aq, at], [bq, bt]) if same else ([aq, ak, at], [bq, bk, bt])
    for a, b in zip(_grads(ours, inputs_a), _grads(ref, inputs_b), strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("chunk_size", [None, 64, 1000])
@pytest.mark.parametrize("temperature", [0.5, 0.1, 0.01])
@pytest.mark.parametrize("normalize", [True, False])
def test_fused_and_chunked_equal_plain_float32(chunk_size: int | None, temperature: float, normalize: bool) -> None:
    g = torch.Generator().manual_seed(6)
    n, m = 300, 700
    q, k = torch.randn(n, 32, generator=g), torch.randn(m, 32, generator=g)
    if not normalize:
        q, k = q * 0.2, k * 0.2
    pos = torch.randint(0, m, (n,), generator=g)
    excl = (pos + torch.randint(1, m, (n,), generator=g)) % m
    _compare_with_plain(q, k, pos, excl, torch.tensor(temperature), normalize=normalize, chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [None, 64])
@pytest.mark.parametrize("temperature", [0.5, 0.01])
def test_symmetric_nt_xent_path_equals_plain_float32(chunk_size: int | None, temperature: float) -> None:
    g = torch.Generator().manual_seed(7)
    z = torch.randn(2 * 150, 32, generator=g)
    pos, excl = _nt_indices(150)
    _compare_with_plain(z, z, pos, excl, torch.tensor(temperature), chunk_size=chunk_size, same=True)


def _symmetric_spy(monkeypatch) -> list[bool]:
    """Records whether each kernel call takes the symmetric path (``q is k``, no row shift)."""
    seen: list[bool] = []
    apply = fused.SinglePositiveInfoNCE.apply

    def spy(*args):
        q, inv_t, symmetric, unit_norm = args[0], args[5], args[8], args[9]
        shift = not unit_norm or isinstance(inv_t, torch.Tensor) or inv_t + math.log(q.shape[0]) > 80
        seen.append(symmetric and not shift)
        return apply(*args)

    monkeypatch.setattr(fused.SinglePositiveInfoNCE, "apply", spy)
    return seen


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("exclusion", ["diagonal", "shifted", "none"])
def test_symmetric_path_with_any_exclusion_matches_naive(dtype, chunk_size, exclusion, monkeypatch) -> None:
    """``q is k`` takes the symmetric backward (one product plus the O(N D) correction of the excluded
    entries) for every exclusion, not only the diagonal; values and gradients equal the loop reference."""
    seen = _symmetric_spy(monkeypatch)
    g = torch.Generator().manual_seed(21)
    n = 8
    z = torch.randn(n, 5, generator=g, dtype=dtype)
    pos = torch.tensor([3, 0, 5, 7, 6, 1, 2, 4])
    excl = {"diagonal": torch.arange(n), "shifted": (torch.arange(n) + 1) % n, "none": None}[exclusion]
    (a,), (b,) = _leaves(z), _leaves(z.double())
    ours = info_nce(a, a, pos, 0.2, exclude_index=excl, chunk_size=chunk_size)
    excluded = [None] * n if excl is None else excl.tolist()
    ref = naive_info_nce(b, b, [[p] for p in pos.tolist()], excluded, 0.2)
    assert seen == [True]
    torch.testing.assert_close(ours, ref.to(dtype), **_tol(dtype))
    torch.testing.assert_close(_grads(ours, [a])[0], _grads(ref, [b])[0].to(dtype), **_tol(dtype))


@pytest.mark.parametrize("recompute", [False, True])
def test_symmetric_path_with_a_non_diagonal_exclusion_gradcheck_float64(recompute: bool) -> None:
    g = torch.Generator().manual_seed(22)
    q = torch.nn.functional.normalize(torch.randn(6, 3, generator=g, dtype=torch.float64), dim=1)
    pos, excl = torch.tensor([3, 4, 5, 0, 1, 2]), torch.tensor([1, 2, 0, 4, 5, 3])
    q.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: fused.fused_info_nce(x, x, pos, 0.3, exclude_index=excl, chunk_size=4, recompute=recompute), (q,)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_key_mask_equals_dropping_the_masked_keys(dtype: torch.dtype, with_mask: bool) -> None:
    """Masked-out keys (a memory bank's empty slots) leave every denominator and are nobody's positive: the
    same loss and gradients as the loop reference on the kept keys alone."""
    g = torch.Generator().manual_seed(23)
    q, k = torch.randn(5, 4, generator=g, dtype=dtype), torch.randn(9, 4, generator=g, dtype=dtype)
    keep = torch.tensor([1, 1, 0, 1, 1, 0, 1, 0, 1], dtype=torch.bool)
    kept = keep.nonzero().squeeze(1).tolist()  # key j of the kept set is key kept[j]
    (aq, ak), (bq, bk) = _leaves(q, k), _leaves(q.double(), k.double())
    excl = torch.tensor([0, 3, 1, 8, 4])
    if with_mask:  # several positives, one of them masked out (query 2's key 5)
        mask = torch.zeros(5, 9, dtype=torch.bool)
        for i, js in enumerate([[1, 6], [0], [5, 6], [3, 4], [8]]):
            mask[i, js] = True
        ours = info_nce(aq, ak, temperature=0.3, positive_mask=mask, exclude_index=excl, key_mask=keep)
        positives = [[kept.index(j) for j in mask[i].nonzero().squeeze(1).tolist() if keep[j]] for i in range(5)]
    else:
        pos = torch.tensor([1, 0, 6, 3, 8])
        ours = info_nce(aq, ak, pos, 0.3, exclude_index=excl, key_mask=keep)
        positives = [[kept.index(p)] for p in pos.tolist()]
    excluded = [kept.index(x) if keep[x] else None for x in excl.tolist()]
    ref = naive_info_nce(bq, bk[keep], positives, excluded, 0.3)
    torch.testing.assert_close(ours, ref.to(dtype), **_tol(dtype))
    for x, y in zip(_grads(ours, [aq, ak]), _grads(ref, [bq, bk]), strict=True):
        torch.testing.assert_close(x, y.to(dtype), **_tol(dtype))


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("case", ["symmetric", "keys", "keys_row_shift"])
def test_kernel_gradcheck_float64(recompute: bool, case: str) -> None:
    g = torch.Generator().manual_seed(8)
    n = 6
    q = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=1)
    k = torch.nn.functional.normalize(torch.randn(9, 3, generator=g, dtype=torch.float64), dim=1)
    t = torch.tensor(0.3 if case != "keys_row_shift" else 0.0012, dtype=torch.float64)  # 1/t > 700: row shift
    if case == "symmetric":
        pos, excl = _nt_indices(n // 2)
        q.requires_grad_(True)
        t.requires_grad_(True)

        def fn(x: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
            return fused.fused_info_nce(x, x, pos, temp, exclude_index=excl, chunk_size=4, recompute=recompute)

        assert torch.autograd.gradcheck(fn, (q, t))
        return
    pos, excl = torch.tensor([0, 3, 8, 2, 2, 5]), torch.tensor([1, 0, 7, 3, 4, 6])
    q, k, t = (x.requires_grad_(True) for x in (q, k, t))

    def fn2(a: torch.Tensor, b: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
        return fused.fused_info_nce(a, b, pos, temp, exclude_index=excl, chunk_size=4, recompute=recompute)

    assert torch.autograd.gradcheck(fn2, (q, k, t))


def test_memory_efficient_mode_is_chosen_above_the_size_or_by_chunk_size(monkeypatch) -> None:
    seen: list[bool] = []
    apply = fused.SinglePositiveInfoNCE.apply

    def spy(*args):
        seen.append(args[7])  # the ``recompute`` argument
        return apply(*args)

    monkeypatch.setattr(fused.SinglePositiveInfoNCE, "apply", spy)
    z1, z2 = torch.randn(8, 4), torch.randn(8, 4)
    reference = nt_xent(z1, z2, 0.5)  # 16 x 16 entries
    monkeypatch.setattr(fused, "RECOMPUTE_ABOVE", 16 * 16 - 1)
    auto_chunked = nt_xent(z1, z2, 0.5)
    monkeypatch.setattr(fused, "RECOMPUTE_ABOVE", 2**26)
    forced = nt_xent(z1, z2, 0.5, chunk_size=5)
    assert seen == [False, True, True]
    torch.testing.assert_close(auto_chunked, reference)
    torch.testing.assert_close(forced, reference)


# ----------------------------------------------------------------------------- autocast
def test_logits_are_float32_under_bf16_autocast() -> None:
    g = torch.Generator().manual_seed(9)
    z1, z2 = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)
    fp32 = nt_xent(z1, z2, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = nt_xent(z1, z2, 0.1)
        auto_chunked = nt_xent(z1, z2, 0.1, chunk_size=16)
        mask = torch.eye(128, dtype=torch.bool).roll(64, dims=1)
        auto_mask = info_nce(
            torch.cat([z1, z2]),
            torch.cat([z1, z2]),
            temperature=0.1,
            positive_mask=mask,
            exclude_index=torch.arange(128),
        )
    # a bf16 matmul would be off by ~1e-2; float32 logits agree to float32 rounding
    for value in (auto, auto_chunked, auto_mask):
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, fp32, rtol=1e-5, atol=1e-5)


def test_bf16_embeddings_under_autocast_give_finite_loss_close_to_fp32() -> None:
    torch.manual_seed(10)
    layer = torch.nn.Linear(32, 16)
    x1, x2 = torch.randn(64, 32), torch.randn(64, 32)
    fp32 = nt_xent(layer(x1), layer(x2), 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z1, z2 = layer(x1), layer(x2)
        assert z1.dtype == torch.bfloat16
        loss = nt_xent(z1, z2, 0.1)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, fp32, rtol=2e-2, atol=2e-2)  # only the bf16 embeddings differ
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": torch.tensor(-1.0)}, "temperature must be > 0"),
        ({"chunk_size": 0}, "chunk_size must be"),
        ({"exclude_index": torch.arange(4)}, "keep positives as candidates"),
        ({"positive_index": torch.tensor([0, 1, 2, 9])}, "positive_index must index the 6 keys"),
        ({"positive_index": torch.tensor([0.0, 1, 2, 3])}, "positive_index must be an"),
        ({"positive_mask": torch.ones(4, 5, dtype=torch.bool)}, "positive_mask must be"),
    ],
)
def test_bad_input_raises_a_clear_error(kwargs: dict, message: str) -> None:
    q, k = torch.randn(4, 3), torch.randn(6, 3)
    with checking_inputs(), pytest.raises(ValueError, match=message):
        info_nce(q, k, **kwargs)


# values read on the host (index ranges, a tensor temperature's sign) are checked only with the debug checks on
HOST_READ_CHECKS = [
    ({"temperature": torch.tensor(-1.0)}, "temperature must be > 0"),
    ({"exclude_index": torch.arange(4)}, "keep positives as candidates"),
]


@pytest.mark.parametrize(("kwargs", "message"), HOST_READ_CHECKS)
def test_host_read_checks_are_off_unless_turned_on(kwargs: dict, message: str, monkeypatch) -> None:
    q, k = torch.randn(4, 3), torch.randn(6, 3)
    reads: list[str] = []
    for name in ("item", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _o=original, _n=name, **kw: reads.append(_n) or _o(t))
    with checking_inputs(False):
        info_nce(q, k, **kwargs)  # no error, and nothing read back
    assert reads == []
    with checking_inputs(), pytest.raises(ValueError, match=message):
        info_nce(q, k, **kwargs)
    assert reads  # the check read the value


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="must share D"):
        info_nce(torch.randn(4, 3), torch.randn(6, 2))
    with pytest.raises(ValueError, match="at least as many keys"):
        info_nce(torch.randn(4, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="loss.temperature"):
        NTXentLoss(temperature=-0.5)


@pytest.mark.parametrize("chunk_size", [None, 16])
@pytest.mark.parametrize("needs", ["queries", "keys", "temperature"])
def test_gradients_when_only_some_inputs_require_grad(chunk_size: int | None, needs: str) -> None:
    g = torch.Generator().manual_seed(11)
    q, k = (
        torch.randn(40, 8, generator=g, dtype=torch.float64),
        torch.randn(70, 8, generator=g, dtype=torch.float64),
    )
    pos = torch.randint(0, 70, (40,), generator=g)
    results = []
    for fn in (info_nce, info_nce_plain):
        inputs = {
            "queries": q.clone(),
            "keys": k.clone(),
            "temperature": torch.tensor(0.2, dtype=torch.float64),
        }
        inputs[needs].requires_grad_(True)
        kw = {"chunk_size": chunk_size} if fn is info_nce else {}
        loss = fn(inputs["queries"], inputs["keys"], pos, inputs["temperature"], **kw)
        results.append(torch.autograd.grad(loss, [inputs[needs]])[0])
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-12)
