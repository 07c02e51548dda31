"""Any folder of images: class sub-folders (torchvision ImageFolder semantics) or a flat unlabelled folder."""

from __future__ import annotations

from typing import Any

from sklearn.model_selection import train_test_split

from contrastlab.data.image_files import (
    ImageFileDataset,
    ImageFolderError,
    SkippedFiles,
    find_image_samples,
)
from contrastlab.data.on_disk import OnDiskDataModule

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def split_samples(
    samples: list[tuple[str, int]], val_fraction: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Shuffle with ``seed`` and hold out ``round(val_fraction * N)`` (at least 1) samples for validation,
    stratified by label when every class has at least two samples and each split can hold every class."""
    n = len(samples)
    if n < 2:
        raise ImageFolderError(
            f"data.data_dir holds {n} image(s), too few for a val split; add images or set data.val_dir."
        )
    n_val = min(n - 1, max(1, round(val_fraction * n)))
    labels = [label for _, label in samples]
    counts = {c: labels.count(c) for c in set(labels)}
    stratify = labels if min(counts.values()) >= 2 and min(n_val, n - n_val) >= len(counts) else None
    train, val = train_test_split(samples, test_size=n_val, random_state=seed, stratify=stratify)
    return list(train), list(val)


class ImageFolderDataModule(OnDiskDataModule):
    """Images under ``data_dir``: class sub-folders give labels (``has_labels=True``, ``num_classes``
    from the folders); a flat folder of images is unlabelled (label -1, ``has_labels=False``: the kNN
    monitor skips itself and checkpoints keep ``last.ckpt`` only).

    Every image is decoded to ``channels`` (3 = RGB, 1 = grey), its shorter side resized to
    ``load_size`` (default ``image_size``) and centre-cropped square (``resize_mode=squash``: both sides
    resized, no crop); the augmentation then crops to ``image_size``. Validation is ``val_dir`` (same
    class sub-folders) when given, otherwise a ``val_fraction`` of ``data_dir`` held out with ``seed``
    (stratified when possible).

    Bad data: the folder is scanned at construction (file names only, no decoding): a missing or
    empty folder, or an empty class folder, raises :class:`ImageFolderError`. An unreadable image met
    during training is skipped with a warning naming it and counted (``data/skipped_images`` at the
    end of each epoch), or, with ``strict=True``, stops the run naming the file.
    """

    contents = "images"

    def __init__(
        self,
        data_dir: str | None = None,
        val_dir: str | None = None,
        image_size: int = 64,
        load_size: int | None = None,
        channels: int = 3,
        num_classes: int | None = None,
        strict: bool = False,
        resize_mode: str = "shortest",
        **kwargs: Any,
    ) -> None:
        if resize_mode not in ("shortest", "squash"):
            raise ImageFolderError(f"data.resize_mode={resize_mode} is not shortest or squash; set one of those.")
        if channels not in (1, 3):
            raise ImageFolderError(
                f"data.channels={channels} is not supported for image folders; use 1 (grey) or 3 (RGB)."
            )
        mean, std = IMAGENET_STATS if channels == 3 else ((0.449,), (0.226,))  # grey: mean of the RGB stats
        kwargs["mean"] = mean if kwargs.get("mean") is None else kwargs["mean"]
        kwargs["std"] = std if kwargs.get("std") is None else kwargs["std"]
        super().__init__(data_dir=data_dir, image_size=image_size, channels=channels, num_classes=num_classes, **kwargs)
        self.val_dir, self.strict, self.load_size = val_dir, strict, load_size or image_size
        self.resize_mode = resize_mode
        self.samples, self.classes = find_image_samples(self.data_dir, "data.data_dir")  # type: ignore[arg-type]
        self.has_labels = bool(self.classes)
        if self.has_labels and num_classes is not None and num_classes != len(self.classes):
            raise ImageFolderError(
                f"data.num_classes={num_classes} but data.data_dir has {len(self.classes)} class folders; "
                "set data.num_classes=null to take it from the folders."
            )
        self.num_classes = len(self.classes) if self.has_labels else num_classes
        self.val_samples = self._find_val_samples() if val_dir is not None else None
        if self.val_samples is None and not 0.0 < self.val_fraction < 1.0:
            raise ImageFolderError(
                f"data.val_fraction={self.val_fraction} must be in (0, 1) when data.val_dir is not set."
            )
        #: unreadable files skipped so far, shared with the DataLoader workers (see SkippedFilesReport)
        self.skipped = SkippedFiles()

    def _find_val_samples(self) -> list[tuple[str, int]]:
        samples, classes = find_image_samples(self.val_dir, "data.val_dir")  # type: ignore[arg-type]
        if not self.has_labels:
            return [(path, -1) for path, _ in samples]
        unknown = sorted(set(classes) - set(self.classes))
        if not classes or unknown:
            raise ImageFolderError(
                f"data.val_dir={self.val_dir} must hold class sub-folders named as in data.data_dir "
                f"({'unknown: ' + ', '.join(unknown) if unknown else 'it has none'})."
            )
        index = {c: i for i, c in enumerate(self.classes)}
        return [(path, index[classes[label]]) for path, label in samples]

    def load_splits(self) -> tuple[ImageFileDataset, ImageFileDataset]:
        if self.val_samples is not None:
            train, val = self.samples, self.val_samples
        else:
            train, val = split_samples(self.samples, self.val_fraction, self.seed)

        def dataset(samples: list[tuple[str, int]]) -> ImageFileDataset:
            return ImageFileDataset(samples, self.load_size, self.channels, self.strict, self.skipped, self.resize_mode)

        return dataset(train), dataset(val)
