"""Image–caption pairs listed in a table on disk (COCO / Flickr30k style): CSV, TSV or JSONL.

One row per (image, caption); rows sharing a ``filepath`` are the captions of one image (a JSONL
row may also hold a list of captions). Relative paths are resolved against ``image_root`` (default:
the table's folder). An optional label column enables the kNN monitor and zero-shot classification
(string labels name their classes; integer labels need ``class_names``).

Validation: a second table (``val_path``) or a seeded split of the images (``val_fraction``), never
of the rows, so an image's captions stay on one side.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torchvision.transforms import v2

from contrastlab.data.image_files import ImageFileDataset, SkippedFiles
from contrastlab.data.image_text import ImageTextDataModule, ImageTextSplit
from contrastlab.data.on_disk import DataDirError
from contrastlab.errors import ConfigError


class CaptionTableError(DataDirError):
    """A caption table that cannot be used (missing, missing columns, listing missing images)."""


def resize_transform(size: int, interpolation: str = "bilinear", resize_mode: str = "shortest") -> v2.Transform:
    """(C, H, W) -> (C, size, size): ``shortest`` resizes the shorter side to ``size`` and centre-crops,
    ``squash`` resizes both sides to ``size`` (open_clip's two inference modes), antialiased."""
    modes = {
        m.value: m for m in (v2.InterpolationMode.BILINEAR, v2.InterpolationMode.BICUBIC, v2.InterpolationMode.NEAREST)
    }
    if interpolation not in modes:
        raise ConfigError(f"data.interpolation={interpolation} is not one of {', '.join(modes)}; set one of those.")
    mode = modes[interpolation]
    if resize_mode == "shortest":
        return v2.Compose([v2.Resize(size, interpolation=mode, antialias=True), v2.CenterCrop(size)])
    if resize_mode == "squash":
        return v2.Resize([size, size], interpolation=mode, antialias=True)
    raise ConfigError(f"data.resize_mode={resize_mode} is not shortest or squash; set one of those.")


def read_table(path: Path, fmt: str | None = None) -> pd.DataFrame:
    """``csv`` | ``tsv`` | ``jsonl`` (from the suffix unless ``fmt`` is given)."""
    if not path.is_file():
        raise CaptionTableError(f"data.path={path} does not exist; set data.path (and data.val_path) to your table.")
    fmt = fmt or {".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}.get(path.suffix.lower(), "csv")
    if fmt == "jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    return pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", keep_default_na=False)


class ImageTextCSVDataModule(ImageTextDataModule):
    """Args (beyond :class:`~contrastlab.data.image_text.ImageTextDataModule`'s):
    path: the table (required). val_path: a separate validation table (else split by ``val_fraction``).
    image_root: folder relative file paths start from (default: the table's folder).
    filepath_key, caption_key: column names. label_key: optional label column.
    format: ``csv`` | ``tsv`` | ``jsonl`` (default: from the suffix).
    strict: an unreadable image stops the run (naming it) instead of being skipped with a warning; a
        skipped image is replaced by the next readable one of its split, and the skips of each epoch are
        counted in ``data/skipped_images``.
    interpolation: ``bilinear`` | ``bicubic`` | ``nearest`` (antialiased). resize_mode: ``shortest`` (shorter
        side to ``image_size``, centre crop) | ``squash`` (both sides to ``image_size``). An open_clip encoder
        sets both (and ``image_size``, ``mean``, ``std``) to its own preprocessing.
    """

    def __init__(
        self,
        path: str | None = None,
        val_path: str | None = None,
        image_root: str | None = None,
        filepath_key: str = "filepath",
        caption_key: str = "caption",
        label_key: str | None = None,
        format: str | None = None,
        image_size: int = 64,
        templates: str | Sequence[str] = ("a photo of a {}.", "a picture of a {}."),
        class_names: Sequence[str] | None = None,
        strict: bool = False,
        interpolation: str = "bilinear",
        resize_mode: str = "shortest",
        **kwargs: Any,
    ) -> None:
        if not path:
            raise ValueError("data=image_text_csv needs a table of image paths and captions: set data.path=<file>.")
        kwargs.setdefault("mean", (0.48, 0.46, 0.41))
        kwargs.setdefault("std", (0.27, 0.26, 0.28))
        super().__init__(templates=templates, class_names=class_names, image_size=image_size, **kwargs)
        self.path, self.val_path = Path(path).expanduser(), Path(val_path).expanduser() if val_path else None
        self.image_root = Path(image_root).expanduser() if image_root else self.path.parent
        self.filepath_key, self.caption_key, self.label_key, self.format = filepath_key, caption_key, label_key, format
        self.resize = resize_transform(image_size, interpolation, resize_mode)
        self.strict, self.skipped = strict, SkippedFiles()  # skips are reported by SkippedFilesReport
        self._files: dict[str, tuple[ImageFileDataset, int]] = {}

    def _register(self, paths: list[Path]) -> None:
        files = ImageFileDataset([(str(p), -1) for p in paths], None, self.channels, self.strict, self.skipped)
        self._files.update({str(p): (files, i) for i, p in enumerate(paths)})

    def load_image(self, path: Path) -> torch.Tensor:
        """The image at ``path`` as uint8 (C, H, W); unreadable: see ``strict``."""
        if str(path) not in self._files:
            self._register([path])
        files, i = self._files[str(path)]
        return files[i][0]

    def prepare(self, img: torch.Tensor) -> torch.Tensor:
        """Shorter side to ``image_size``, then a centre crop (``resize_mode=squash``: both sides to it)."""
        return self.resize(img)

    def _group(self, table: pd.DataFrame, source: Path) -> tuple[list[Path], list[list[str]], list[Any]]:
        for key in (self.filepath_key, self.caption_key) + ((self.label_key,) if self.label_key else ()):
            if key not in table.columns:
                raise CaptionTableError(
                    f"{source} has no column '{key}' (columns: {list(table.columns)}); "
                    "set data.filepath_key / data.caption_key / data.label_key to its column names."
                )
        captions: dict[str, list[str]] = {}
        labels: dict[str, Any] = {}
        for row in table.to_dict("records"):
            fp = str(row[self.filepath_key])
            caps = row[self.caption_key]
            captions.setdefault(fp, []).extend([str(c) for c in caps] if isinstance(caps, list) else [str(caps)])
            if self.label_key:
                labels.setdefault(fp, row[self.label_key])
        paths = [Path(fp) if Path(fp).is_absolute() else self.image_root / fp for fp in captions]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise CaptionTableError(
                f"{len(missing)} image(s) listed in {source} do not exist (first: {missing[0]}); "
                "set data.image_root to the folder the file paths are relative to."
            )
        return paths, list(captions.values()), [labels.get(fp, -1) for fp in captions]

    def _label_ids(self, raw: list[Any]) -> torch.Tensor:
        if not self.label_key:
            return torch.full((len(raw),), -1, dtype=torch.long)
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw):
            return torch.tensor([int(v) for v in raw], dtype=torch.long)
        if self.class_names is None:
            self.class_names = sorted({str(v) for v in raw})
        index = {name: i for i, name in enumerate(self.class_names)}
        return torch.tensor([index.get(str(v), -1) for v in raw], dtype=torch.long)

    def load_image_text(self) -> tuple[ImageTextSplit, ImageTextSplit]:
        paths, captions, raw = self._group(read_table(self.path, self.format), self.path)
        if self.val_path is not None:
            v_paths, v_captions, v_raw = self._group(read_table(self.val_path, self.format), self.val_path)
            train_idx, val_idx = list(range(len(paths))), None
        else:
            order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(self.seed)).tolist()
            n_val = max(1, round(self.val_fraction * len(paths)))
            if n_val >= len(paths):
                raise ValueError(f"{self.path} lists {len(paths)} image(s): too few to hold out data.val_fraction.")
            val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
            v_paths, v_captions, v_raw = (
                [paths[i] for i in val_idx],
                [captions[i] for i in val_idx],
                [raw[i] for i in val_idx],
            )
        labels = self._label_ids(raw + v_raw)
        train = ImageTextSplit(
            [paths[i] for i in train_idx],
            [captions[i] for i in train_idx],
            labels[: len(paths)][train_idx],
            self.load_image,
        )
        val = ImageTextSplit(v_paths, v_captions, labels[len(paths) :], self.load_image)
        self._register(list(train.images))  # each split substitutes unreadable images from itself
        self._register(list(val.images))
        return train, val
