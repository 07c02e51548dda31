"""Split embeddings shared by the callbacks of one validation.

The kNN monitor, the collapse monitor and the embedding plots all need the encoder embeddings of
the same splits at the same moment; :func:`split_embeddings` computes each split once per
training position and hands the same tensors to every caller. The memo lives on the module and is
keyed by ``(split, global_step)``: weights change only at optimizer steps, so two calls at one
global step see the same encoder. Outside a Trainer nothing is memoised.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import Tensor

from contrastlab.evaluation.embed import embed_loader

_ATTR = "_contrastlab_split_embeddings"
_LOADERS = {"train": "eval_train_dataloader", "val": "val_dataloader"}


def split_embeddings(pl_module: L.LightningModule, datamodule: Any, split: str) -> tuple[Tensor, Tensor]:
    """``(features (N, D) float32 CPU, labels (N,))`` of ``pl_module.embed`` on ``split`` (``train`` with
    the evaluation transform, or ``val``), computed in eval mode."""
    if split not in _LOADERS:
        raise ValueError(f"split must be one of {sorted(_LOADERS)}, got {split!r}")
    in_fit = pl_module._trainer is not None
    key = (split, pl_module.global_step)
    memo: dict = pl_module.__dict__.setdefault(_ATTR, {})
    if in_fit and key in memo:
        return memo[key]
    feats, labels = embed_loader(pl_module.embed, getattr(datamodule, _LOADERS[split])(), pl_module.device)
    out = (feats, labels)
    if in_fit:
        for old in [k for k in memo if k[1] != key[1]]:
            del memo[old]
        memo[key] = out
    return out
