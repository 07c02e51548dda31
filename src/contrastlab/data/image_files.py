"""Reading image files safely: discovery (class sub-folders or a flat folder), decoding with a fixed
size, and skipping unreadable files with a warning and a per-epoch count.

A corrupt file in a million-image folder must not kill a long run: :class:`ImageFileDataset` warns
with the file's name, counts the skip in a :class:`SkippedFiles` counter shared with DataLoader
worker processes, and returns the next readable image instead (same class preferred), so batch
sizes stay fixed. :class:`SkippedFilesReport` logs the count at the end of every training epoch.
With ``strict=True`` the first unreadable file stops the run with its name.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
from torchvision.transforms import v2

from contrastlab.data.on_disk import DataDirError
from contrastlab.errors import BadInputError, ContrastlabWarning


class UnreadableImageWarning(ContrastlabWarning):
    """An image file could not be decoded and was skipped."""


class UnreadableImageError(BadInputError, RuntimeError):
    """An image file could not be decoded and ``data.strict=true`` (or no readable image was left)."""


class ImageFolderError(DataDirError):
    """An image folder that cannot be used (missing, empty, empty class folders); names the key to change."""


def is_image_file(name: str | os.PathLike) -> bool:
    """True for the file extensions torchvision's ImageFolder accepts (case-insensitive)."""
    return str(name).lower().endswith(IMG_EXTENSIONS)


def has_image_file(root: str | os.PathLike) -> bool:
    """True as soon as one image file is found under ``root`` (stops at the first; cheap on huge folders)."""
    return any(any(is_image_file(f) for f in files) for _, _, files in os.walk(root, followlinks=True))


def find_image_samples(root: str | os.PathLike, key: str = "data.data_dir") -> tuple[list[tuple[str, int]], list[str]]:
    """Discover ``(path, label)`` samples under ``root`` and the class names.

    * class sub-folders holding images -> torchvision ``ImageFolder`` semantics: classes are the
      sorted sub-folder names (hidden ones, e.g. ``.ipynb_checkpoints``, skipped), label = class
      index, files found recursively (loose files at the top level are ignored, with a warning);
    * no sub-folder holds images but the top level does -> an unlabelled flat folder: label -1, no classes.

    Raises :class:`ImageFolderError` (naming ``key``) for a missing folder, a folder without images,
    or class sub-folders without images.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageFolderError(f"{key}={root} is not a folder; set {key} to a folder of images or class sub-folders.")
    loose = sorted(str(p) for p in root.iterdir() if p.is_file() and is_image_file(p.name))
    subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if any(has_image_file(d) for d in subdirs):
        classes = sorted(d.name for d in subdirs)
        class_to_idx = {c: i for i, c in enumerate(classes)}
        samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        present = {label for _, label in samples}
        empty = [c for c in classes if class_to_idx[c] not in present]
        if empty:
            raise ImageFolderError(
                f"class folder(s) {', '.join(str(root / c) for c in empty)} contain no images; "
                f"add images or remove them from {key}."
            )
        if loose:
            warnings.warn(
                f"{len(loose)} image(s) at the top of {key}={root} are ignored because it has class "
                "sub-folders (ImageFolder semantics).",
                stacklevel=2,
            )
        return samples, classes
    if loose:
        return [(p, -1) for p in loose], []
    raise ImageFolderError(
        f"{key}={root} contains no images (extensions {', '.join(IMG_EXTENSIONS)}); "
        f"set {key} to a folder of images or of class sub-folders."
    )


def load_image(path: str | os.PathLike, size: int | None, channels: int = 3, resize_mode: str = "shortest") -> Tensor:
    """Decode ``path`` into a uint8 (channels, size, size) tensor: RGB (3) or grey (1); the shorter
    side is resized to ``size`` (bicubic, antialiased) and the centre square kept (``resize_mode=squash``:
    both sides resized to ``size``). ``size=None`` keeps the original size."""
    with Image.open(path) as im:
        mode = "RGB" if channels == 3 else "L"
        if size is not None:
            im.draft(mode, (size, size))  # JPEG: decode at a reduced scale when the file is much larger
        im = im.convert(mode)  # forces the full decode: truncated or corrupt data raises here
        if size is not None and resize_mode == "squash":
            im = im.resize((size, size), Image.Resampling.BICUBIC)
        elif size is not None:
            im = ImageOps.fit(im, (size, size), method=Image.Resampling.BICUBIC)
        return v2.functional.pil_to_tensor(im)


def warn_unreadable(path: str, error: BaseException) -> None:
    """Warn that ``path`` cannot be decoded and will be skipped."""
    warnings.warn(
        f"skipping unreadable image {path} ({type(error).__name__}: {error}); "
        "set data.strict=true to stop at the first unreadable image instead.",
        UnreadableImageWarning,
        stacklevel=3,
    )


class SkippedFiles:
    """A count of skipped items (requests for an unreadable file), shared by the main process and its
    DataLoader workers (a ``multiprocessing.Value``: it travels to workers when they are started)."""

    def __init__(self) -> None:
        self._count = multiprocessing.Value("q", 0)

    def add(self) -> None:
        """Count one skipped item."""
        with self._count.get_lock():
            self._count.value += 1

    @property
    def count(self) -> int:
        return int(self._count.value)

    def take(self) -> int:
        """Return the count so far and reset it to 0."""
        with self._count.get_lock():
            n, self._count.value = int(self._count.value), 0
        return n


class ImageFileDataset(Dataset):
    """``(uint8 image (C, size, size), label)`` pairs read from ``samples = [(path, label), ...]``.

    An unreadable file raises :class:`UnreadableImageError` naming it when ``strict``; otherwise a
    warning names it (once per process; it is not decoded again), every request for it counts one
    skip in ``skipped``, and the next readable sample is returned instead, preferring one with the
    same label, so every batch keeps its size.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        size: int | None,
        channels: int = 3,
        strict: bool = False,
        skipped: SkippedFiles | None = None,
        resize_mode: str = "shortest",
    ) -> None:
        self.samples, self.size, self.channels, self.strict = list(samples), size, channels, strict
        self.resize_mode = resize_mode
        self.skipped = skipped if skipped is not None else SkippedFiles()
        self._bad: set[int] = set()  # indices found unreadable in this process: not decoded again

    @property
    def targets(self) -> list[int]:
        """Labels of all samples (no decoding), (-1 when unlabelled)."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, i: int) -> Tensor | None:
        """The decoded image, or None (after a warning, the first time) if the file is unreadable."""
        if i in self._bad:
            return None
        path = self.samples[i][0]
        try:
            return load_image(path, self.size, self.channels, self.resize_mode)
        except Exception as err:  # any decoder failure (truncated, not an image, permission, bomb...)
            if self.strict:
                raise UnreadableImageError(
                    f"cannot read image {path} ({type(err).__name__}: {err}); fix or remove the file, "
                    "or set data.strict=false to skip unreadable images with a warning."
                ) from err
            self._bad.add(i)
            warn_unreadable(path, err)
            return None

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        n, label = len(self.samples), self.samples[i][1]
        img = self._read(i)
        if img is not None:
            return img, label
        self.skipped.add()
        for same_label in (True, False):  # substitute: next readable sample, same class first
            for step in range(1, n):
                j = (i + step) % n
                if (self.samples[j][1] == label) == same_label:
                    img = self._read(j)
                    if img is not None:
                        return img, self.samples[j][1]
        raise UnreadableImageError(f"none of the {n} images of this split could be read (first: {self.samples[0][0]}).")


class SkippedFilesReport(L.Callback):
    """At the end of every training epoch (after its validation): log ``data/skipped_images``, the
    number of unreadable files skipped (summed over ranks), and warn when it is not zero."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        skipped: SkippedFiles | None = getattr(trainer.datamodule, "skipped", None)  # type: ignore[attr-defined]
        if skipped is None:
            return
        n = skipped.take()
        pl_module.log("data/skipped_images", float(n), sync_dist=True, reduce_fx="sum")
        if n:
            warnings.warn(
                f"epoch {trainer.current_epoch}: skipped {n} unreadable image(s) (named in warnings above); "
                "set data.strict=true to stop at the first one.",
                UnreadableImageWarning,
                stacklevel=2,
            )
