"""Zero-shot classification with a two-tower model (Radford et al. 2021).

Each class ``c`` becomes prompts ``template.format(name_c)`` for every template; its classifier
weight is the L2-normalised mean of the prompts' L2-normalised text embeddings::

    w_c = normalize( mean_t normalize(text(template_t(name_c))) )      (C, D)
    prediction(x) = argmax_c  normalize(image(x)) . w_c

Images are scored in chunks of ``chunk_size`` rows, in float32 (float64 when the image features or the
classifier are float64).
:func:`zero_shot_metrics` reports what clip_benchmark reports for classification: top-1 and top-5
accuracy and the mean per-class recall ``mean_c #{i : y_i = c, pred_i = c} / #{i : y_i = c}`` over
the classes present among the labels (balanced accuracy; equal to top-1 when classes are balanced).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; anything else is scored in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.no_grad()
def zero_shot_classifier(
    encode_text: Callable[[list[str]], Tensor], class_names: Sequence[str], templates: Sequence[str]
) -> Tensor:
    """(C, D) classifier weights; ``encode_text`` maps a list of strings to (n, D) features."""
    if not class_names or not templates:
        raise ValueError("zero-shot classification needs class names and at least one prompt template.")
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"prompt template '{t}' has no '{{}}' placeholder for the class name.")
    prompts = [t.format(name) for name in class_names for t in templates]
    z = F.normalize(encode_text(prompts).float(), dim=1).reshape(len(class_names), len(templates), -1)
    return F.normalize(z.mean(1), dim=1)


@torch.no_grad()
def zero_shot_scores(image_features: Tensor, classifier: Tensor, chunk_size: int = 4096) -> Tensor:
    """(N, C) cosine scores of each image against each class weight."""
    dtype = torch.promote_types(_dtype(image_features), _dtype(classifier))
    w = classifier.to(image_features.device, dtype)
    return torch.cat([F.normalize(x.to(dtype), dim=1) @ w.T for x in image_features.split(chunk_size)])


def zero_shot_accuracy(
    image_features: Tensor,
    labels: Tensor,
    classifier: Tensor,
    top: Sequence[int] = (1, 5),
    chunk_size: int = 4096,
) -> dict[int, float]:
    """Top-``t`` accuracy for each ``t`` in ``top`` (t <= number of classes) over images with a label >= 0."""
    keep = labels >= 0
    if not bool(keep.any()):
        raise ValueError("zero-shot accuracy needs labelled images (labels >= 0).")
    scores = zero_shot_scores(image_features[keep.to(image_features.device)], classifier, chunk_size)
    y = labels[keep].to(scores.device)
    out = {}
    for t in top:
        if t > classifier.shape[0]:
            continue
        pred = scores.topk(t, dim=1).indices
        out[t] = float((pred == y[:, None]).any(1).double().mean())
    return out


def zero_shot_metrics(
    image_features: Tensor,
    labels: Tensor,
    classifier: Tensor,
    top: Sequence[int] = (1, 5),
    chunk_size: int = 4096,
) -> dict[str, float]:
    """clip_benchmark's classification metrics over the images with a label >= 0: ``top{t}`` accuracy for
    each ``t`` in ``top`` (t <= number of classes) and ``mean_per_class_recall`` (see the module docstring)."""
    keep = labels >= 0
    if not bool(keep.any()):
        raise ValueError("zero-shot accuracy needs labelled images (labels >= 0).")
    scores = zero_shot_scores(image_features[keep.to(image_features.device)], classifier, chunk_size)
    y = labels[keep].to(scores.device)
    ranked = scores.topk(min(max(top, default=1), scores.shape[1]), dim=1).indices  # (N, k) best classes first
    hits = ranked == y[:, None]
    out = {f"top{t}": float(hits[:, :t].any(1).double().mean()) for t in top if t <= scores.shape[1]}
    correct = hits[:, 0].double()
    out["mean_per_class_recall"] = float(torch.stack([correct[y == c].mean() for c in y.unique()]).mean())
    return out
