"""Loss behaviour that mutation testing (``make mutate``) found untested: documented defaults, the exact
error messages, ties at the margin, one-element edge cases, dtype contracts, gradients of every input, the
chunked path's buffers and the module wrappers passing their settings on. Values are checked against naive
loop references in float64 (and float32 where the dtype matters)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from contrastlab.errors import ConfigError
from contrastlab.losses import (
    CLIPLoss,
    InfoNCELoss,
    NTXentLoss,
    SigLIPLoss,
    TripletMarginLoss,
    batch_all_triplet_margin,
    clip_loss,
    info_nce,
    nt_xent,
    pairwise_distance,
    siglip_loss,
    triplet_margin,
    triplet_margin_from_distances,
)
from contrastlab.losses import clip as clip_module
from contrastlab.losses import fused_info_nce as fused
from contrastlab.losses.checks import checking_inputs
from contrastlab.losses.info_nce import _neg_inf, info_nce_plain
from contrastlab.losses.triplet import rowwise_distance, rowwise_searchsorted


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64, grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(grad)


# ----------------------------------------------------------------------------- naive references (loops)
def naive_info_nce(q, k, positives, t, excluded=None, normalize=True) -> torch.Tensor:
    """mean_i [ log sum_{j != x_i} exp(l_ij) - mean_{p in P_i} l_ip ], l_ij = q_i.k_j / t, over queries
    with a positive."""
    terms = []
    for i in range(q.shape[0]):
        qi = F.normalize(q[i], dim=0) if normalize else q[i]
        logits = {}
        for j in range(k.shape[0]):
            if excluded is not None and j == excluded[i]:
                continue
            kj = F.normalize(k[j], dim=0) if normalize else k[j]
            logits[j] = (qi * kj).sum() / t
        pos = [p for p in positives[i] if p in logits]
        if pos:
            terms.append(
                torch.logsumexp(torch.stack(list(logits.values())), 0) - sum(logits[p] for p in pos) / len(pos)
            )
    return torch.stack(terms).mean()


def naive_cosine(x, y) -> torch.Tensor:
    return 1 - (x * y).sum() / (x.norm() * y.norm())


# ----------------------------------------------------------------------------- info_nce and friends
def test_documented_default_temperatures() -> None:
    q, k = rand(5, 4, seed=1), rand(5, 4, seed=2)
    diagonal = [[i] for i in range(5)]
    assert torch.allclose(info_nce(q, k), naive_info_nce(q, k, diagonal, 0.1), rtol=1e-10)
    assert torch.allclose(info_nce_plain(q, k), naive_info_nce(q, k, diagonal, 0.1), rtol=1e-10)
    z = torch.cat([q, k])
    pairs = [[(i + 5) % 10] for i in range(10)]
    assert torch.allclose(nt_xent(q, k), naive_info_nce(z, z, pairs, 0.5, excluded=list(range(10))), rtol=1e-10)
    assert InfoNCELoss().temperature == 0.1 and NTXentLoss().temperature == 0.5
    assert torch.allclose(InfoNCELoss()(q, k), naive_info_nce(q, k, diagonal, 0.1), rtol=1e-10)


def test_default_positives_with_as_many_keys_as_queries_and_too_few_keys() -> None:
    q, k = rand(4, 3, seed=3), rand(4, 3, seed=4)
    assert torch.allclose(info_nce(q, k, temperature=0.3), naive_info_nce(q, k, [[i] for i in range(4)], 0.3))
    with pytest.raises(ValueError, match=r"need at least as many keys as queries, got 3 < 4; pass positive_index"):
        info_nce(q, k[:3])


def test_key_mask_with_default_positives_equals_the_reference() -> None:
    q, k = rand(4, 3, seed=5), rand(6, 3, seed=6)
    key_mask = torch.tensor([1, 1, 1, 1, 0, 1])  # an integer mask: taken as bool
    expected = naive_info_nce(q, k[[0, 1, 2, 3, 5]], [[i] for i in range(4)], 0.2)
    assert torch.allclose(info_nce(q, k, temperature=0.2, key_mask=key_mask), expected, rtol=1e-10)
    assert torch.allclose(info_nce(q, k, temperature=0.2, key_mask=key_mask.bool()), expected, rtol=1e-10)


def test_an_integer_positive_mask_is_taken_as_bool() -> None:
    q, k = rand(3, 4, seed=7), rand(5, 4, seed=8)
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [0, 0, 0, 1, 0]])
    expected = naive_info_nce(q, k, [[0, 2], [1, 4], [3]], 0.5)
    assert torch.allclose(info_nce(q, k, temperature=0.5, positive_mask=mask), expected, rtol=1e-10)


def test_the_mean_is_over_queries_with_a_positive_even_when_only_one_has_one() -> None:
    q, k = rand(3, 4, seed=9), rand(3, 4, seed=10)
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[1, 2] = True
    expected = naive_info_nce(q, k, [[], [2], []], 0.5)
    assert torch.allclose(info_nce(q, k, temperature=0.5, positive_mask=mask), expected, rtol=1e-10)


def test_chunk_size_one_is_valid_and_the_chunked_path_resizes_no_buffer() -> None:
    q, k = rand(7, 4, seed=11), rand(9, 4, seed=12)
    idx = torch.tensor([0, 2, 4, 6, 8, 1, 3])
    expected = naive_info_nce(q, k, [[int(i)] for i in idx], 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an out= buffer of the wrong shape would be resized with a warning
        for chunk in (1, 3):  # 3: the last chunk is partial (7 = 3 + 3 + 1)
            assert torch.allclose(info_nce(q, k, idx, 0.2, chunk_size=chunk), expected, rtol=1e-10)


def test_unnormalised_inputs_with_large_logits_stay_finite() -> None:
    q, k = rand(6, 4, seed=13) * 30, rand(6, 4, seed=14) * 30  # logits up to ~1e4 / t
    expected = naive_info_nce(q, k, [[i] for i in range(6)], 0.1, normalize=False)
    for chunk in (None, 2):
        got = info_nce(q, k, temperature=0.1, normalize=False, chunk_size=chunk)
        assert torch.isfinite(got) and torch.allclose(got, expected, rtol=1e-10)


def test_a_temperature_near_the_exp_limit_is_shifted_in_float32() -> None:
    """1/t = 85 and 1000 identical keys: exp(85) * 1000 overflows float32, so the row needs its shift."""
    q = torch.ones(2, 3)
    k = torch.ones(1000, 3)
    got = info_nce(q, k, torch.tensor([0, 1]), 1 / 85)
    assert torch.isfinite(got) and abs(float(got) - math.log(1000)) < 1e-4  # all logits equal: log M


def test_distinct_query_and_key_tensors_of_equal_size_get_their_own_gradients() -> None:
    for dtype in (torch.float64, torch.float32):
        q, k = rand(5, 4, seed=15, dtype=dtype, grad=True), rand(5, 4, seed=16, dtype=dtype, grad=True)
        gq, gk = torch.autograd.grad(info_nce(q, k, temperature=0.2), (q, k))
        rq, rk = torch.autograd.grad(naive_info_nce(q, k, [[i] for i in range(5)], 0.2), (q, k))
        tol = 1e-10 if dtype == torch.float64 else 1e-5
        assert torch.allclose(gq, rq, atol=tol) and torch.allclose(gk, rk, atol=tol)


def test_a_float32_tensor_temperature_is_inverted_in_float64_for_float64_inputs() -> None:
    q, k = rand(4, 3, seed=17), rand(4, 3, seed=18)
    t = torch.tensor(1 / 3, dtype=torch.float32)
    expected = naive_info_nce(q, k, [[i] for i in range(4)], t.double())
    assert torch.allclose(info_nce(q, k, temperature=t), expected, rtol=1e-12, atol=0)


def test_info_nce_plain_computes_in_float32_for_bfloat16_inputs() -> None:
    q, k = rand(4, 8, seed=19).bfloat16(), rand(4, 8, seed=20).bfloat16()
    got = info_nce_plain(q, k, temperature=0.5)
    assert got.dtype == torch.float32
    expected = naive_info_nce(q.double(), k.double(), [[i] for i in range(4)], 0.5)
    assert abs(float(got) - float(expected)) < 1e-5


def test_bad_input_messages() -> None:
    q, k = rand(4, 3), rand(5, 3)
    with pytest.raises(ValueError, match=r"^temperature must have one element, got shape \(2,\)$"):
        info_nce(q, k, temperature=torch.ones(2))
    with pytest.raises(
        ValueError, match=r"queries \(N, D\) and keys \(M, D\) must share D, got \(4, 3, 1\) and \(5, 3\)"
    ):
        info_nce(q[..., None], k)
    with pytest.raises(ValueError, match=r"^exclude_index must be an \(N,\) = \(4,\) integer tensor, got torch.int64 "):
        info_nce(q, k, exclude_index=torch.zeros(3, dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"^positive_index must be an \(N,\) = \(4,\) integer tensor, got torch.float32 of"
    ):
        info_nce(q, k, torch.zeros(4))
    with pytest.raises(ValueError, match=r"^key_mask must be \(M,\) = \(5,\), got \(4,\)$"):
        info_nce(q, k, key_mask=torch.ones(4, dtype=torch.bool))
    with checking_inputs():
        with pytest.raises(ValueError, match=r"^positive_index must index the 5 keys \(0 <= index < 5\)$"):
            info_nce(q, k, torch.tensor([0, 1, 2, 5]))
        with pytest.raises(ValueError, match=r"^exclude_index equals positive_index for some query; keep positives"):
            info_nce(q, k, torch.tensor([0, 1, 2, 3]), exclude_index=torch.tensor([1, 1, 0, 0]))


def test_the_modules_pass_their_chunk_size_on() -> None:
    q, k = rand(4, 3), rand(4, 3)
    for module in (InfoNCELoss(0.1, chunk_size=0), NTXentLoss(0.5, chunk_size=0)):
        assert module.chunk_size == 0
        with pytest.raises(ValueError, match="chunk_size must be a positive number of rows or None, got 0"):
            module(q, k)


def test_the_chunked_mode_holds_at_most_chunk_rows_and_the_default_mode_keeps_its_matrix(monkeypatch) -> None:
    """chunk_size bounds every block of the similarity matrix (forward and recomputing backward); without it
    the (small) matrix is computed once, in the forward, and kept for the backward."""
    calls: list[int] = []  # rows of each block
    real = fused._exp_chunk

    def spy(buf, *args, **kwargs):
        calls.append(buf.shape[0])
        return real(buf, *args, **kwargs)

    monkeypatch.setattr(fused, "_exp_chunk", spy)
    q, k = rand(6, 4, seed=48, grad=True), rand(8, 4, seed=49, grad=True)
    expected = naive_info_nce(q, k, [[i] for i in range(6)], 0.2)
    for chunk in (1, 4):
        calls.clear()
        loss = info_nce(q, k, temperature=0.2, chunk_size=chunk)
        loss.backward()
        assert torch.allclose(loss, expected, rtol=1e-10)
        assert max(calls) == chunk and len(calls) == 2 * math.ceil(6 / chunk)
    calls.clear()
    info_nce(q, k, temperature=0.2).backward()
    assert calls == [6]  # one (N, M) block, in the forward only


def test_default_chunk_rows() -> None:
    assert fused.default_chunk_rows(1) == fused.CHUNK_ELEMENTS
    assert fused.default_chunk_rows(0) == fused.CHUNK_ELEMENTS
    assert fused.default_chunk_rows(3) == fused.CHUNK_ELEMENTS // 3 and isinstance(fused.default_chunk_rows(3), int)
    assert fused.default_chunk_rows(fused.CHUNK_ELEMENTS + 1) == 1


# ----------------------------------------------------------------------------- CLIP and SigLIP
def naive_clip(img, txt, scale) -> torch.Tensor:
    n = img.shape[0]
    diagonal = [[i] for i in range(n)]
    return (naive_info_nce(img, txt, diagonal, 1 / scale) + naive_info_nce(txt, img, diagonal, 1 / scale)) / 2


def test_a_scale_below_one_is_valid() -> None:
    img, txt = rand(4, 3, seed=21), rand(4, 3, seed=22)
    assert torch.allclose(clip_loss(img, txt, 0.5), naive_clip(img, txt, 0.5), rtol=1e-10)
    with pytest.raises(ValueError, match=r"logit_scale must be > 0 \(the exponentiated scale\), got 0"):
        clip_loss(img, txt, 0)


def test_a_bfloat16_scale_tensor_is_used_in_float32() -> None:
    img, txt = rand(4, 3, seed=23, dtype=torch.float32), rand(4, 3, seed=24, dtype=torch.float32)
    scale = torch.tensor(3.0 / 7.0 * 20, dtype=torch.bfloat16)  # 8.5625 in bfloat16
    expected = naive_clip(img.double(), txt.double(), float(scale))
    assert abs(float(clip_loss(img, txt, scale)) - float(expected)) < 1e-5
    with pytest.raises(ValueError, match=r"^logit_scale must be a scalar, got shape \(2,\)$"):
        clip_loss(img, txt, torch.ones(2))


def test_text_negatives_take_the_features_dtype() -> None:
    img, txt = rand(3, 4, seed=25, dtype=torch.float32), rand(3, 4, seed=26, dtype=torch.float32)
    loss = clip_loss(img, txt, 10.0, text_negatives=rand(2, 4, seed=27))  # float64 negatives
    assert loss.dtype == torch.float32


def test_clip_passes_chunk_size_to_both_directions(monkeypatch) -> None:
    seen = []
    real = clip_module.info_nce

    def spy(*args, **kwargs):
        seen.append(kwargs.get("chunk_size"))
        return real(*args, **kwargs)

    monkeypatch.setattr(clip_module, "info_nce", spy)
    img, txt = rand(3, 4, seed=28), rand(3, 4, seed=29)
    clip_loss(img, txt, 5.0, chunk_size=2)
    assert seen == [2, 2]
    seen.clear()
    CLIPLoss(chunk_size=3)(img, txt, torch.tensor(5.0, dtype=torch.float64))
    assert seen == [3, 3]


def test_pair_shape_message() -> None:
    with pytest.raises(ValueError, match=r"must both be \(N, D\) with the same shape, got \(3, 4\) and \(2, 4\)"):
        clip_loss(rand(3, 4), rand(2, 4), 1.0)


def test_clip_module_equals_the_function_with_gathered_keys() -> None:
    img, txt = rand(2, 3, seed=30), rand(2, 3, seed=31)
    all_img, all_txt = torch.cat([rand(2, 3, seed=32), img]), torch.cat([rand(2, 3, seed=33), txt])
    scale = torch.tensor(4.0, dtype=torch.float64)
    kw = {"all_image_features": all_img, "all_text_features": all_txt, "offset": 2}
    expected = (naive_info_nce(img, all_txt, [[2], [3]], 0.25) + naive_info_nce(txt, all_img, [[2], [3]], 0.25)) / 2
    assert torch.allclose(CLIPLoss()(img, txt, scale, **kw), expected, rtol=1e-10)
    assert torch.allclose(clip_loss(img, txt, scale, **kw), expected, rtol=1e-10)


def test_a_scale_tensor_keeps_its_own_dtype() -> None:
    """CLIP is info_nce with temperature ``1 / logit_scale`` computed in the scale's own dtype (float32 for integer
    and half scales), not cast to the features' dtype: the loss and the scale's gradient match that exactly."""
    for features, scale in [
        (torch.float64, torch.tensor(3.3, dtype=torch.float32)),
        (torch.float64, torch.tensor(3)),
        (torch.float32, torch.tensor(3.3, dtype=torch.float64)),
    ]:
        img, txt = rand(5, 4, seed=50, dtype=features), rand(5, 4, seed=51, dtype=features)
        s = scale.requires_grad_(scale.is_floating_point())
        got = clip_loss(img, txt, s)
        t = (s if s.is_floating_point() else s.float()).reciprocal()
        expected = (info_nce(img, txt, temperature=t) + info_nce(txt, img, temperature=t)) / 2
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        if s.requires_grad:
            torch.testing.assert_close(
                torch.autograd.grad(got, s)[0], torch.autograd.grad(expected, s)[0], rtol=0, atol=0
            )


def naive_siglip(img, txt, scale, bias, offset=0) -> torch.Tensor:
    total = 0.0
    for i in range(img.shape[0]):
        for j in range(txt.shape[0]):
            z = 1.0 if j == i + offset else -1.0
            logit = scale * (F.normalize(img[i], dim=0) * F.normalize(txt[j], dim=0)).sum() + bias
            total = total - F.logsigmoid(torch.as_tensor(z * logit))
    return total / img.shape[0]


def test_siglip_computes_bfloat16_features_in_float32() -> None:
    img, txt = rand(3, 8, seed=34).bfloat16(), rand(3, 8, seed=35).bfloat16()
    got = siglip_loss(img, txt, 10.0, -2.0)
    assert got.dtype == torch.float32
    assert abs(float(got) - float(naive_siglip(img.double(), txt.double(), 10.0, -2.0))) < 1e-4


def test_siglip_module_bias_settings_and_gathered_texts() -> None:
    assert SigLIPLoss(learn_bias=False).logit_bias.requires_grad is False
    assert SigLIPLoss().logit_bias.requires_grad is True
    module = SigLIPLoss(init_bias=-1.0).double()
    img, txt = rand(2, 3, seed=36), rand(2, 3, seed=37)
    all_txt = torch.cat([rand(2, 3, seed=38), txt])
    scale = torch.tensor(5.0, dtype=torch.float64)
    got = module(img, txt, scale, all_image_features=img, all_text_features=all_txt, offset=2)  # images: ignored
    assert torch.allclose(got, naive_siglip(img, all_txt, 5.0, -1.0, offset=2), rtol=1e-10)


# ----------------------------------------------------------------------------- triplet
def test_rowwise_cosine_distance_values_and_default() -> None:
    x, y = rand(3, 4, seed=40), rand(3, 4, seed=41)
    expected = torch.stack([naive_cosine(x[i], y[i]) for i in range(3)])
    assert torch.allclose(rowwise_distance(x, y), expected, rtol=1e-12)
    assert torch.allclose(pairwise_distance(x, y).diagonal(), expected, rtol=1e-12)


def test_triplet_defaults_are_cosine_with_margin_0_2() -> None:
    a, p, n = rand(4, 3, seed=42), rand(4, 3, seed=43), rand(4, 3, seed=44)
    expected = torch.stack([(naive_cosine(a[i], p[i]) - naive_cosine(a[i], n[i]) + 0.2).clamp_min(0) for i in range(4)])
    assert torch.allclose(triplet_margin(a, p, n), expected.mean(), rtol=1e-12)
    assert torch.allclose(TripletMarginLoss()(a, p, n), expected.mean(), rtol=1e-12)
    dist = pairwise_distance(a, torch.cat([p, n]))
    idx = torch.arange(4)
    assert torch.allclose(triplet_margin_from_distances(dist, idx, idx, idx + 4), expected.mean(), rtol=1e-12)


def test_soft_margin_reaches_every_entry_point() -> None:
    a, p, n = rand(4, 3, seed=45), rand(4, 3, seed=46), rand(4, 3, seed=47)
    expected = torch.stack([F.softplus(naive_cosine(a[i], p[i]) - naive_cosine(a[i], n[i])) for i in range(4)]).mean()
    loss = TripletMarginLoss(soft_margin=True)
    dist = pairwise_distance(a, torch.cat([p, n]))
    idx = torch.arange(4)
    assert torch.allclose(loss(a, p, n), expected, rtol=1e-12)
    assert torch.allclose(loss.from_distances(dist, idx, idx, idx + 4), expected, rtol=1e-12)
    assert torch.allclose(
        triplet_margin_from_distances(dist, idx, idx, idx + 4, soft_margin=True), expected, rtol=1e-12
    )


def naive_batch_all(dist, pos, neg, margin) -> torch.Tensor:
    """Mean of d_ap - d_an + margin over the triplets where it is > 0 (zero when there are none)."""
    active = []
    for a in range(dist.shape[0]):
        for p in range(dist.shape[1]):
            for n in range(dist.shape[1]):
                if pos[a, p] and neg[a, n] and dist[a, p] - dist[a, n] + margin > 0:
                    active.append(dist[a, p] - dist[a, n] + margin)
    return torch.stack(active).mean() if active else torch.zeros((), dtype=dist.dtype)


def test_batch_all_counts_no_triplet_whose_loss_is_exactly_zero() -> None:
    """d_an = d_ap + margin exactly (binary fractions): such a triplet is inactive, not a zero in the mean."""
    dist = torch.tensor([[0.25, 0.75, 0.5, 1.0], [0.5, 0.25, 1.0, 0.75]], dtype=torch.float64)
    pos = torch.tensor([[True, False, False, False], [False, True, False, False]])
    neg = ~pos
    for margin in (0.5, 0.25):
        expected = naive_batch_all(dist, pos, neg, margin)
        assert torch.allclose(batch_all_triplet_margin(dist, pos, neg, margin), expected, rtol=1e-12)
        assert torch.allclose(
            TripletMarginLoss(margin=margin).from_distances(dist, positive_mask=pos, negative_mask=neg), expected
        )
    assert torch.allclose(batch_all_triplet_margin(dist, pos, neg), naive_batch_all(dist, pos, neg, 0.2))


def test_batch_all_with_a_single_active_triplet() -> None:
    dist = torch.tensor([[0.25, 0.5, 2.0]], dtype=torch.float64)
    pos = torch.tensor([[True, False, False]])
    expected = naive_batch_all(dist, pos, ~pos, 0.5)  # only (0, 0, 1): 0.25 - 0.5 + 0.5
    assert float(expected) == 0.25
    assert torch.allclose(batch_all_triplet_margin(dist, pos, ~pos, 0.5), expected)


def test_rowwise_searchsorted_edges() -> None:
    rows = torch.tensor([[0.0, 1.0, 1.0, 2.0], [0.5, 0.5, 3.0, 4.0]])
    empty = rowwise_searchsorted(rows, torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert empty.dtype == torch.long and empty.shape == (0,)
    one = rowwise_searchsorted(rows, torch.tensor([1]), torch.tensor([0.5]))
    assert one.tolist() == [0]
    row = torch.tensor([0, 0, 0, 0, 0, 1])  # more than half of row 0's width, then row 1
    values = torch.tensor([1.0, 1.0, 2.0, 0.0, 5.0, 0.5])
    expected_left = [int(torch.searchsorted(rows[r], v)) for r, v in zip(row, values, strict=True)]
    expected_right = [int(torch.searchsorted(rows[r], v, right=True)) for r, v in zip(row, values, strict=True)]
    assert rowwise_searchsorted(rows, row, values, max_per_row=5).tolist() == expected_left  # default: left
    assert rowwise_searchsorted(rows, row, values, right=True, max_per_row=5).tolist() == expected_right


def test_bad_triplet_arguments_name_what_is_wrong() -> None:
    msg = r"^loss\.distance must be one of cosine, euclidean, got 'manhattan'; set e\.g\. loss\.distance=cosine\.$"
    with pytest.raises(ConfigError, match=msg):
        TripletMarginLoss(distance="manhattan")
    with pytest.raises(ValueError, match=r"^x \(N, D\) and y \(M, D\) must share D, got \(3, 4\) and \(2, 5\)$"):
        pairwise_distance(rand(3, 4), rand(2, 5))
    with pytest.raises(ValueError, match=r"must share D, got \(3, 4, 1\) and \(2, 4\)$"):
        pairwise_distance(rand(3, 4, 1), rand(2, 4))
    with pytest.raises(
        ValueError, match=r"^anchor, positive and negative must all be \(T, D\), got \(2, 3\), \(2, 3\), \(1, 3\)$"
    ):
        triplet_margin(rand(2, 3), rand(2, 3), rand(1, 3))
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(
        ValueError, match=r"^dist, positive_mask, negative_mask must share a shape, got \(2, 3\), \(2, 3\), \(3, 3\)$"
    ):
        batch_all_triplet_margin(rand(2, 3), mask, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(
        ValueError,
        match=r"^the soft margin has no inactive triplets, so batch-all would score all O\(N\^3\) of them; "
        r"set loss.soft_margin=false or use sampler=batch_hard\.$",
    ):
        TripletMarginLoss(soft_margin=True).from_distances(rand(2, 3), positive_mask=mask, negative_mask=mask)
    loss, idx = TripletMarginLoss(), torch.tensor([0])
    needs = r"^from_distances needs index triplets or positive_mask and negative_mask$"
    for kwargs in (
        {"positive_mask": mask},  # one mask is not batch-all
        {"anchor_idx": idx, "positive_idx": idx},
        {"positive_idx": idx, "negative_idx": idx},
    ):
        with pytest.raises(ValueError, match=needs):
            loss.from_distances(rand(2, 3), **kwargs)


def test_helpers_make_their_tensors_on_the_inputs_device() -> None:
    """On the meta device (no GPU needed): the -inf fill and an empty searchsorted stay on the input's device."""
    like = torch.empty(3, 2, device="meta", dtype=torch.float64)
    fill = _neg_inf(like)
    assert (fill.device, fill.dtype, fill.shape) == (like.device, torch.float64, ())
    empty = torch.zeros(0, dtype=torch.long, device="meta")
    found = rowwise_searchsorted(like, empty, empty.double())
    assert (found.device, found.dtype, found.shape) == (like.device, torch.long, (0,))
