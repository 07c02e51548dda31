"""Zero-shot classification with a two-tower model (Radford et al. 2021).

Each class ``c`` becomes prompts ``template.format(name_c)`` for every template; its classifier
weight is the L2-normalised mean of the prompts' L2-normalised text embeddings::

    w_c = normalize( mean_t normalize(text(template_t(name_c))) )      (C, D)
    prediction(x) = argmax_c  normalize(image(x)) . w_c

Images are scored in chunks of ``chunk_size`` rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


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
    w = classifier.float().to(image_features.device)
    return torch.cat([F.normalize(x.float(), dim=1) @ w.T for x in image_features.split(chunk_size)])


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
