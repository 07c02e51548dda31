"""CLIP and SigLIP losses against naive loop references (values and gradients, float32 and float64)."""

from __future__ import annotations

import math

import pytest
import torch

from contrastlab.losses import CLIPLoss, SigLIPLoss, clip_loss, siglip_loss


def _unit(v: list[torch.Tensor]) -> list[torch.Tensor]:
    return [x / torch.sqrt(sum(c * c for c in x)) for x in v]


def naive_clip(img, txt, log_scale, all_img=None, all_txt=None, offset=0, negatives=None):
    """Loops over pairs: mean over local rows of -log softmax of the positive, both directions, halved."""
    s = torch.exp(log_scale)
    I, T = _unit(list(img)), _unit(list(txt))
    KI = _unit(list(all_img)) if all_img is not None else I
    KT = _unit(list(all_txt)) if all_txt is not None else T
    if negatives is not None:
        KT = KT + _unit(list(negatives))
    total_i2t, total_t2i = 0.0, 0.0
    for i in range(len(I)):
        logits = [s * torch.dot(I[i], k) for k in KT]
        total_i2t = total_i2t - (logits[offset + i] - torch.log(sum(torch.exp(z) for z in logits)))
        logits = [s * torch.dot(T[i], k) for k in KI]
        total_t2i = total_t2i - (logits[offset + i] - torch.log(sum(torch.exp(z) for z in logits)))
    n = len(I)
    return (total_i2t / n + total_t2i / n) / 2


def naive_siglip(img, txt, log_scale, bias, all_txt=None, offset=0, negatives=None):
    s = torch.exp(log_scale)
    I = _unit(list(img))
    KT = _unit(list(all_txt)) if all_txt is not None else _unit(list(txt))
    if negatives is not None:
        KT = KT + _unit(list(negatives))
    total = 0.0
    for i in range(len(I)):
        for j in range(len(KT)):
            z = 1.0 if j == offset + i else -1.0
            logit = s * torch.dot(I[i], KT[j]) + bias
            total = total - torch.log(1 / (1 + torch.exp(-z * logit)))
    return total / len(I)


def _leaves(dtype, *shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def _grads(value, tensors):
    return torch.autograd.grad(value, tensors)


TOL = {torch.float64: 1e-6, torch.float32: 1e-4}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_clip_loss_equals_naive_value_and_gradients(dtype):
    img, txt = _leaves(dtype, (6, 5), (6, 5))
    log_scale = torch.tensor(math.log(1 / 0.07), dtype=dtype, requires_grad=True)
    fast = clip_loss(img, txt, log_scale.exp())
    ref = naive_clip(img, txt, log_scale)
    assert fast.dtype == dtype
    torch.testing.assert_close(fast, ref, atol=TOL[dtype], rtol=TOL[dtype])
    for a, b in zip(_grads(fast, [img, txt, log_scale]), _grads(ref, [img, txt, log_scale]), strict=True):
        torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_clip_loss_without_gradients(dtype):
    img, txt = (t.detach() for t in _leaves(dtype, (4, 3), (4, 3), seed=3))
    with torch.no_grad():
        fast = clip_loss(img, txt, 7.5)
    ref = naive_clip(img, txt, torch.tensor(math.log(7.5), dtype=dtype))
    torch.testing.assert_close(fast, ref, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_clip_loss_with_gathered_keys_offset_and_negatives(chunk_size):
    dtype = torch.float64
    img, txt, all_img, all_txt, neg = _leaves(dtype, (3, 4), (3, 4), (9, 4), (9, 4), (2, 4), seed=1)
    # this rank's rows are rows 3..5 of the gathered batch
    all_img, all_txt = torch.cat([all_img[:3], img, all_img[6:]]), torch.cat([all_txt[:3], txt, all_txt[6:]])
    log_scale = torch.tensor(1.3, dtype=dtype, requires_grad=True)
    kw = dict(
        all_image_features=all_img, all_text_features=all_txt, offset=3, text_negatives=neg, chunk_size=chunk_size
    )
    fast = clip_loss(img, txt, log_scale.exp(), **kw)
    ref = naive_clip(img, txt, log_scale, all_img, all_txt, 3, neg)
    torch.testing.assert_close(fast, ref, atol=1e-9, rtol=1e-9)
    leaves = [img, txt, neg, log_scale]
    for a, b in zip(_grads(fast, leaves), _grads(ref, leaves), strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_clip_loss_known_values():
    """Perfectly aligned orthogonal pairs: loss = log(1 + (N-1) e^{-s}); identical rows: log N."""
    n, s = 4, 10.0
    eye = torch.eye(n, dtype=torch.float64)
    assert clip_loss(eye, eye, s).item() == pytest.approx(math.log(1 + (n - 1) * math.exp(-s)), rel=1e-12)
    same = torch.ones(n, 3, dtype=torch.float64)
    assert clip_loss(same, same, s).item() == pytest.approx(math.log(n), rel=1e-12)


def test_clip_loss_float32_logits_under_autocast():
    img, txt = (t.detach().bfloat16() for t in _leaves(torch.float32, (8, 16), (8, 16), seed=2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = clip_loss(img, txt, torch.tensor(14.0))
    assert out.dtype == torch.float32
    ref = clip_loss(img.float(), txt.float(), 14.0)
    torch.testing.assert_close(out, ref)


def test_clip_loss_rejects_bad_input():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="logit_scale"):
        clip_loss(x, x, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(x, torch.randn(5, 3), 1.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_siglip_loss_equals_naive_value_and_gradients(dtype):
    img, txt = _leaves(dtype, (5, 4), (5, 4), seed=4)
    log_scale = torch.tensor(math.log(10.0), dtype=dtype, requires_grad=True)
    bias = torch.tensor(-3.0, dtype=dtype, requires_grad=True)
    fast = siglip_loss(img, txt, log_scale.exp(), bias)
    ref = naive_siglip(img, txt, log_scale, bias)
    torch.testing.assert_close(fast, ref, atol=TOL[dtype], rtol=TOL[dtype])
    leaves = [img, txt, log_scale, bias]
    for a, b in zip(_grads(fast, leaves), _grads(ref, leaves), strict=True):
        torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=TOL[dtype])


def test_siglip_loss_with_gathered_texts_and_negatives():
    dtype = torch.float64
    img, txt, all_txt, neg = _leaves(dtype, (2, 3), (2, 3), (6, 3), (3, 3), seed=5)
    all_txt = torch.cat([all_txt[:4], txt])
    log_scale = torch.tensor(2.0, dtype=dtype, requires_grad=True)
    fast = siglip_loss(img, txt, log_scale.exp(), -1.0, all_text_features=all_txt, offset=4, text_negatives=neg)
    ref = naive_siglip(img, txt, log_scale, -1.0, all_txt, 4, neg)
    torch.testing.assert_close(fast, ref, atol=1e-9, rtol=1e-9)
    for a, b in zip(_grads(fast, [img, txt, log_scale]), _grads(ref, [img, txt, log_scale]), strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_loss_modules():
    clip = CLIPLoss()
    assert clip.init_logit_scale == pytest.approx(math.log(1 / 0.07))
    sig = SigLIPLoss()
    assert sig.init_logit_scale == pytest.approx(math.log(10.0))
    assert [n for n, _ in sig.named_parameters()] == ["logit_bias"]
    img, txt = _leaves(torch.float64, (3, 4), (3, 4), seed=6)
    ref = naive_siglip(img, txt, torch.tensor(math.log(10.0), dtype=torch.float64), torch.tensor(-10.0))
    torch.testing.assert_close(sig(img, txt, torch.tensor(10.0, dtype=torch.float64)), ref.to(torch.float64))
    (grad,) = torch.autograd.grad(sig(img, txt, torch.tensor(10.0)), [sig.logit_bias])
    assert grad.abs() > 0
    with pytest.raises(ValueError, match="loss.init_temperature"):
        CLIPLoss(init_temperature=0.0)
