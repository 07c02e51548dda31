"""Writing tar shards in the layout :mod:`contrastlab.data.shard_stream` reads (img2dataset's): one sample =
``key.<image ext>`` + ``key.cls`` (label) + ``key.txt`` (first caption) + ``key.json`` (label, class name,
every caption, source path), members of a sample next to each other.

:class:`ShardWriter` starts a new shard when the current one would pass ``max_bytes`` (or holds
``max_count`` samples), writes each shard under a temporary name and renames it when complete, and
records the sample counts in ``sizes.json`` (merged with what is there), so reading needs no scan.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps
from webdataset.writer import TarWriter

from contrastlab.data.shard_stream import CLASSES_FILE, IMAGE_KEYS, SIZES_FILE

#: file suffixes kept as they are (their bytes are copied); any other image format is re-encoded as PNG
KEEP = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}


def image_member(path: str | os.PathLike, resize: int | None = None, quality: int = 95) -> tuple[str, bytes]:
    """``(extension, bytes)`` of an image file for a shard: JPEG/PNG/WebP bytes copied unchanged,
    other formats re-encoded as PNG; with ``resize`` the shorter side is scaled down to it (never up)
    and the result re-encoded (JPEG at ``quality``, PNG kept lossless)."""
    path = Path(path)
    ext = KEEP.get(path.suffix.lower())
    if resize is None and ext is not None:
        return ext, path.read_bytes()
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if resize is not None and min(im.size) > resize:
            scale = resize / min(im.size)
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            im = im.resize(size, Image.Resampling.BICUBIC)
        out = io.BytesIO()
        if ext == "jpg":
            im.convert("RGB").save(out, format="JPEG", quality=quality)
            return "jpg", out.getvalue()
        im.save(out, format="PNG")
        return "png", out.getvalue()


def sample_members(
    image: tuple[str, bytes],
    label: int | None = None,
    class_name: str | None = None,
    captions: Sequence[str] = (),
    source: str | None = None,
) -> dict[str, bytes | str]:
    """The members of one sample (without the key): the image, ``cls``, ``txt`` and ``json``."""
    ext, data = image
    if ext not in IMAGE_KEYS:
        raise ValueError(f"image extension {ext} is not one of {', '.join(IMAGE_KEYS)}")
    members: dict[str, bytes | str] = {ext: data}
    meta: dict[str, Any] = {}
    if label is not None and label >= 0:
        members["cls"] = str(int(label))
        meta["label"] = int(label)
        if class_name is not None:
            meta["class"] = class_name
    if captions:
        members["txt"] = captions[0]
        meta["captions"] = list(captions)
    if source is not None:
        meta["source"] = source
    if meta:
        members["json"] = json.dumps(meta, ensure_ascii=False)
    return members


class ShardWriter:
    """Samples into ``<folder>/<prefix>-000000.tar``, ``-000001.tar``, ... of at most ``max_bytes`` of tar
    members each (plus the end-of-archive blocks and the padding to a 10 KiB record).

    ``write(key, members)`` adds one sample; ``close()`` finishes the last shard, updates ``sizes.json``
    and returns ``[(path, samples), ...]``. A shard holds at least one sample, whatever its size."""

    def __init__(
        self, folder: str | os.PathLike, prefix: str = "shard", max_bytes: float = 256e6, max_count: int | None = None
    ) -> None:
        self.folder, self.prefix = Path(folder), prefix
        self.max_bytes, self.max_count = float(max_bytes), max_count
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written: list[tuple[Path, int]] = []
        self._tar: TarWriter | None = None
        self._path: Path | None = None
        self._count = 0
        self._bytes = 0

    def _start(self) -> None:
        self._finish()
        self._path = self.folder / f"{self.prefix}-{len(self.written):06d}.tar"
        # an integer mtime (0: reproducible files) keeps every member to one plain ustar header block
        self._tar = TarWriter(str(self._path.with_suffix(".tar.tmp")), encoder=True, mtime=0)
        self._count, self._bytes = 0, 0

    def _finish(self) -> None:
        if self._tar is None or self._path is None:
            return
        self._tar.close()
        os.replace(self._path.with_suffix(".tar.tmp"), self._path)
        self.written.append((self._path, self._count))
        self._tar = None

    def write(self, key: str, members: dict[str, bytes | str]) -> None:
        """Add the sample ``key`` (its members by extension, bytes or text)."""
        lengths = [len(v) if isinstance(v, bytes) else len(v.encode("utf-8")) for v in members.values()]
        size = sum(512 + -(-n // 512) * 512 for n in lengths)  # a tar member: a header block + its data blocks
        full = self._count > 0 and (
            self._bytes + size > self.max_bytes or (self.max_count is not None and self._count >= self.max_count)
        )
        if self._tar is None or full:
            self._start()
        assert self._tar is not None
        self._tar.write({"__key__": key, **members})
        self._count += 1
        self._bytes += size

    def close(self) -> list[tuple[Path, int]]:
        self._finish()
        write_sizes(self.folder, {p.name: n for p, n in self.written})
        return self.written

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        elif self._tar is not None:  # an error: leave no half-written shard behind
            self._tar.close()
            if self._path is not None:
                self._path.with_suffix(".tar.tmp").unlink(missing_ok=True)
            self._tar = None


def write_sizes(folder: Path, sizes: dict[str, int]) -> None:
    """Merge ``sizes`` into ``<folder>/sizes.json`` ({shard file name: samples}, sorted)."""
    path = folder / SIZES_FILE
    table = json.loads(path.read_text()) if path.is_file() else {}
    table.update(sizes)
    path.write_text(json.dumps(dict(sorted(table.items())), indent=0) + "\n")


def write_classes(folder: Path, classes: Sequence[str]) -> None:
    """``<folder>/classes.json``: the class name of each label id (zero-shot prompts, val folders)."""
    (folder / CLASSES_FILE).write_text(json.dumps(list(classes), ensure_ascii=False) + "\n")


def brace_urls(paths: Sequence[Path]) -> str:
    """``folder/prefix-{000000..000009}.tar`` for consecutive shards of one prefix (one path: itself)."""
    if len(paths) == 1:
        return str(paths[0])
    first, last = paths[0], paths[-1]
    head, a = first.stem.rsplit("-", 1)
    b = last.stem.rsplit("-", 1)[1]
    return str(first.parent / f"{head}-{{{a}..{b}}}.tar")
