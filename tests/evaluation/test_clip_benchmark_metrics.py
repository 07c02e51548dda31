"""The CLIP metrics as clip_benchmark reports them, against naive loops in float32 and float64: zero-shot top-1,
top-5 and mean per-class recall; image->text and text->image recall@1/5/10 with several captions per image (a hit
is any of the image's captions). And the prompt-template sets."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
from writers import write_image_text_csv

from contrastlab.data.image_text_csv import ImageTextCSVDataModule
from contrastlab.data.templates import DEFAULT_TEMPLATES, TemplatesError, resolve_templates
from contrastlab.evaluation.cross_modal import cross_modal_retrieval
from contrastlab.evaluation.zero_shot import zero_shot_metrics

DTYPES = [torch.float32, torch.float64]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a.double(), b.double()) / (a.double().norm() * b.double().norm()))


def naive_zero_shot(images, labels, classifier) -> dict[str, float]:
    """Per image: classes sorted by cosine; top-1 / top-5 hit; recall of each class present, then their mean."""
    hits1, hits5, per_class = [], [], {}
    for x, y in zip(images, labels.tolist(), strict=True):
        if y < 0:
            continue
        scores = [cosine(x, w) for w in classifier]
        order = sorted(range(len(scores)), key=lambda c: -scores[c])
        hits1.append(order[0] == y)
        hits5.append(y in order[:5])
        per_class.setdefault(y, []).append(order[0] == y)
    recalls = [sum(h) / len(h) for h in per_class.values()]
    top1, top5 = sum(hits1) / len(hits1), sum(hits5) / len(hits5)
    return {"top1": top1, "top5": top5, "mean_per_class_recall": sum(recalls) / len(recalls)}


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_shot_metrics_equal_a_naive_loop(dtype) -> None:
    g = torch.Generator().manual_seed(0)
    n_classes = 9
    classifier = torch.nn.functional.normalize(torch.randn(n_classes, 6, generator=g, dtype=dtype), dim=1)
    # unbalanced classes (class 0 common, class 8 absent) and unlabelled rows (-1)
    labels = torch.cat([torch.zeros(20, dtype=torch.long), torch.randint(-1, n_classes - 1, (40,), generator=g)])
    images = 0.6 * classifier[labels.clamp_min(0)] + torch.randn(60, 6, generator=g, dtype=dtype)
    got = zero_shot_metrics(images, labels, classifier, top=(1, 5), chunk_size=7)
    want = naive_zero_shot(images, labels, classifier)
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k
    assert got["mean_per_class_recall"] != pytest.approx(got["top1"])  # unbalanced: they differ here
    assert "top5" not in zero_shot_metrics(images, labels, classifier[:4], top=(1, 5))  # fewer than 5 classes


def naive_retrieval(images, texts, owner, ks=(1, 5, 10)) -> dict[str, float]:
    """clip_benchmark's definition: i2t hit@k = any of the image's captions among its k most similar texts;
    t2i hit@k = the caption's image among its k most similar images (captions owned by no image are gallery
    distractors only)."""
    out = {}
    for k in ks:
        i2t = []
        for i, x in enumerate(images):
            scores = [cosine(x, t) for t in texts]
            top = sorted(range(len(texts)), key=lambda j: -scores[j])[:k]
            i2t.append(any(int(owner[j]) == i for j in top))
        t2i = []
        for j, t in enumerate(texts):
            if int(owner[j]) < 0:
                continue
            scores = [cosine(t, x) for x in images]
            top = sorted(range(len(images)), key=lambda i: -scores[i])[:k]
            t2i.append(int(owner[j]) in top)
        out[f"i2t_recall@{k}"] = sum(i2t) / len(i2t)
        out[f"t2i_recall@{k}"] = sum(t2i) / len(t2i)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_image_text_recall_at_k_equals_a_naive_loop(dtype) -> None:
    g = torch.Generator().manual_seed(3)
    n_images, per_image = 17, [1, 5, 2, 3]  # COCO/Flickr style: several captions per image
    owner = torch.tensor([i for i in range(n_images) for _ in range(per_image[i % 4])] + [-1, -1])
    images = torch.randn(n_images, 8, generator=g, dtype=dtype)
    texts = 0.8 * images[owner.clamp_min(0)] + torch.randn(len(owner), 8, generator=g, dtype=dtype)
    got = cross_modal_retrieval(images, texts, owner, chunk_size=5)
    want = naive_retrieval(images, texts, owner)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k
    assert 0 < got["i2t_recall@1"] < got["i2t_recall@10"] <= 1  # a non-trivial case


def test_template_sets() -> None:
    openai = resolve_templates("openai_imagenet")
    assert openai == [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES] and len(openai) == 80
    assert resolve_templates(None) == resolve_templates("default") == list(DEFAULT_TEMPLATES)
    assert resolve_templates(["a {}", "one {}"]) == ["a {}", "one {}"]
    assert resolve_templates("itap of a {}.") == ["itap of a {}."]
    with pytest.raises(TemplatesError, match=r"data.templates=imagenet is neither a template set \(default, openai"):
        resolve_templates("imagenet", "data.templates")
    with pytest.raises(TemplatesError, match=r"template 'a photo' has no '\{\}'"):
        resolve_templates(["a photo"])


def test_a_caption_table_takes_a_template_set_or_file(tmp_path: Path) -> None:
    table = write_image_text_csv(tmp_path, n_images=12, labelled=True)
    dm = ImageTextCSVDataModule(path=str(table), label_key="shape", templates="openai_imagenet", batch_size=4)
    assert len(dm.templates) == 80
    (tmp_path / "prompts.txt").write_text("a {} drawing\n# a comment\n\na {} shape\n")
    dm = ImageTextCSVDataModule(path=str(table), templates=str(tmp_path / "prompts.txt"), batch_size=4)
    assert dm.templates == ["a {} drawing", "a {} shape"]
