"""The base of image–caption datamodules (CLIP): pairs for training, images and captions for evaluation.

Batches (raw strings; the text tower tokenizes them)::

    train / val:  {"image": (B, C, H, W), "text": list[str] (B), "label": (B,), "index": (B,), "image_index": (B,)}
    evaluation:   val_image_dataloader() -> {"image", "label", "index"} over the unique val images, and
                  val_captions() -> (captions list[str], owner (N_captions,) long: the image of each caption)

A training item is one (image, caption) pair, so an image with several captions is seen once per
caption per epoch. Zero-shot evaluation uses ``class_names`` (index = label) and ``templates``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from contrastlab.data.base import ContrastiveDataModule, EvalDataset
from contrastlab.data.templates import resolve_templates
from contrastlab.data.transforms import to_float_image


@dataclass
class ImageTextSplit:
    """One split: ``images[i]`` is an image (tensor / PIL) or anything ``load`` turns into one,
    ``captions[i]`` its captions (at least one), ``labels[i]`` its class (-1 when unlabelled)."""

    images: Sequence[Any]
    captions: list[list[str]]
    labels: Tensor
    load: Callable[[Any], Any] = field(default=lambda x: x)

    def __post_init__(self) -> None:
        if not (len(self.images) == len(self.captions) == len(self.labels)):
            raise ValueError("images, captions and labels must have one entry per image")
        for i, caps in enumerate(self.captions):
            if not caps:
                raise ValueError(f"image {i} ({self.images[i]!r}) has no caption")

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> Any:
        return self.load(self.images[i])

    def subset(self, n: int) -> ImageTextSplit:
        return ImageTextSplit(self.images[:n], self.captions[:n], self.labels[:n], self.load)

    def pairs(self) -> list[tuple[int, str]]:
        """Every (image index, caption) pair, image-major."""
        return [(i, c) for i, caps in enumerate(self.captions) for c in caps]


class SplitImages(Dataset):
    """``(image, label)`` items of a split (what :class:`EvalDataset` and the kNN monitor expect)."""

    def __init__(self, split: ImageTextSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.split.image(i), int(self.split.labels[i])


class PairDataset(Dataset):
    """``{"image", "text", "label", "index", "image_index"}`` for each (image, caption) pair."""

    def __init__(self, split: ImageTextSplit, pairs: list[tuple[int, str]], transform: Callable[[Tensor], Tensor]):
        self.split, self.pairs, self.transform = split, pairs, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        img_idx, caption = self.pairs[i]
        image = self.transform(to_float_image(self.split.image(img_idx)))
        return {
            "image": image,
            "text": caption,
            "label": int(self.split.labels[img_idx]),
            "index": i,
            "image_index": img_idx,
        }


class ImageTextDataModule(ContrastiveDataModule):
    """Base for image–caption data. Subclasses implement :meth:`load_image_text` returning the
    ``(train, val)`` :class:`ImageTextSplit`.

    Args (beyond :class:`ContrastiveDataModule`'s):
        templates: zero-shot prompt templates with a ``{}`` for the class name: a list, a built-in set
            (``default``, ``openai_imagenet``) or a file (:mod:`contrastlab.data.templates`).
        class_names: names of the label ids (None: the subclass decides, or no zero-shot).
        batch_sampler: a ``partial`` of a batch sampler; it receives ``keys`` (the image id and the
            caption of every pair, for :class:`~contrastlab.data.no_duplicates.NoDuplicatesBatchSampler`)
            and/or ``labels``, whichever its signature names, plus ``batch_size`` and ``drop_last``.
    """

    has_captions = True
    has_images = True

    def __init__(
        self, templates: str | Sequence[str] = ("a {}.",), class_names: Sequence[str] | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("channels", 3)
        super().__init__(**kwargs)
        self.templates = resolve_templates(templates, "data.templates")
        self.class_names: list[str] | None = list(class_names) if class_names is not None else None
        self.train_split: ImageTextSplit | None = None
        self.val_split: ImageTextSplit | None = None

    # --- to implement -------------------------------------------------------------------------
    def load_image_text(self) -> tuple[ImageTextSplit, ImageTextSplit]:
        raise NotImplementedError

    # --- splits -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_split is not None:
            return
        train, val = self.load_image_text()
        if self.limit_samples:
            train, val = train.subset(self.limit_samples), val.subset(self.limit_samples)
        self.train_split, self.val_split = train, val
        self.train_base, self.val_base = SplitImages(train), SplitImages(val)

    @property
    def has_labels(self) -> bool:  # type: ignore[override]
        self.setup()
        return bool((self.train_split.labels >= 0).any())  # type: ignore[union-attr]

    def train_texts(self) -> list[str]:
        """Every training caption (what an offline tokenizer's vocabulary is built from)."""
        self.setup()
        return [c for caps in self.train_split.captions for c in caps]  # type: ignore[union-attr]

    def val_captions(self) -> tuple[list[str], Tensor]:
        """All validation captions and the index of the val image each belongs to."""
        self.setup()
        pairs = self.val_split.pairs()  # type: ignore[union-attr]
        return [c for _, c in pairs], torch.tensor([i for i, _ in pairs], dtype=torch.long)

    # --- transforms ---------------------------------------------------------------------------
    def prepare(self, img: Tensor) -> Tensor:
        """A float image at ``image_size`` x ``image_size``, before normalisation (default: resize)."""
        if img.shape[-1] != self.image_size or img.shape[-2] != self.image_size:
            img = v2.functional.resize(img, [self.image_size, self.image_size], antialias=True)
        return img

    def eval_transform(self, img: Tensor) -> Tensor:
        return self.normalize(self.prepare(img))

    def train_transform(self, img: Tensor) -> Tensor:
        """Per-item augmentation; a batched augmentation (``augment.batched``) runs later, on the device."""
        if self.augment is None:
            return self.eval_transform(img)
        if getattr(self.augment, "batched", False):
            return self.prepare(img)
        return self.normalize(self.augment(img))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = getattr(self, "trainer", None)
        training = trainer is not None and trainer.training
        if training and isinstance(batch, dict) and "image" in batch and getattr(self.augment, "batched", False):
            batch["image"] = self.normalize(self.augment(batch["image"]))  # type: ignore[misc]
        return batch

    # --- loaders ------------------------------------------------------------------------------

    def _pair_sampler(self, pairs: list[tuple[int, str]]) -> Any:
        params = inspect.signature(self.batch_sampler).parameters
        kw: dict[str, Any] = {"batch_size": self.batch_size, "drop_last": self.drop_last}
        if "keys" in params:
            kw["keys"] = [(("image", i), ("text", c)) for i, c in pairs]
        if "labels" in params:
            kw["labels"] = torch.tensor([int(self.train_split.labels[i]) for i, _ in pairs])  # type: ignore[union-attr]
        sampler = self.batch_sampler(**kw)
        if len(sampler) == 0:
            raise ValueError(
                f"data.batch_sampler forms no batch of data.batch_size={self.batch_size} from the {len(pairs)} "
                "training pairs (too few distinct images or captions); set data.batch_size lower "
                "or data.batch_sampler=null."
            )
        return sampler

    def train_dataloader(self) -> DataLoader:
        self.setup()
        pairs = self.train_split.pairs()  # type: ignore[union-attr]
        ds = PairDataset(self.train_split, pairs, self.train_transform)  # type: ignore[arg-type]
        if self.batch_sampler is not None:
            return DataLoader(
                ds,
                batch_sampler=self._pair_sampler(pairs),
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
            )
        return self._loader(ds, shuffle=True, drop_last=self.drop_last)

    def val_dataloader(self) -> DataLoader:
        """One pair per val image (its first caption), for the validation loss."""
        self.setup()
        first = [(i, caps[0]) for i, caps in enumerate(self.val_split.captions)]  # type: ignore[union-attr]
        return self._loader(PairDataset(self.val_split, first, self.eval_transform), shuffle=False)  # type: ignore[arg-type]

    def val_image_dataloader(self) -> DataLoader:
        """The unique val images, ``{"image", "label", "index"}``, in order (row ``i`` = image ``i``)."""
        self.setup()
        return self._loader(EvalDataset(self.val_base, self.eval_transform), shuffle=False)  # type: ignore[arg-type]
