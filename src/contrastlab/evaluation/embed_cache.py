"""Split embeddings shared by the callbacks of one validation, and split across ranks.

The kNN monitor, the collapse monitor and the embedding plots all need the encoder embeddings of
the same splits at the same moment; :func:`split_embeddings` computes each split once per
training position and hands the same tensors to every caller. The memo lives on the module and is
keyed by ``(split, global_step)``: weights change only at optimizer steps, so two calls at one
global step see the same encoder. Outside a Trainer nothing is memoised.

Under data parallelism each rank embeds only its share of a split (:func:`shard_loader`: a contiguous
run of whole batches, so every batch is the one a single process would embed) and the shares are
gathered in rank order (:func:`embed_across_ranks`); the kNN bank stays split (:func:`split_shard`).
Calls that gather are collective (every rank makes them, in the same order); they are memoised apart
from single-rank calls (the plots run on rank 0 only), which may reuse a gathered result but never
the other way round, so the ranks' memos always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, SequentialSampler, Subset

from contrastlab import distributed
from contrastlab.evaluation.embed import embed_loader

_ATTR = "_contrastlab_split_embeddings"
_LOADERS = {"train": "eval_train_dataloader", "val": "val_dataloader"}


def shard_loader(loader: Iterable[Any]) -> Iterable[Any] | None:
    """This rank's share of ``loader``: a ``DataLoader`` over a map-style dataset read in order (the evaluation
    loaders) is rebuilt over a contiguous run of its batches (ranks' runs differ by at most one batch; of its
    items when it has fewer batches than there are ranks), with the same batch size, collation and workers.
    ``None`` when it cannot be split that way (an iterable dataset, a shuffling or custom sampler, fewer items
    than ranks): every rank then embeds the whole loader. The loader itself in a single process."""
    if not distributed.is_distributed():
        return loader
    if not (
        isinstance(loader, DataLoader)
        and not isinstance(loader.dataset, IterableDataset)
        and isinstance(loader.sampler, SequentialSampler)
        and loader.batch_size is not None
    ):
        return None
    n, size = len(loader.dataset), loader.batch_size  # type: ignore[arg-type]
    if -(-n // size) >= distributed.world_size():  # whole batches: each the one a single process embeds
        first, last = distributed.shard_bounds(-(-n // size))
        start, end = first * size, min(last * size, n)
    elif n >= distributed.world_size():  # fewer batches than ranks: split the items
        start, end = distributed.shard_bounds(n)
    else:  # fewer items than ranks: a share would be empty (and have no width)
        return None
    workers = loader.num_workers
    return DataLoader(
        Subset(loader.dataset, range(start, end)),
        batch_size=size,
        shuffle=False,
        num_workers=workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context if workers > 0 else None,
        prefetch_factor=loader.prefetch_factor if workers > 0 else None,
    )


def embed_shard(
    fn: Callable[[Any], Tensor], loader: Iterable[Any], device: torch.device | str | None = None, **kwargs: Any
) -> tuple[Any, ...]:
    """:func:`~contrastlab.evaluation.embed.embed_loader` of this rank's share of ``loader``
    (:func:`shard_loader`); the ranks' shares partition the rows (a loader that cannot be split is embedded
    whole and its rows split). The whole loader in a single process."""
    shard = shard_loader(loader)
    if shard is not None:
        return embed_loader(fn, shard, device, **kwargs)
    out = embed_loader(fn, loader, device, **kwargs)  # every rank embedded everything: keep its share of rows
    start, end = distributed.shard_bounds(len(out[0]))
    return tuple(x[start:end] for x in out)


def embed_across_ranks(
    fn: Callable[[Any], Tensor], loader: Iterable[Any], device: torch.device | str | None = None, **kwargs: Any
) -> tuple[Any, ...]:
    """Like :func:`~contrastlab.evaluation.embed.embed_loader` (the same rows in the same order), with each
    rank embedding its share and the shares gathered (collective: every rank calls it)."""
    shard = shard_loader(loader)
    out = embed_loader(fn, loader if shard is None else shard, device, **kwargs)
    if shard is None or shard is loader:
        return out
    return tuple(distributed.gather_rows(x) if isinstance(x, Tensor) else distributed.gather_lists(x) for x in out)


def _memo(pl_module: L.LightningModule, key: tuple, compute: Callable[[], Any], reuse: tuple = ()) -> Any:
    """``compute()`` memoised under ``key`` (or an entry under one of ``reuse``) for this global step."""
    if pl_module._trainer is None:
        return compute()
    memo: dict = pl_module.__dict__.setdefault(_ATTR, {})
    step = pl_module.global_step
    for k in (key, *reuse):
        if (*k, step) in memo:
            return memo[(*k, step)]
    out = compute()
    for old in [k for k in memo if k[-1] != step]:
        del memo[old]
    memo[(*key, step)] = out
    return out


def _split_loader(datamodule: Any, split: str) -> Iterable[Any]:
    if split not in _LOADERS:
        raise ValueError(f"split must be one of {sorted(_LOADERS)}, got {split!r}")
    return getattr(datamodule, _LOADERS[split])()


def split_embeddings(
    pl_module: L.LightningModule, datamodule: Any, split: str, across_ranks: bool = False
) -> tuple[Tensor, Tensor]:
    """``(features (N, D) float32 CPU, labels (N,))`` of ``pl_module.embed`` on ``split`` (``train`` with
    the evaluation transform, or ``val``), computed in eval mode. With ``across_ranks`` (a collective call:
    every rank makes it) each rank embeds its share and every rank gets all rows."""
    if split not in _LOADERS:
        raise ValueError(f"split must be one of {sorted(_LOADERS)}, got {split!r}")
    gathered = across_ranks or not distributed.is_distributed()
    if gathered:
        return _memo(
            pl_module,
            (split, "all"),
            lambda: embed_across_ranks(pl_module.embed, _split_loader(datamodule, split), pl_module.device),
        )
    return _memo(
        pl_module,
        (split, "local"),
        lambda: embed_loader(pl_module.embed, _split_loader(datamodule, split), pl_module.device),
        reuse=((split, "all"),),
    )


def split_shard(pl_module: L.LightningModule, datamodule: Any, split: str) -> tuple[Tensor, Tensor]:
    """``(features, labels)`` of this rank's share of ``split`` (:func:`shard_loader`; all of it in a single
    process). The ranks' shares partition the split. Every rank must call it (its memo agrees across ranks)."""
    if not distributed.is_distributed():
        return split_embeddings(pl_module, datamodule, split)
    return _memo(
        pl_module,
        (split, "shard"),
        lambda: embed_shard(pl_module.embed, _split_loader(datamodule, split), pl_module.device),
    )
