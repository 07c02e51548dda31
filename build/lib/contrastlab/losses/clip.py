"""CLIP and SigLIP losses for two towers (image–text, or query–document for text bi-encoders).

For a batch of ``N`` pairs with L2-normalised image features ``I`` (N, D) and text features
``T`` (N, D) and a scale ``s = exp(logit_scale)`` (already exponentiated when passed here)::

    CLIP:   L = ( CE(s * I Tᵀ, arange(N)) + CE(s * T Iᵀ, arange(N)) ) / 2        (Radford et al. 2021)
    SigLIP: L = -1/N * sum_ij log sigmoid( z_ij * (s * I_i . T_j + b) ),   z_ij = +1 if i == j else -1
                                                                             (Zhai et al. 2023)

CLIP is two InfoNCE terms, so it is computed by :func:`contrastlab.losses.info_nce` with
``temperature = 1 / s`` (a tensor, so gradients reach ``logit_scale``); a faster InfoNCE makes
CLIP faster too. Logits are float32 even under autocast (float64 inputs stay float64).

Under data parallelism the caller passes the gathered features of every rank as ``all_*_features``
(rank-major) and ``offset``, where this rank's rows start: each local row is contrasted with the
global batch and its positive is key ``offset + i``. Extra ``text_negatives`` (K, D) (hard negatives
of a bi-encoder) are appended to the text keys of the image→text term; they are nobody's positive.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastlab.losses.info_nce import info_nce


def _as_scale(logit_scale: Tensor | float, like: Tensor) -> Tensor:
    if not isinstance(logit_scale, Tensor) and logit_scale <= 0:  # tensors: exp() of a parameter, no device sync
        raise ValueError(f"logit_scale must be > 0 (the exponentiated scale), got {logit_scale}")
    dtype = torch.promote_types(like.dtype, torch.float32) if not isinstance(logit_scale, Tensor) else None
    scale = torch.as_tensor(logit_scale, device=like.device, dtype=dtype)
    if not scale.is_floating_point() or scale.dtype in (torch.float16, torch.bfloat16):
        scale = scale.float()
    if scale.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar, got shape {tuple(scale.shape)}")
    return scale.reshape(())


def _keys(local: Tensor, gathered: Tensor | None, extra: Tensor | None = None) -> Tensor:
    keys = local if gathered is None else gathered
    return keys if extra is None else torch.cat([keys, extra.to(keys.dtype)], dim=0)


def _check_pairs(image_features: Tensor, text_features: Tensor) -> None:
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            "image_features and text_features must both be (N, D) with the same shape, got "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )


def clip_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor | float,
    *,
    all_image_features: Tensor | None = None,
    all_text_features: Tensor | None = None,
    offset: int = 0,
    text_negatives: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Symmetric CLIP cross-entropy of ``N`` matched pairs; returns a scalar.

    Args:
        image_features, text_features: (N, D); row ``i`` of each is a matched pair. Normalised inside.
        logit_scale: the multiplier ``s > 0`` (i.e. ``exp`` of the learnable parameter), scalar.
        all_image_features, all_text_features: (M, D) keys from every rank (default: the local rows).
        offset: index of local row 0 among the keys.
        text_negatives: (K, D) extra text keys for the image→text direction.
        chunk_size: rows per block of the similarity matrix in :func:`info_nce` (None: its choice).
    """
    _check_pairs(image_features, text_features)
    scale = _as_scale(logit_scale, image_features)
    temperature = scale.reciprocal()
    positives = offset + torch.arange(image_features.shape[0], device=image_features.device)
    text_keys = _keys(text_features, all_text_features, text_negatives)
    i2t = info_nce(image_features, text_keys, positives, temperature, chunk_size=chunk_size)
    t2i = info_nce(
        text_features, _keys(image_features, all_image_features), positives, temperature, chunk_size=chunk_size
    )
    return (i2t + t2i) / 2


def siglip_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor | float,
    logit_bias: Tensor | float,
    *,
    all_text_features: Tensor | None = None,
    offset: int = 0,
    text_negatives: Tensor | None = None,
) -> Tensor:
    """Sigmoid pairwise loss of ``N`` matched pairs against ``M`` text keys, summed over keys and
    averaged over the ``N`` local images; returns a scalar.

    Every (image, text) cell is an independent binary problem, so across ranks the image-side rows
    of all ranks together cover the global N_g x N_g matrix once: only the texts need gathering.
    """
    _check_pairs(image_features, text_features)
    scale = _as_scale(logit_scale, image_features)
    dtype = torch.promote_types(torch.promote_types(image_features.dtype, text_features.dtype), torch.float32)
    with torch.autocast(device_type=image_features.device.type, enabled=False):
        img = F.normalize(image_features.to(dtype), dim=1)
        txt = F.normalize(_keys(text_features, all_text_features, text_negatives).to(dtype), dim=1)
        bias = torch.as_tensor(logit_bias, device=img.device).to(dtype)
        logits = img @ txt.T * scale.to(dtype) + bias
        n = img.shape[0]
        signs = -torch.ones_like(logits)
        signs[torch.arange(n, device=img.device), offset + torch.arange(n, device=img.device)] = 1.0
        return -F.logsigmoid(signs * logits).sum() / n


class CLIPLoss(nn.Module):
    """Module form of :func:`clip_loss`. ``init_temperature`` is where the objective starts its
    learnable ``logit_scale = log(1 / init_temperature)`` (CLIP: 0.07)."""

    consumes = "pairs"  # matched (image, text) rows, not a candidate set or triplets

    def __init__(self, init_temperature: float = 0.07, chunk_size: int | None = None) -> None:
        super().__init__()
        if init_temperature <= 0:
            raise ValueError(
                f"loss.init_temperature must be > 0, got {init_temperature}; set loss.init_temperature=0.07."
            )
        self.init_temperature, self.chunk_size = init_temperature, chunk_size

    @property
    def init_logit_scale(self) -> float:
        return math.log(1.0 / self.init_temperature)

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor, **kw: object) -> Tensor:
        return clip_loss(image_features, text_features, logit_scale, chunk_size=self.chunk_size, **kw)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return f"init_temperature={self.init_temperature}"


class SigLIPLoss(CLIPLoss):
    """Module form of :func:`siglip_loss` holding the learnable bias ``b`` (init -10) as a parameter.

    SigLIP starts at ``s = 10`` (``init_temperature=0.1``). Only texts are gathered across ranks, so
    ``all_image_features`` is accepted and ignored.
    """

    def __init__(self, init_temperature: float = 0.1, init_bias: float = -10.0, learn_bias: bool = True) -> None:
        super().__init__(init_temperature)
        self.logit_bias = nn.Parameter(torch.tensor(float(init_bias)), requires_grad=learn_bias)

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor, **kw: object) -> Tensor:
        kw.pop("all_image_features", None)
        return siglip_loss(image_features, text_features, logit_scale, self.logit_bias, **kw)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return f"init_temperature={self.init_temperature}, logit_bias={self.logit_bias.item():.3f}"
