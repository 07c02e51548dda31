"""Zero-shot classification against a loop reference."""

from __future__ import annotations

import pytest
import torch

from contrastlab.evaluation.zero_shot import zero_shot_accuracy, zero_shot_classifier

CLASSES = ["circle", "square", "triangle", "cross", "star", "heart", "ring"]
TEMPLATES = ["a {}", "a photo of a {}.", "one {}"]


def fake_text_encoder(dim=5, seed=0):
    table: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(seed)

    def encode(texts):
        for t in texts:
            if t not in table:
                table[t] = torch.randn(dim, generator=g, dtype=torch.float64)
        return torch.stack([table[t] for t in texts])

    return encode


def test_classifier_and_accuracy_equal_loop_reference():
    encode = fake_text_encoder()
    w = zero_shot_classifier(encode, CLASSES, TEMPLATES)
    assert w.shape == (len(CLASSES), 5)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(40, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(-1, len(CLASSES), (40,), generator=g)
    # reference: per class, mean of normalised prompt embeddings, renormalised; argmax of cosine
    ref_w = []
    for name in CLASSES:
        embs = [encode([t.format(name)])[0] for t in TEMPLATES]
        mean = sum(e / e.norm() for e in embs) / len(embs)
        ref_w.append(mean / mean.norm())
    torch.testing.assert_close(w, torch.stack(ref_w).float())
    correct1 = correct5 = total = 0
    for x, y in zip(images, labels.tolist(), strict=True):
        if y < 0:
            continue
        scores = [float(torch.dot(x / x.norm(), wc.double())) for wc in ref_w]
        order = sorted(range(len(CLASSES)), key=lambda c: -scores[c])
        correct1 += order[0] == y
        correct5 += y in order[:5]
        total += 1
    acc = zero_shot_accuracy(images, labels, w, top=(1, 5, 10), chunk_size=7)
    assert acc[1] == pytest.approx(correct1 / total)
    assert acc[5] == pytest.approx(correct5 / total)
    assert 10 not in acc  # more than the number of classes


def test_separable_classes_are_recognised():
    encode = fake_text_encoder(dim=16, seed=2)
    w = zero_shot_classifier(encode, CLASSES, TEMPLATES)
    labels = torch.arange(len(CLASSES)).repeat(3)
    images = w.double()[labels] + 0.05 * torch.randn(len(labels), 16, dtype=torch.float64)
    assert zero_shot_accuracy(images, labels, w)[1] == 1.0


def test_bad_templates_are_refused():
    with pytest.raises(ValueError, match="placeholder"):
        zero_shot_classifier(fake_text_encoder(), CLASSES, ["a photo"])
    with pytest.raises(ValueError, match="labelled"):
        zero_shot_accuracy(torch.randn(3, 2), torch.full((3,), -1), torch.randn(2, 2))
