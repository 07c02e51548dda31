"""Unit tests of the foundation pieces: encoders, heads, augmentation, digits data, schedules, kNN."""

from __future__ import annotations

import math

import pytest
import torch

from contrastlab.data import DigitsDataModule, SimCLRAugment
from contrastlab.encoders import ProjectionHead, SmallCNN, TimmEncoder
from contrastlab.evaluation.knn import knn_accuracy, knn_neighbours, knn_predict
from contrastlab.objectives.optim import param_groups, scaled_lr, warmup_cosine


def test_small_cnn_and_heads_shapes() -> None:
    enc = SmallCNN(in_chans=1, width=8, stages=3, out_dim=32)
    z = enc(torch.randn(4, 1, 16, 16))
    assert z.shape == (4, 32) and enc.out_dim == 32
    assert ProjectionHead(32, hidden_dim=16, out_dim=8, num_layers=3)(z).shape == (4, 8)
    assert ProjectionHead(32, out_dim=8, num_layers=1, batch_norm=False)(z).shape == (4, 8)
    ident = ProjectionHead(32, num_layers=0)
    assert ident.out_dim == 32 and torch.equal(ident(z), z)


def test_timm_encoder_cifar_stem() -> None:
    enc = TimmEncoder("resnet18", in_chans=3, cifar_stem=True)
    assert enc.model.conv1.kernel_size == (3, 3) and enc.model.conv1.stride == (1, 1)
    assert isinstance(enc.model.maxpool, torch.nn.Identity)
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, enc.out_dim) == (2, 512)
    with pytest.raises(ValueError, match="cifar_stem"):
        TimmEncoder("vit_tiny_patch16_224", cifar_stem=True)


def test_simclr_augment_shapes_and_randomness() -> None:
    aug = SimCLRAugment(image_size=16, crop_scale=(0.3, 1.0))
    x = torch.rand(3, 20, 20)
    a, b = aug(x), aug(x)
    assert a.shape == b.shape == (3, 16, 16)
    assert not torch.equal(a, b)


def test_digits_split_is_stratified_and_reproducible() -> None:
    dm = DigitsDataModule(batch_size=32, augment=SimCLRAugment(16, hflip_p=0, hue=False, saturation=False))
    dm.setup()
    assert len(dm.train_base) + len(dm.val_base) == 1797
    other = DigitsDataModule(batch_size=32)
    other.setup()
    assert torch.equal(dm.train_base.tensors[1], other.train_base.tensors[1])
    counts = torch.bincount(dm.val_base.tensors[1], minlength=10)
    assert counts.min() >= 30  # every class in val
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["views"]) == 2 and batch["views"][0].shape == (32, 1, 16, 16)
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[1:] == (1, 16, 16) and val["label"].dtype == torch.long


def test_warmup_cosine_schedule() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=100, warmup_steps=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_lr_scaling_rules() -> None:
    assert scaled_lr(0.3, 512, "none") == 0.3
    assert scaled_lr(0.3, 512, "linear") == pytest.approx(0.6)
    assert scaled_lr(0.3, 1024, "sqrt") == pytest.approx(0.6)
    with pytest.raises(ValueError, match="lr_scaling"):
        scaled_lr(0.3, 512, "cubic")


def test_param_groups_exclude_bias_and_norm_from_decay() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and [p.shape for p in decay["params"]] == [(4, 3)]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3


def _naive_knn(train_x, train_y, query_x, k, t, num_classes):
    scores = torch.zeros(len(query_x), num_classes, dtype=torch.float64)
    for i, q in enumerate(query_x):
        sims = [
            (float(torch.nn.functional.cosine_similarity(q, x, dim=0)), int(y))
            for x, y in zip(train_x, train_y, strict=True)
        ]
        sims.sort(key=lambda s: -s[0])
        for s, y in sims[:k]:
            scores[i, y] += math.exp(s / t)
    return scores


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_knn_matches_naive_loop(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    tx, ty = torch.randn(40, 5, generator=g, dtype=dtype), torch.randint(0, 3, (40,), generator=g)
    qx, qy = torch.randn(12, 5, generator=g, dtype=dtype), torch.randint(0, 3, (12,), generator=g)
    fast = knn_predict(tx, ty, qx, k=7, temperature=0.5, num_classes=3, chunk_size=5)
    ref = _naive_knn(tx.double(), ty, qx.double(), 7, 0.5, 3)
    torch.testing.assert_close(fast.double(), ref, rtol=1e-4, atol=1e-4)
    acc = knn_accuracy(tx, ty, qx, qy, k=7, temperature=0.5, top=(1, 2))
    assert acc[1] == pytest.approx(float((ref.argmax(1) == qy).float().mean()))
    assert acc[1] <= acc[2] <= 1.0


@pytest.mark.parametrize("bank_chunk_size", [3, 7, 40])
def test_knn_with_the_bank_in_chunks_matches_naive_loop(bank_chunk_size: int) -> None:
    g = torch.Generator().manual_seed(1)
    tx, ty = torch.randn(40, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,), generator=g)
    qx = torch.randn(12, 5, generator=g, dtype=torch.float64)
    fast = knn_predict(tx, ty, qx, k=7, temperature=0.5, num_classes=3, chunk_size=5, bank_chunk_size=bank_chunk_size)
    torch.testing.assert_close(fast.double(), _naive_knn(tx, ty, qx, 7, 0.5, 3), rtol=1e-5, atol=1e-5)


def test_knn_against_a_million_rows_holds_one_block_of_similarities_at_a_time(monkeypatch) -> None:
    """A bank of 2^20 rows: no similarity block larger than chunk_size x bank_chunk_size is ever formed, and the
    neighbours are those of the whole (Q, N) similarity matrix."""
    g = torch.Generator().manual_seed(2)
    tx, ty = torch.randn(2**20, 4, generator=g), torch.randint(0, 10, (2**20,), generator=g)
    qx = torch.randn(8, 4, generator=g)
    largest: list[int] = []
    topk = torch.Tensor.topk
    monkeypatch.setattr(torch.Tensor, "topk", lambda t, *a, **kw: largest.append(t.numel()) or topk(t, *a, **kw))
    sims, labels = knn_neighbours(tx, ty, qx, k=5, chunk_size=8, bank_chunk_size=2**16)
    monkeypatch.undo()
    assert max(largest) <= 8 * 2**16
    full = torch.nn.functional.normalize(qx, dim=1) @ torch.nn.functional.normalize(tx, dim=1).T
    want, idx = full.topk(5, dim=1)
    torch.testing.assert_close(sims, want)
    assert torch.equal(labels, ty[idx])


def test_knn_perfect_on_separated_clusters() -> None:
    centers = torch.eye(4) * 10
    tx = centers.repeat_interleave(5, 0) + 0.01 * torch.randn(20, 4)
    ty = torch.arange(4).repeat_interleave(5)
    assert knn_accuracy(tx, ty, centers, torch.arange(4), k=5)[1] == 1.0


def test_batch_augment_per_sample_randomness_and_range() -> None:
    from contrastlab.data import BatchSimCLRAugment

    aug = BatchSimCLRAugment(image_size=12, crop_scale=(0.3, 1.0), rotation=15, hflip_p=0.5, grayscale_p=0.5)
    x = torch.rand(1, 3, 16, 16).expand(8, 3, 16, 16).contiguous()
    out = aug(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 12, 12) and out.min() >= 0 and out.max() <= 1
    # one image repeated 8 times gets 8 different augmentations
    assert len({tuple(o.flatten()[:20].tolist()) for o in out}) == 8
    again = aug(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, again)


def test_batch_augment_identity_settings_keep_the_image() -> None:
    from contrastlab.data import BatchSimCLRAugment

    aug = BatchSimCLRAugment(
        image_size=8,
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        hflip_p=0,
        jitter_p=0,
        grayscale_p=0,
        blur_p=0,
    )
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(aug(x), x, atol=1e-5, rtol=0)
    flip = BatchSimCLRAugment(
        image_size=8,
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        hflip_p=1.0,
        jitter_p=0,
        grayscale_p=0,
        blur_p=0,
    )
    torch.testing.assert_close(flip(x), x.flip(-1), atol=1e-5, rtol=0)


def test_datamodule_applies_batched_augment_after_transfer() -> None:
    from contrastlab.data import BatchSimCLRAugment

    dm = DigitsDataModule(batch_size=16, augment=BatchSimCLRAugment(16, hflip_p=0, saturation=False))
    batch = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["views"][0], batch["views"][1])  # raw images until the device hook
    batch = dm.on_after_batch_transfer(batch, 0)
    assert batch["views"][0].shape == (16, 1, 16, 16) and not torch.equal(batch["views"][0], batch["views"][1])
