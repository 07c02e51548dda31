"""``data=webdataset``: the datamodules that train from tar shards (SimCLR, triplet, CLIP).

``data.content`` picks the class: ``images`` (:class:`ImageShardsDataModule`: images, labels when the
samples have them) or ``captions`` (:class:`CaptionShardsDataModule`: image–caption pairs). Training
batches stream from :mod:`contrastlab.data.shard_stream` (every sample once per epoch across ranks x
workers, the same steps on every rank, exact mid-epoch resume). Validation shards (``data.val_urls``)
and the first ``data.eval_train_samples`` training samples (the kNN monitor's memory, an offline
tokenizer's texts) are read into memory, still encoded, at set-up and served as map-style datasets.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from contrastlab import distributed
from contrastlab.data.base import ContrastiveDataModule
from contrastlab.data.image_files import (
    ImageFileDataset,
    SkippedFiles,
    SkippedFilesReport,
    UnreadableImageError,
    UnreadableImageWarning,
    find_image_samples,
    warn_unreadable,
)
from contrastlab.data.image_text import ImageTextDataModule, ImageTextSplit
from contrastlab.data.imagefolder import IMAGENET_STATS
from contrastlab.data.shard_stream import (
    CLASSES_FILE,
    IMAGE_KEYS,
    RawSample,
    SampleFormat,
    Shard,
    ShardError,
    ShardLoader,
    ShardStream,
    StreamPlan,
    check_shards_exist,
    decode_image,
    expand_shard_urls,
    make_shards,
    read_json,
    read_split,
    shard_sizes,
    sibling,
)
from contrastlab.data.transforms import MultiView, to_float_image
from contrastlab.errors import ConfigError, ContrastlabWarning


class MemorySplit:
    """Samples read into memory (:func:`read_split`): decoded on request; a bad one is replaced by the next
    readable sample of the split (same label first) with a warning, and counted in ``skipped``."""

    def __init__(
        self,
        samples: list[RawSample],
        fmt: SampleFormat,
        decode: Callable[[bytes], Tensor],
        strict: bool,
        skipped: SkippedFiles,
    ) -> None:
        self.samples, self.fmt, self.decode, self.strict, self.skipped = samples, fmt, decode, strict, skipped
        self.labels = torch.tensor([fmt.label(s.raw) if s.raw else -1 for s in samples], dtype=torch.long)
        self.captions = [fmt.captions(s.raw) if s.raw else [] for s in samples]
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, i: int) -> Tensor | None:
        if i in self._bad:
            return None
        sample = self.samples[i]
        why = sample.error or "missing from the shard"
        data = self.fmt.image(sample.raw) if sample.raw is not None else None
        if data is not None:
            try:
                return self.decode(data)
            except Exception as err:  # any decoder failure
                why = f"{type(err).__name__}: {err}"
        elif sample.raw is not None:
            why = f"no image member ({'/'.join(self.fmt.image_keys)})"
        if self.strict:
            raise UnreadableImageError(
                f"cannot read sample {sample.name} ({why}); fix or remove it, "
                "or set data.strict=false to skip bad samples with a warning."
            )
        self._bad.add(i)
        warn_unreadable(f"sample {sample.name}", RuntimeError(why))
        return None

    def image(self, i: int) -> Tensor:
        img = self._read(i)
        if img is not None:
            return img
        self.skipped.add()
        n, label = len(self.samples), int(self.labels[i])
        for same_label in (True, False):
            for step in range(1, n):
                j = (i + step) % n
                if (int(self.labels[j]) == label) == same_label:
                    img = self._read(j)
                    if img is not None:
                        return img
        raise UnreadableImageError(f"none of the {n} samples of this split could be read ({self.samples[0].name}).")


class MemoryImages(Dataset):
    """``(uint8 image, label)`` items of a :class:`MemorySplit` (what the evaluation loaders wrap)."""

    def __init__(self, split: MemorySplit) -> None:
        self.split = split

    @property
    def targets(self) -> list[int]:
        return self.split.labels.tolist()

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.split.image(i), int(self.split.labels[i])


# ------------------------------------------------------------------------------------ datamodules
class ShardReport(SkippedFilesReport):
    """At the end of every training epoch (every validation when the stream is resampled): log
    ``data/skipped_samples`` (bad samples replaced, summed over ranks) and ``data/dropped_samples``
    (samples left out of each epoch so that all slots run the same batches)."""

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule  # type: ignore[attr-defined]
        n = dm.skipped.take()
        pl_module.log("data/skipped_samples", float(n), sync_dist=True, reduce_fx="sum")
        pl_module.log("data/dropped_samples", float(dm.dropped_per_epoch), sync_dist=True)
        if n:
            warnings.warn(
                f"epoch {trainer.current_epoch}: skipped {n} unreadable sample(s) (named in warnings above); "
                "set data.strict=true to stop at the first one.",
                UnreadableImageWarning,
                stacklevel=2,
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting and not trainer.sanity_checking and trainer.num_training_batches == float("inf"):
            self._report(trainer, pl_module)


class ShardSource:
    """What the shard datamodules share: the shards, their plan, the stream and the in-memory splits.

    Args (beyond the base datamodule's):
        urls: the training shards (brace notation, a list, local paths, ``pipe:`` commands, fsspec URLs).
        val_urls: validation shards (read into memory). val_dir: an image folder instead (images only).
        content: ``images`` | ``captions`` (which class ``data=webdataset`` builds; checked here).
        resampled: endless seeded draws of shards (with ``trainer.max_steps``) instead of epochs.
        shuffle_buffer: samples of the shuffle buffer per slot (0: stream order).
        per_class: ``K`` items per class in every training batch (class-balanced P x K; null: plain batches).
        pk_window: outputs re-grouped at once into P x K batches (a multiple of the batch size; null: 4 batches).
        eval_train_samples: training samples read into memory for the kNN monitor's memory (and a tokenizer).
        image_keys, label_key, caption_key: see :class:`SampleFormat`.
        load_size, resize_mode, channels: decoding (as ``data=imagefolder``). strict: stop at the first bad sample.
    """

    content = "images"
    #: the end-of-epoch report build_callbacks adds for a datamodule that counts skipped data
    skipped_report = ShardReport

    def _init_shards(
        self,
        urls: Any,
        val_urls: Any,
        val_dir: str | None,
        content: str | None,
        resampled: bool,
        shuffle_buffer: int,
        per_class: int | None,
        pk_window: int | None,
        eval_train_samples: int,
        image_keys: Sequence[str],
        label_key: str,
        caption_key: str,
        load_size: int | None,
        resize_mode: str,
        strict: bool,
    ) -> None:
        if content is not None and content != self.content:
            raise ConfigError(f"data.content={content} is not what {type(self).__name__} reads ({self.content}).")
        if resize_mode not in ("shortest", "squash"):
            raise ConfigError(f"data.resize_mode={resize_mode} is not shortest or squash; set one of those.")
        if shuffle_buffer < 0:
            raise ConfigError(f"data.shuffle_buffer={shuffle_buffer} must be >= 0; set e.g. data.shuffle_buffer=1000.")
        if per_class is not None and (per_class < 1 or self.batch_size % per_class):  # type: ignore[attr-defined]
            raise ConfigError(
                f"data.per_class={per_class} must divide data.batch_size={self.batch_size} "  # type: ignore[attr-defined]
                "(P classes x K items); set data.batch_size to a multiple of it."
            )
        self.urls = expand_shard_urls(urls, "data.urls")
        self.val_urls = expand_shard_urls(val_urls, "data.val_urls") if val_urls else None
        self.val_dir = str(Path(val_dir).expanduser()) if val_dir else None
        if self.val_urls is None and self.val_dir is None:
            raise ShardError(
                "data=webdataset needs a validation set; set data.val_urls to validation shards"
                + (" (or data.val_dir to an image folder)." if self.content == "images" else ".")
            )
        check_shards_exist(self.urls, "data.urls")
        if self.val_urls is not None:
            check_shards_exist(self.val_urls, "data.val_urls")
        self.resampled, self.shuffle_buffer, self.per_class = bool(resampled), int(shuffle_buffer), per_class
        self.pk_window = pk_window
        self.eval_train_samples, self.strict = int(eval_train_samples), bool(strict)
        self.fmt = SampleFormat(tuple(str(k).lower() for k in image_keys), str(label_key), str(caption_key))
        self.load_size, self.resize_mode = load_size or self.image_size, resize_mode  # type: ignore[attr-defined]
        self.decode = partial(decode_image, size=self.load_size, channels=self.channels, resize_mode=resize_mode)  # type: ignore[attr-defined]
        self.skipped = SkippedFiles()  # bad samples, counted in every process reading them
        sizes = shard_sizes(self.urls, "data.urls")
        if sum(sizes) == 0:
            raise ShardError(f"the {len(self.urls)} shard(s) named by data.urls hold no sample; fix data.urls.")
        self.shards = make_shards(self.urls, sizes, self.limit_samples)  # type: ignore[attr-defined]
        self._val_shards: list[Shard] | None = None
        self._stream: ShardStream | None = None
        names = read_json(sibling(self.urls[0], CLASSES_FILE))
        self.shard_classes: list[str] | None = [str(c) for c in names] if isinstance(names, list) else None

    # --- helpers ----------------------------------------------------------------------------------
    def memory_split(self, which: str) -> MemorySplit:
        """The validation shards or the first ``eval_train_samples`` training samples, in memory."""
        limit = self.limit_samples  # type: ignore[attr-defined]
        if which == "val":
            if self._val_shards is None:
                assert self.val_urls is not None
                self._val_shards = make_shards(self.val_urls, shard_sizes(self.val_urls, "data.val_urls"), limit)
            samples = read_split(self._val_shards)
        else:
            n = min(self.eval_train_samples, limit) if limit else self.eval_train_samples
            samples = read_split(self.shards, n)
        if not samples:
            raise ShardError(f"the {which} shards hold no sample; fix data.{'val_urls' if which == 'val' else 'urls'}.")
        return MemorySplit(samples, self.fmt, self.decode, self.strict, self.skipped)

    def plan(self, workers: int) -> StreamPlan:
        """The epoch plan of this run (all ranks and workers)."""
        slots = distributed.world_size() * max(1, workers)
        return StreamPlan(
            tuple(self.shards),
            self.batch_size,  # type: ignore[attr-defined]
            slots,
            self.drop_last,  # type: ignore[attr-defined]
            self.seed,  # type: ignore[attr-defined]
            self.shuffle_buffer,
            self.resampled,
        )

    def check_plan(self, plan: StreamPlan) -> None:
        if plan.resampled:
            return
        if plan.slot_batches == 0:
            raise ShardError(
                f"the {plan.total} training samples make no batch of {plan.batch_size} for each of the {plan.slots} "
                "rank x worker slots; lower data.batch_size or data.num_workers (or add shards)."
            )
        if plan.dropped and distributed.rank() == 0:
            warnings.warn(
                f"data=webdataset: {plan.dropped} of {plan.total} training samples are left out of each epoch so "
                f"that all {plan.slots} rank x worker slots run {plan.slot_batches} batches of {plan.batch_size} "
                "(logged as data/dropped_samples; a different set each epoch).",
                ContrastlabWarning,
                stacklevel=2,
            )

    def check_trainer(self) -> None:
        trainer = getattr(self, "trainer", None)
        if self.resampled and trainer is not None and (trainer.max_steps is None or trainer.max_steps < 0):
            raise ConfigError("data.resampled=true streams without end; set +trainer.max_steps=<steps> (e.g. 10000).")

    @property
    def dropped_per_epoch(self) -> int:
        return 0 if self._stream is None or self._stream.plan.resampled else self._stream.plan.dropped

    def stream_loader(self, make_item: Callable[..., dict[str, Any]], needs_caption: bool) -> ShardLoader:
        self.check_trainer()
        plan = self.plan(self.num_workers)  # type: ignore[attr-defined]
        self.check_plan(plan)
        window = self.pk_window or 4 * plan.batch_size
        stream = ShardStream(
            plan,
            distributed.rank(),
            self.num_workers,  # type: ignore[attr-defined]
            make_item,
            self.decode,
            self.fmt,
            needs_caption=needs_caption,
            per_class=self.per_class,
            window=window,
            strict=self.strict,
            skipped=self.skipped,
        )
        self._stream = stream
        return ShardLoader(stream, num_workers=self.num_workers)  # type: ignore[attr-defined]

    def set_mined_negatives(self, table: Tensor) -> None:
        raise ConfigError(
            "sampler=ann_mined serves negatives by training item index, which a shard stream does not have; "
            "set sampler=semi_hard (or sampler=batch_hard)."
        )


_SHARD_DEFAULTS: dict[str, Any] = {
    "val_urls": None,
    "val_dir": None,
    "content": None,
    "resampled": False,
    "shuffle_buffer": 1000,
    "per_class": None,
    "pk_window": None,
    "eval_train_samples": 10000,
    "image_keys": IMAGE_KEYS,
    "label_key": "label",
    "caption_key": "captions",
    "load_size": None,
    "resize_mode": "shortest",
    "strict": False,
}


def _split_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the shard arguments out of ``kwargs`` (defaults filled in)."""
    return {k: kwargs.pop(k, v) for k, v in _SHARD_DEFAULTS.items()}


def _pk_from_sampler(batch_sampler: Any, per_class: int | None) -> int | None:
    """``data.per_class``, or the ``k`` of a ``+data/batch_sampler=pk`` partial (the stream forms its own batches)."""
    if batch_sampler is None:
        return per_class
    k = getattr(batch_sampler, "keywords", {}).get("k")
    if getattr(getattr(batch_sampler, "func", None), "__name__", "") == "PKBatchSampler":
        return per_class if per_class is not None else int(k if k is not None else 4)
    raise ConfigError(
        "data=webdataset forms its batches from the stream; remove data.batch_sampler "
        "(for class-balanced batches set data.per_class=K)."
    )


class ImageShardsDataModule(ShardSource, ContrastiveDataModule):
    """Images (and labels, when the samples have them) streamed from tar shards: SimCLR, triplet (with
    ``per_class`` for P x K batches) and the kNN monitor. ``data=webdataset`` (``data.content=images``).

    Training batches: ``{"views": [...], "label": (B,), "index": (B,)}`` (``index``: the sample's place in
    ``data.urls``). Labels: the first training sample decides whether the set is labelled (``has_labels``).
    """

    content = "images"

    def __init__(
        self,
        urls: Any = None,
        image_size: int = 64,
        channels: int = 3,
        class_names: Sequence[str] | None = None,
        templates: Any = None,  # zero-shot prompts of content=captions: unused here
        **kwargs: Any,
    ) -> None:
        shard_kw = _split_kwargs(kwargs)
        shard_kw["per_class"] = _pk_from_sampler(kwargs.pop("batch_sampler", None), shard_kw["per_class"])
        if channels not in (1, 3):
            raise ConfigError(f"data.channels={channels} is not supported for shards; use 1 (grey) or 3 (RGB).")
        mean, std = IMAGENET_STATS if channels == 3 else ((0.449,), (0.226,))
        kwargs["mean"] = mean if kwargs.get("mean") is None else kwargs["mean"]
        kwargs["std"] = std if kwargs.get("std") is None else kwargs["std"]
        super().__init__(image_size=image_size, channels=channels, **kwargs)
        self._init_shards(urls, **shard_kw)
        first = read_split(self.shards, 1)
        self.has_labels = bool(first and first[0].raw is not None and self.fmt.label(first[0].raw) >= 0)
        self.classes = list(class_names) if class_names else self.shard_classes or []
        if self.has_labels and self.num_classes is None and self.shard_classes:
            self.num_classes = len(self.shard_classes)

    def load_splits(self) -> tuple[Dataset, Dataset]:
        train = MemoryImages(self.memory_split("train"))
        if self.val_dir is not None:
            samples, classes = find_image_samples(self.val_dir, "data.val_dir")
            index = {c: i for i, c in enumerate(self.classes or classes)}
            samples = [(p, index.get(classes[y], -1) if y >= 0 else -1) for p, y in samples]
            val: Dataset = ImageFileDataset(
                samples, self.load_size, self.channels, self.strict, self.skipped, self.resize_mode
            )
        else:
            val = MemoryImages(self.memory_split("val"))
        return train, val

    def train_dataloader(self) -> DataLoader:
        if self.augment is None:
            raise ValueError("no augmentation given; choose one with augment=<name> (e.g. augment=simclr).")
        views = MultiView(self.augment, self.views, self.normalize)
        return self.stream_loader(_ViewsItem(views), needs_caption=False)


class _ViewsItem:
    """``{"views", "label", "index"}`` of a decoded sample (picklable for DataLoader workers)."""

    def __init__(self, views: MultiView) -> None:
        self.views = views

    def __call__(self, image: Tensor, label: int, captions: list[str], sample_id: int) -> dict[str, Any]:
        return {"views": self.views(image), "label": int(label), "index": int(sample_id)}


class _PairItem:
    """``{"image", "text", "label", "index", "image_index"}`` of a decoded sample: one of its captions,
    drawn with the item's seeded RNG."""

    def __init__(self, transform: Callable[[Tensor], Tensor]) -> None:
        self.transform = transform

    def __call__(self, image: Tensor, label: int, captions: list[str], sample_id: int) -> dict[str, Any]:
        text = captions[0] if len(captions) == 1 else random.choice(captions)
        image_t = self.transform(to_float_image(image))
        i = int(sample_id)
        return {"image": image_t, "text": text, "label": int(label), "index": i, "image_index": i}


class CaptionShardsDataModule(ShardSource, ImageTextDataModule):
    """Image–caption pairs streamed from tar shards (CLIP): ``data=webdataset data.content=captions``.

    Training batches: ``{"image", "text", "label", "index", "image_index"}``; a sample with several captions
    (a list in ``key.json``) trains on one of them per epoch. Validation (``data.val_urls``, in memory):
    every caption of every image for retrieval, labels (and ``classes.json`` names) for zero-shot.
    """

    content = "captions"

    def __init__(self, urls: Any = None, image_size: int = 64, **kwargs: Any) -> None:
        shard_kw = _split_kwargs(kwargs)
        if kwargs.pop("batch_sampler", None) is not None:
            raise ConfigError("data=webdataset forms its batches from the stream; remove data.batch_sampler.")
        if shard_kw["per_class"] is not None:
            raise ConfigError("data.per_class balances classes for triplet training; set data.per_class=null for CLIP.")
        if shard_kw["val_dir"] is not None:
            raise ConfigError("data.val_dir holds no captions; set data.val_urls to validation shards for CLIP.")
        kwargs["mean"] = (0.48, 0.46, 0.41) if kwargs.get("mean") is None else kwargs["mean"]
        kwargs["std"] = (0.27, 0.26, 0.28) if kwargs.get("std") is None else kwargs["std"]
        super().__init__(image_size=image_size, **kwargs)
        self._init_shards(urls, **shard_kw)
        if self.class_names is None and self.shard_classes:
            self.class_names = list(self.shard_classes)

    def load_image_text(self) -> tuple[ImageTextSplit, ImageTextSplit]:
        def split(memory: MemorySplit) -> ImageTextSplit:
            keep = [i for i, caps in enumerate(memory.captions) if caps]
            if not keep:
                raise ShardError("no sample of the shards has a caption (key.txt); check data.urls / data.val_urls.")
            return ImageTextSplit(keep, [memory.captions[i] for i in keep], memory.labels[keep], memory.image)

        return split(self.memory_split("train")), split(self.memory_split("val"))

    def train_dataloader(self) -> DataLoader:
        return self.stream_loader(_PairItem(self.train_transform), needs_caption=True)


#: ``data=webdataset``'s ``_target_: contrastlab.data.shards.${.content}``
images = ImageShardsDataModule
captions = CaptionShardsDataModule


__all__ = ["CaptionShardsDataModule", "ImageShardsDataModule", "ShardError", "ShardReport"]
