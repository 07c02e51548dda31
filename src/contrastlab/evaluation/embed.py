"""The one loop that embeds a loader: ``fn`` applied to every batch, concatenated in loader order.

Every embedding pass (evaluation splits, augmented pairs, exported embeddings, caption and document
lists, search queries, the Python API) goes through :func:`embed_loader`: no gradients, the model in
eval mode for the pass (its previous mode restored afterwards), the input moved to ``device``, and
the features returned as float32 CPU tensors, optionally with per-row fields of the batches
(labels, ids, captions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

#: how the input is picked from a batch: a key (``batch[key]``), a function, or None (the batch itself)
Picker = str | Callable[[Any], Any] | None


def _to_device(x: Any, device: torch.device | str) -> Any:
    """Tensors (also inside a mapping, e.g. tokenised text) moved to ``device``; anything else unchanged."""
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x


def _owner(fn: Callable[..., Any]) -> nn.Module | None:
    """The module a bound method such as ``model.embed`` belongs to, else None."""
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def _field(batch: Any, name: str, n: int, fill: int | None) -> Tensor | list[Any]:
    """``batch[name]`` as a CPU tensor (a list for strings); ``fill`` repeated ``n`` times when absent
    and ``fill`` is given (else ``KeyError``)."""
    if name not in batch and fill is not None:
        return torch.full((n,), fill, dtype=torch.long)
    value = batch[name]
    if isinstance(value, list | tuple) and value and isinstance(value[0], str):
        return list(value)
    return torch.as_tensor(value).cpu()


@torch.no_grad()
def embed_loader(
    fn: Callable[[Any], Tensor],
    loader: Iterable[Any],
    device: torch.device | str | None = None,
    key: Picker = "image",
    fields: Sequence[str] = ("label",),
    fill: int | None = None,
    module: nn.Module | None = None,
) -> tuple[Any, ...]:
    """``(features (N, D) float32 on CPU, *fields)`` of ``fn`` over the batches of ``loader``, in order.

    Args:
        fn: ``(B, ...) -> (B, D)`` (e.g. ``model.embed``, ``model.encode_image``, a text tower taking a
            list of strings).
        loader: any iterable of batches (a ``DataLoader``, tensor chunks, lists of strings, ...).
        device: where the input goes; None: the device of ``module``'s parameters (CPU without any).
        key: the input of a batch: ``batch[key]``, ``key(batch)``, or the batch itself for ``None``.
        fields: per-row entries of each batch returned after the features, concatenated: a (N,) tensor
            each, or a list for strings (e.g. captions). The default gives ``(features, labels)``.
        fill: the value of a field a batch lacks (a long tensor); None: a missing field is a ``KeyError``.
        module: the model put in eval mode for the pass and restored to its mode afterwards; defaults
            to the owner of ``fn`` when ``fn`` is a bound method of a module.
    """
    module = module if module is not None else _owner(fn)
    if device is None:
        param = next(module.parameters(), None) if module is not None else None
        device = param.device if param is not None else "cpu"
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    feats: list[Tensor] = []
    extra: list[list[Any]] = [[] for _ in fields]
    try:
        for batch in loader:
            x = batch if key is None else key(batch) if callable(key) else batch[key]
            feats.append(fn(_to_device(x, device)).float().cpu())
            for parts, name in zip(extra, fields, strict=True):
                parts.append(_field(batch, name, feats[-1].shape[0], fill))
    finally:
        if module is not None:
            module.train(was_training)
    out: list[Any] = [torch.cat(feats)]
    for parts in extra:
        out.append([v for p in parts for v in p] if parts and isinstance(parts[0], list) else torch.cat(parts))
    return tuple(out)
