"""The datamodule every dataset builds on: splits, multi-view training set, evaluation sets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from contrastlab.data.transforms import MultiView, to_float_image
from contrastlab.negatives.ann import MinedNegativesDataset
from contrastlab.negatives.kinds import MiningDataSource


class DataCapabilities:
    """What a datamodule's items hold, declared on its class so that start-up checks read it before
    anything is built, and objectives and callbacks read it from the instance.

    ``has_labels``: items carry class labels (>= 0). On the class it says whether they can; an
    instance that learns otherwise from its files (an image folder without class sub-folders, a
    caption table without labels) overrides it (an attribute or a property).
    ``has_images``: items hold images (what the image evaluation callbacks embed).
    ``has_captions``: items are image–caption pairs (CLIP). ``has_text_pairs``: query–document text
    pairs (the bi-encoder).
    """

    has_labels: bool = True
    has_images: ClassVar[bool] = True
    has_captions: ClassVar[bool] = False
    has_text_pairs: ClassVar[bool] = False

    @classmethod
    def labels_possible(cls) -> bool:
        """The class-level answer of ``has_labels`` (before instantiation): False only when the class
        declares ``has_labels = False``; a per-instance property counts as possible."""
        declared = cls.has_labels
        return declared if isinstance(declared, bool) else True


_UNDECLARED = DataCapabilities()


def capabilities(datamodule: object) -> DataCapabilities:
    """``datamodule`` itself when it declares its capabilities (every contrastlab datamodule does),
    else the defaults of :class:`DataCapabilities` (a LightningDataModule from elsewhere)."""
    return datamodule if isinstance(datamodule, DataCapabilities) else _UNDECLARED


class ViewsDataset(Dataset):
    """Wraps a ``(image, label)`` dataset into ``{"views": [...], "label", "index"}`` items."""

    def __init__(self, base: Dataset, transform: MultiView) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        img, label = self.base[i]
        return {"views": self.transform(img), "label": int(label), "index": i}


class EvalDataset(Dataset):
    """Wraps a ``(image, label)`` dataset into ``{"image", "label", "index"}`` with a fixed transform."""

    def __init__(self, base: Dataset, transform: Callable[[Tensor], Tensor]) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        img, label = self.base[i]
        return {"image": self.transform(to_float_image(img)), "label": int(label), "index": i}


class ContrastiveDataModule(DataCapabilities, L.LightningDataModule, MiningDataSource):
    """Base datamodule. Subclasses implement :meth:`load_splits` returning ``(train, val)``
    datasets of ``(image, label)`` pairs (label -1 when unlabelled). Capabilities: labelled images
    (:class:`DataCapabilities`; subclasses declare otherwise); it serves offline-mined negatives
    (:class:`~contrastlab.negatives.kinds.MiningDataSource`) with the training items.

    Args:
        batch_size: per-process batch size (the global batch is ``batch_size * world_size``).
        augment: callable on a float (C, H, W) image, applied independently per view.
        views: number of augmented views per training item.
        mean, std: per-channel normalisation applied after augmentation.
        limit_samples: keep only the first N train and val items (debug runs).
        drop_last: drop the last uneven training batch (needed for cross-rank negatives).
    """

    def __init__(
        self,
        batch_size: int = 256,
        num_workers: int = 0,
        data_dir: str | None = None,
        augment: Callable[[Tensor], Tensor] | None = None,
        views: int = 2,
        image_size: int = 32,
        channels: int = 3,
        num_classes: int | None = None,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        val_fraction: float = 0.2,
        seed: int = 0,
        limit_samples: int | None = None,
        drop_last: bool = True,
        download: bool = False,
        batch_sampler: Any = None,
    ) -> None:
        super().__init__()
        self.batch_size, self.num_workers, self.data_dir = batch_size, num_workers, data_dir
        self.augment, self.views = augment, views
        self.image_size, self.channels, self.num_classes = image_size, channels, num_classes
        self.normalize = v2.Normalize(list(mean), list(std))
        self.val_fraction, self.seed, self.limit_samples = val_fraction, seed, limit_samples
        self.drop_last, self.download = drop_last, download
        self.batch_sampler = batch_sampler  # a partial taking (labels, batch_size, drop_last) or None
        self.train_base: Dataset | None = None
        self.val_base: Dataset | None = None
        self.mined_negatives: Tensor | None = None  # (N, m) served with each training item (set_mined_negatives)

    # --- to implement -------------------------------------------------------------------------
    def load_splits(self) -> tuple[Dataset, Dataset]:
        raise NotImplementedError

    # --- shared machinery ---------------------------------------------------------------------
    def eval_transform(self, img: Tensor) -> Tensor:
        """Resize to ``image_size`` (if needed) and normalise."""
        if img.shape[-1] != self.image_size or img.shape[-2] != self.image_size:
            img = v2.functional.resize(img, [self.image_size, self.image_size], antialias=True)
        return self.normalize(img)

    def setup(self, stage: str | None = None) -> None:
        if self.train_base is not None:
            return
        train, val = self.load_splits()
        if self.limit_samples:
            train = torch.utils.data.Subset(train, range(min(self.limit_samples, len(train))))  # type: ignore[arg-type]
            val = torch.utils.data.Subset(val, range(min(self.limit_samples, len(val))))  # type: ignore[arg-type]
        self.train_base, self.val_base = train, val

    def train_labels(self) -> Tensor:
        """Labels of the training split, (N,) long (-1 when unlabelled)."""
        self.setup()
        return torch.tensor([int(self.train_base[i][1]) for i in range(len(self.train_base))])  # type: ignore[index,arg-type]

    def _loader(self, ds: Dataset, shuffle: bool, drop_last: bool = False, batch_size: int | None = None) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size or self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        if self.augment is None:
            raise ValueError("no augmentation given; choose one with augment=<name> (e.g. augment=simclr).")
        ds = ViewsDataset(self.train_base, MultiView(self.augment, self.views, self.normalize))  # type: ignore[arg-type]
        if self.mined_negatives is not None:
            ds = MinedNegativesDataset(ds, self.mined_negatives)
        if self.batch_sampler is not None:
            labels = self.train_labels()
            sampler = self.batch_sampler(labels=labels, batch_size=self.batch_size, drop_last=self.drop_last)
            workers = self.num_workers
            return DataLoader(ds, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0)
        return self._loader(ds, shuffle=True, drop_last=self.drop_last)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Batched augmentations run here, on the device, once per view of a training batch."""
        if isinstance(batch, dict) and "views" in batch and getattr(self.augment, "batched", False):
            batch["views"] = [self.normalize(self.augment(v)) for v in batch["views"]]  # type: ignore[misc]
        return batch

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(EvalDataset(self.val_base, self.eval_transform), shuffle=False)  # type: ignore[arg-type]

    def eval_train_dataloader(self) -> DataLoader:
        """The training split with the evaluation transform (kNN memory, linear probe)."""
        self.setup()
        return self._loader(EvalDataset(self.train_base, self.eval_transform), shuffle=False)  # type: ignore[arg-type]

    # --- offline-mined negatives (MiningDataSource) ---------------------------------------------
    def train_loader_for_mining(self) -> DataLoader:
        """The training split in index order with the evaluation transform (what a miner embeds)."""
        return self.eval_train_dataloader()

    def set_mined_negatives(self, table: Tensor) -> None:
        """Serve with training item ``i`` the items ``table[i]`` (a shared (N, m) CPU tensor, refreshed in
        place by the miner) as ``"negatives"`` (:class:`~contrastlab.negatives.ann.MinedNegativesDataset`)."""
        self.mined_negatives = table
