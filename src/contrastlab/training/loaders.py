"""Loader settings for GPU runs, whatever datamodule builds the loaders (``trainer=gpu`` adds it).

:class:`LoaderSettings` sets ``pin_memory`` and ``prefetch_factor`` on every training and validation
``DataLoader`` the datamodule hands the trainer, as it is handed over (before Lightning starts iterating it):
batches in pinned (page-locked) host memory let Lightning's non-blocking copy to the GPU overlap the running
step, and ``prefetch_factor`` batches per worker are kept ready. Workers that stay alive between epochs
(``persistent_workers``) are the datamodules' default whenever ``data.num_workers > 0``. On a machine
without CUDA, memory is not pinned.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader


def _loaders(obj: Any) -> list[DataLoader]:
    """The DataLoaders in ``obj`` (a loader, or a list/tuple/dict of them, as Lightning holds them)."""
    if isinstance(obj, DataLoader):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, list | tuple):
        return [dl for item in obj for dl in _loaders(item)]
    return []


class LoaderSettings(L.Callback):
    """``pin_memory`` (when CUDA is available) and ``prefetch_factor`` (loaders with workers) of the trainer's
    training and validation loaders.

    Args:
        pin_memory: put batches in pinned host memory.
        prefetch_factor: batches each worker keeps ready (PyTorch's default: 2); None leaves it.
    """

    def __init__(self, pin_memory: bool = True, prefetch_factor: int | None = 4) -> None:
        if prefetch_factor is not None and int(prefetch_factor) < 1:
            raise ValueError(f"prefetch_factor must be >= 1 or null, got {prefetch_factor}.")
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor

    def apply(self, loaders: Any) -> Any:
        """Set the options on every DataLoader in ``loaders`` (returned unchanged otherwise)."""
        for dl in _loaders(loaders):
            _set(dl, "pin_memory", bool(self.pin_memory and torch.cuda.is_available()))
            if self.prefetch_factor is not None and dl.num_workers > 0:
                _set(dl, "prefetch_factor", int(self.prefetch_factor))
        return loaders

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Wrap the datamodule's ``train_dataloader`` and ``val_dataloader`` (once): Lightning starts iterating a
        loader as soon as it has it, so the options are set as the datamodule hands it over."""
        dm = getattr(trainer, "datamodule", None)
        if dm is None:
            return
        for name in ("train_dataloader", "val_dataloader"):
            original = getattr(dm, name, None)
            if original is None or getattr(original, "_loader_settings", None) is self:
                continue

            def handed_over(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                return self.apply(_original(*args, **kwargs))

            handed_over._loader_settings = self  # type: ignore[attr-defined]
            setattr(dm, name, handed_over)


def _set(dl: DataLoader, name: str, value: Any) -> None:
    """``dl.<name> = value``, also in the construction arguments Lightning saved to rebuild the loader (with a
    distributed sampler under DDP), so that the rebuilt loader keeps it."""
    setattr(dl, name, value)
    saved = getattr(dl, "__pl_saved_kwargs", None)
    if isinstance(saved, dict) and name in saved:
        saved[name] = value
