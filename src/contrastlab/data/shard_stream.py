"""Streaming training batches from tar shards (WebDataset / img2dataset layout), resumable mid-epoch.

A shard is a tar file whose members are grouped into samples by their name without extensions:
``key.jpg|jpeg|png|webp`` (the image), ``key.txt`` (a caption), ``key.cls`` (an integer label) and
``key.json`` (a label field, or a list of captions). ``data.urls`` names the shards: brace notation
(``shards/{000000..000099}.tar``), a list, local paths, ``pipe:`` commands or fsspec URLs (``s3://``).
Tar streams are read with the ``webdataset`` package; the plan below is ours.

**The plan.** The number of samples of every shard is known at start-up (``sizes.json`` next to the
shards, img2dataset's ``*_stats.json``, or a scan of the tar headers). Every epoch is a function of
``(seed, epoch)`` only: the shards are permuted, their samples laid end to end into one sequence of
``N`` positions read as a ring from a seeded start, and the ``S = world_size x workers`` slots (one
per rank x DataLoader worker) each take a contiguous range of the same length ``n``: whole shards
when there are many, parts of a shard (a member range) when there are fewer shards than slots. With
``drop_last`` ``n = b * B`` (``b`` batches of ``B`` per slot), otherwise ``n = floor(N / S)`` and the
last batch of a slot is smaller; the ``N - S * n`` positions left over (a different set each epoch)
are dropped, counted and logged. Every slot therefore yields the same number of batches, so every
rank runs the same number of steps: no DDP hang on uneven shards.

**Shuffling.** Within its range a slot reads sequentially and emits in the order of a shuffle buffer
of ``M`` items (fill ``M``, then emit a uniformly drawn buffered item and put the next one in its
place; at the end, the rest in random order). The order is simulated on positions alone
(:func:`buffer_order`, seeded by ``(seed, epoch, slot)``), so the output order is known before
anything is read and a reader never holds more than ``M`` undecoded samples.

**Batches.** Plain: consecutive runs of ``B`` outputs. Class-balanced (``data.per_class=K``, for
triplet training): the outputs are taken ``window`` at a time and re-grouped into batches of
``P = B / K`` classes x ``K`` items where the window allows it (:func:`pk_batches`).

**Resume.** DataLoader workers hand out batches round-robin, so after ``d`` batches of a pass on a
rank, the worker role ``r`` has produced ``d // W + (r < d % W)`` of them. A resumed pass makes
worker ``i`` play role ``(i + d) % W`` and skip its done batches: plain batches by position
arithmetic (the skipped images are never decoded, the skipped shards never opened); class-balanced
batches by re-grouping the current window from its labels. The pass ``(epoch, batches done)`` comes
from :class:`~contrastlab.training.data_order.DataOrder` (``ShardLoader.follow``), which checkpoints it.
Augmentations are seeded per item with ``(seed, epoch, slot, round, output index)``.

``data.resampled=true`` makes every slot an endless sequence of rounds, each a seeded draw (with
replacement) of whole shards, for runs bounded by ``trainer.max_steps``.

**Bad data.** A sample whose image does not decode, whose tar member is truncated, or which lacks
its caption (CLIP) or label (class-balanced batches) is replaced by another sample of its batch
(same label first) with a warning naming it, and counted (``data/skipped_samples``); with
``data.strict=true`` the first one stops the run. A shard that does not exist fails at start-up.

The datamodules of ``data=webdataset`` are in :mod:`contrastlab.data.shards`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import random
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate
from webdataset.gopen import gopen as wds_gopen
from webdataset.shardlists import expand_urls as wds_expand_urls
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from contrastlab.data.image_files import SkippedFiles, UnreadableImageError, load_image, warn_unreadable
from contrastlab.data.on_disk import DataDirError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
SIZES_FILE = "sizes.json"  # {shard file name: samples}, as open_clip reads and contrastlab-shard writes
CLASSES_FILE = "classes.json"  # [class name of label 0, ...], written by contrastlab-shard


class ShardError(DataDirError):
    """Shards that cannot be used (none named, missing, empty); the message names the key to change."""


# ------------------------------------------------------------------------------------ URLs and files
def expand_shard_urls(urls: str | Sequence[str] | None, key: str = "data.urls") -> list[str]:
    """Every shard named by ``urls``: a string in brace notation (``a-{000..009}.tar``; several joined
    with ``::``) or a list of such strings; ``~`` expanded in local paths."""
    if urls is None or (isinstance(urls, str) and not urls.strip()):
        raise ShardError(f"{key} is not set; set {key} to your shards, e.g. {key}='shards/{{000000..000009}}.tar'.")
    items = [urls] if isinstance(urls, str) else [str(u) for u in urls]
    out: list[str] = []
    for item in items:
        out += [u if _scheme(u) else str(Path(u).expanduser()) for u in wds_expand_urls(item)]
    if not out:
        raise ShardError(f"{key}={urls!r} names no shard; set {key} to your shards.")
    return out


def _scheme(url: str) -> str:
    """The URL scheme (``pipe``, ``s3``, ``file``, ...); '' for a local path (a Windows drive letter too)."""
    if url.startswith("pipe:"):
        return "pipe"
    scheme = urlparse(url).scheme
    return scheme if len(scheme) > 1 else ""


def _local_path(url: str) -> Path | None:
    scheme = _scheme(url)
    if scheme == "":
        return Path(url)
    if scheme == "file":
        return Path(urlparse(url).path)
    return None


def open_shard(url: str) -> Any:
    """A binary stream of the shard: a local file, the output of a ``pipe:`` command, or an fsspec URL."""
    local = _local_path(url)
    if local is not None:
        return open(local, "rb")
    if _scheme(url) == "pipe":
        return wds_gopen(url, "rb")
    import fsspec

    return fsspec.open(url, "rb").open()


def check_shards_exist(urls: Sequence[str], key: str) -> None:
    """Missing local or fsspec shards are a :class:`ShardError` naming the first (``pipe:`` is not checked)."""
    missing = []
    for url in urls:
        local = _local_path(url)
        if local is not None:
            if not local.is_file():
                missing.append(url)
            continue
        if _scheme(url) == "pipe":
            continue
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as err:  # an unknown protocol, or its fsspec backend is not installed
            raise ShardError(f"cannot open {url} named by {key} ({err}); fix {key} or install the backend.") from err
        if not fs.exists(path):
            missing.append(url)
    if missing:
        raise ShardError(
            f"shard {missing[0]} named by {key} does not exist ({len(missing)} of {len(urls)} missing); fix {key}."
        )


def sibling(url: str, name: str) -> str | None:
    """The URL of file ``name`` in the shard's folder (None for ``pipe:``)."""
    if _scheme(url) == "pipe":
        return None
    local = _local_path(url)
    if local is not None:
        return str(local.parent / name)
    return url.rsplit("/", 1)[0] + "/" + name


def read_json(url: str | None) -> Any:
    """The JSON at ``url`` or None when it is absent or unreadable."""
    if url is None:
        return None
    try:
        with open_shard(url) as fh:
            return json.loads(fh.read().decode("utf-8"))
    except Exception:  # absent or malformed: the caller falls back (a scan, no class names)
        return None


def count_samples(url: str) -> int:
    """Samples in a shard (distinct consecutive keys), from its tar headers only: a local file is read
    with seeks over the data, a stream is read through. A truncated shard counts what is listed."""
    state: list[Any] = [None, 0]

    def counting(fname: str) -> bool:
        key, _ = base_plus_ext(fname)
        if key is not None and key != state[0]:
            state[0], state[1] = key, state[1] + 1
        return False

    local = _local_path(url)
    try:
        if local is not None:
            with tarfile.open(local, "r:*") as tar:
                for member in tar:
                    if member.isreg():
                        counting(member.name)
        else:
            stream = open_shard(url)
            try:
                for _ in tar_file_iterator(stream, handler=_stop, select_files=counting):
                    pass
            finally:
                stream.close()
    except (tarfile.TarError, EOFError, ValueError):
        pass  # the samples listed so far count; the broken one is skipped when read
    return int(state[1])


def shard_sizes(urls: Sequence[str], key: str) -> list[int]:
    """Samples per shard: from ``sizes.json`` in a shard's folder, else img2dataset's ``<stem>_stats.json``
    (``successes``), else a scan of the tar headers (:func:`count_samples`)."""
    tables: dict[str | None, Any] = {}
    out = []
    for url in urls:
        sizes_url = sibling(url, SIZES_FILE)
        if sizes_url not in tables:
            tables[sizes_url] = read_json(sizes_url)
        table, name = tables[sizes_url], url.rsplit("/", 1)[-1]
        if isinstance(table, dict) and isinstance(table.get(name), int):
            out.append(int(table[name]))
            continue
        stats = read_json(sibling(url, name.rsplit(".", 1)[0] + "_stats.json"))
        if isinstance(stats, dict) and isinstance(stats.get("successes"), int):
            out.append(int(stats["successes"]))
            continue
        try:
            out.append(count_samples(url))
        except OSError as err:
            raise ShardError(f"cannot read shard {url} named by {key} ({err}); fix {key}.") from err
    return out


def _stop(exn: Exception) -> bool:
    """webdataset exception handler: stop reading the shard (the caller counts what is missing)."""
    return False


# ------------------------------------------------------------------------------------ sample fields
@dataclass(frozen=True)
class SampleFormat:
    """Where a sample's fields are: the image (the first of ``image_keys`` present), the label
    (``key.cls``, else the ``label_key`` field of ``key.json``) and the captions (the ``caption_key``
    field of ``key.json``: a string or a list, else ``key.txt``)."""

    image_keys: tuple[str, ...] = IMAGE_KEYS
    label_key: str = "label"
    caption_key: str = "captions"

    def image(self, raw: dict[str, Any]) -> bytes | None:
        return next((raw[k] for k in self.image_keys if k in raw), None)

    @staticmethod
    def meta(raw: dict[str, Any]) -> dict[str, Any]:
        if "json" not in raw:
            return {}
        try:
            value = json.loads(raw["json"])
        except (ValueError, UnicodeDecodeError):
            return {}
        return value if isinstance(value, dict) else {}

    def label(self, raw: dict[str, Any]) -> int:
        """The sample's label (-1 when it has none)."""
        try:
            if "cls" in raw:
                return int(raw["cls"].decode("utf-8").strip())
            value = self.meta(raw).get(self.label_key)
            return int(value) if isinstance(value, int | float | str) and str(value).strip() != "" else -1
        except (ValueError, UnicodeDecodeError):
            return -1

    def captions(self, raw: dict[str, Any]) -> list[str]:
        value = self.meta(raw).get(self.caption_key)
        if isinstance(value, str) and value.strip():
            return [value]
        if isinstance(value, list) and value:
            return [str(v) for v in value]
        if "txt" in raw:
            text = raw["txt"].decode("utf-8", errors="replace").strip()
            return [text] if text else []
        return []


# ------------------------------------------------------------------------------------ reading shards
@dataclass(frozen=True)
class Shard:
    """A shard of the plan: ``count`` samples are read from it; ``first_id`` is the id (``index``) of its first."""

    url: str
    count: int
    first_id: int


@dataclass
class RawSample:
    """A sample as read (member bytes by extension), or ``raw=None`` when it could not be read."""

    raw: dict[str, Any] | None
    url: str
    ordinal: int  # its place in the shard
    id: int  # unique over the shards of a split (the batch's "index")
    error: str = ""

    @property
    def name(self) -> str:
        key = (self.raw or {}).get("__key__")
        return f"{self.url}:{key}" if key else f"{self.url} (sample {self.ordinal})"


def read_members(shard: Shard, ordinals: np.ndarray) -> Iterator[RawSample]:
    """The samples of ``shard`` at ``ordinals`` (ascending), in order; a sample the shard does not hold
    (a truncated member, a short or unreadable shard) comes as ``raw=None`` with the reason. Members of
    other samples are skipped without being kept, and reading stops after the last wanted sample."""
    wanted = [int(o) for o in ordinals]
    want = set(wanted)
    last = wanted[-1] if wanted else -1
    state: dict[str, Any] = {"key": None, "ordinal": -1, "keys": {}, "error": "", "at": None}
    i = 0  # wanted[i] is the next sample to hand out

    def select(fname: str) -> bool:
        key, _ = base_plus_ext(fname)
        if key is None:
            return False
        if key != state["key"]:
            state["key"], state["ordinal"] = key, state["ordinal"] + 1
            state["keys"][key] = state["ordinal"]
        o = state["ordinal"]
        return o in want or o == last + 1  # one member past the last wanted sample closes it

    def failed(exn: BaseException) -> bool:
        state["error"], state["at"] = f"{type(exn).__name__}: {exn}", state["ordinal"]
        return False  # stop reading the shard

    def missing(o: int) -> RawSample:
        return RawSample(None, shard.url, o, shard.first_id + o, state["error"] or "missing from the shard")

    def upto(o: int, raw: dict[str, Any] | None) -> Iterator[RawSample]:
        nonlocal i
        while i < len(wanted) and wanted[i] < o:
            yield missing(wanted[i])
            i += 1
        if i < len(wanted) and wanted[i] == o:
            yield RawSample(raw, shard.url, o, shard.first_id + o) if raw is not None else missing(o)
            i += 1

    current: dict[str, Any] | None = None
    stream = None
    try:
        stream = open_shard(shard.url)
        for member in tar_file_iterator(stream, handler=failed, select_files=select):
            key, ext = base_plus_ext(member["fname"])
            o = state["keys"].get(key, -1)
            if current is not None and current["__key__"] != key:
                yield from upto(current["__ordinal__"], current)
                current = None
            if o > last:
                break
            if current is None:
                current = {"__key__": key, "__ordinal__": o}
            current[ext.lower()] = member["data"]
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        failed(err)
    finally:
        if stream is not None:
            with contextlib.suppress(Exception):  # a failed pipe: command says so here; its samples are missing
                stream.close()
    if current is not None:  # the last sample read: incomplete when reading failed inside it
        broken = state["at"] is not None and state["at"] <= current["__ordinal__"]
        yield from upto(current["__ordinal__"], None if broken else current)
    yield from upto(last + 1, None)


def read_split(shards: Sequence[Shard], limit: int | None = None) -> list[RawSample]:
    """The first ``limit`` samples (all with None) of ``shards`` in order, read into memory."""
    out: list[RawSample] = []
    for shard in shards:
        n = shard.count if limit is None else min(shard.count, limit - len(out))
        if n <= 0:
            break
        out += list(read_members(shard, np.arange(n)))
    return out


def make_shards(urls: Sequence[str], sizes: Sequence[int], limit: int | None = None) -> list[Shard]:
    """:class:`Shard` records, keeping only the first ``limit`` samples of the sequence when given."""
    out, first = [], 0
    for url, n in zip(urls, sizes, strict=True):
        if limit is not None:
            n = min(n, limit - first)
        if n <= 0:
            break
        out.append(Shard(url, int(n), first))
        first += int(n)
    return out


# ------------------------------------------------------------------------------------------ the plan
def buffer_order(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """The output order of a shuffle buffer of ``size`` items over a stream of positions ``0..n-1``:
    the first ``size`` fill it; then each step emits a uniformly drawn buffered item and puts the next
    position in its place; when the stream ends, the rest leave in random order. (n,) int64, a
    permutation; when output ``t`` is emitted at most ``size`` positions are read and not yet emitted."""
    if size <= 1 or n <= 1:
        return np.arange(n, dtype=np.int64)
    if n <= size:
        return rng.permutation(n).astype(np.int64)
    picks = rng.integers(0, size, n - size).tolist()
    buf = list(range(size))
    out = np.empty(n, dtype=np.int64)
    for t, j in enumerate(picks):
        out[t] = buf[j]
        buf[j] = size + t
    out[n - size :] = np.asarray(buf, dtype=np.int64)[rng.permutation(size)]
    return out


def pk_batches(labels: Sequence[int], batch_size: int, k: int, rng: np.random.Generator) -> list[list[int]]:
    """Indices of ``labels`` grouped into batches of ``batch_size`` (the last one smaller when the
    count is not a multiple): each batch first takes ``k`` items from each of up to ``P = batch_size / k``
    classes drawn among those with ``k`` left, then fills up with the classes that have the most items
    left, then with unlabelled items (label < 0). Every index is used exactly once, in stream order within a class."""
    queues: dict[int, list[int]] = {}
    misc: list[int] = []
    for i, c in enumerate(labels):
        (queues.setdefault(int(c), []) if c >= 0 else misc).append(i)
    heads = dict.fromkeys(queues, 0)
    left = lambda c: len(queues[c]) - heads[c]  # noqa: E731

    def take(c: int, m: int) -> list[int]:
        h = heads[c]
        heads[c] = h + m
        return queues[c][h : h + m]

    n, p = len(labels), max(1, batch_size // k)
    out: list[list[int]] = []
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        ready = [c for c in queues if left(c) >= k]
        chosen = rng.choice(len(ready), size=min(p, len(ready), size // k), replace=False) if ready else []
        batch = [i for j in sorted(int(j) for j in chosen) for i in take(ready[j], k)]
        for c in sorted(queues, key=lambda c: -left(c)):
            if len(batch) >= size:
                break
            batch += take(c, min(k, left(c), size - len(batch)))
        while len(batch) < size:  # classes exhausted: fill with the rest, largest class first, then unlabelled
            c = max(queues, key=left, default=None)
            if c is not None and left(c) > 0:
                batch += take(c, min(left(c), size - len(batch)))
            else:
                batch.append(misc.pop(0))
        out.append(batch)
    return out


@dataclass(frozen=True)
class Round:
    """A stretch of a slot's stream: ``segments`` = (shard index, first member, members) read in
    order as positions ``0..size-1``; the first ``used`` outputs of its shuffle order make ``batches`` batches."""

    segments: tuple[tuple[int, int, int], ...]
    size: int
    used: int
    batches: int
    key: tuple[int, ...]  # its random stream: (seed, epoch, slot, round)


@dataclass(frozen=True)
class StreamPlan:
    """What every slot reads in every epoch (see the module docstring). Plain data, picklable."""

    shards: tuple[Shard, ...]
    batch_size: int
    slots: int
    drop_last: bool = True
    seed: int = 0
    shuffle_buffer: int = 1000
    resampled: bool = False

    @property
    def total(self) -> int:
        return sum(s.count for s in self.shards)

    @property
    def slot_samples(self) -> int:
        """Positions per slot and epoch (finite streams)."""
        if self.drop_last:
            return self.total // (self.slots * self.batch_size) * self.batch_size
        return self.total // self.slots

    @property
    def slot_batches(self) -> int:
        """Batches per slot and epoch (finite streams)."""
        n = self.slot_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def dropped(self) -> int:
        """Samples left out of every epoch so that all slots run the same batches (finite streams)."""
        return self.total - self.slots * self.slot_samples

    @property
    def draws(self) -> int:
        """Shards drawn per round of a resampled stream: a slot's share of the shards, and enough for two batches."""
        mean = max(1.0, self.total / max(1, len(self.shards)))
        return max(1, math.ceil(len(self.shards) / self.slots), math.ceil(2 * self.batch_size / mean))

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, int]:
        """The shard order of ``epoch`` (a permutation) and where in their sequence the slots start (so that
        the samples left over, and the member ranges of shared shards, change from epoch to epoch too)."""
        rng = np.random.default_rng([self.seed, epoch, 0x5A4D])
        return rng.permutation(len(self.shards)), int(rng.integers(self.total))

    def cut(self, order: Sequence[int], start: int, length: int) -> tuple[tuple[int, int, int], ...]:
        """The segments of positions ``[start, start + length)`` of the shards laid end to end in ``order``,
        going round to the first shard after the last (``start + length <= 2 x total``)."""
        out, pos, end = [], 0, start + length
        for i in [*order, *order]:
            n = self.shards[i].count
            lo, hi = max(start, pos), min(end, pos + n)
            if lo < hi:
                out.append((int(i), lo - pos, hi - lo))
            pos += n
            if pos >= end:
                break
        return tuple(out)

    def _round(self, segments: tuple[tuple[int, int, int], ...], key: tuple[int, ...]) -> Round:
        size = sum(n for _, _, n in segments)
        batches = size // self.batch_size if self.drop_last else math.ceil(size / self.batch_size)
        used = batches * self.batch_size if self.drop_last else size
        return Round(segments, size, used, batches, key)

    def rounds(self, epoch: int, slot: int) -> Iterator[Round]:
        """The rounds of ``slot`` in ``epoch``: one (its range of the epoch), or endless draws when resampled."""
        if not self.resampled:
            n = self.slot_samples
            order, offset = self.epoch_order(epoch)
            yield self._round(self.cut(order, offset + slot * n, n), (self.seed, epoch, slot, 0))
            return
        for r in count():
            rng = np.random.default_rng([self.seed, epoch, slot, r, 0x5EED])
            picks = rng.integers(0, len(self.shards), self.draws)
            yield self._round(tuple((int(i), 0, self.shards[i].count) for i in picks), (self.seed, epoch, slot, r))


def role_done(done: int, role: int, workers: int) -> int:
    """Batches worker role ``role`` produced among the first ``done`` batches of a round-robin over ``workers``."""
    return done // workers + (1 if role < done % workers else 0)


# ------------------------------------------------------------------------------------ the stream
def seed_item(key: Sequence[int]) -> None:
    """Seed the global CPU RNGs (torch, numpy, ``random``) an item's augmentation draws from with a 64-bit
    hash (BLAKE2b) of the integers ``key``: the same in every process, unrelated for neighbouring keys."""
    digest = hashlib.blake2b(np.asarray(key, dtype=np.int64).tobytes(), digest_size=8).digest()
    seed = int.from_bytes(digest, "little") >> 1
    torch.random.default_generator.manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)


class ShardStream(IterableDataset):
    """The training batches of one rank: each DataLoader worker (or the main process) plays one slot
    of :class:`StreamPlan` and yields collated batches; ``len`` = batches per epoch on this rank.

    Args:
        plan: the epoch plan (``plan.slots = world_size x workers``).
        rank, workers: this rank and the DataLoader workers per rank (0: the main process reads).
        make_item: ``(image uint8 (C, H, W), label, captions, id) -> item dict`` (augmentation included).
        decode: ``image bytes -> uint8 (C, H, W)`` (raises on undecodable data).
        fmt: where the fields of a sample are. needs_caption: a sample without a caption is bad (CLIP).
        per_class: ``K`` for class-balanced batches (None: plain). window: outputs re-grouped at once.
        strict: the first bad sample raises :class:`UnreadableImageError`. skipped: the shared count of bad samples.
    """

    def __init__(
        self,
        plan: StreamPlan,
        rank: int,
        workers: int,
        make_item: Callable[[Tensor, int, list[str], int], dict[str, Any]],
        decode: Callable[[bytes], Tensor],
        fmt: SampleFormat,
        needs_caption: bool = False,
        per_class: int | None = None,
        window: int | None = None,
        strict: bool = False,
        skipped: SkippedFiles | None = None,
    ) -> None:
        self.plan, self.rank, self.workers = plan, rank, max(1, workers)
        self.make_item, self.decode, self.fmt = make_item, decode, fmt
        self.needs_caption, self.per_class, self.strict = needs_caption, per_class, strict
        b = plan.batch_size
        self.window = b if per_class is None else max(b, (window or b) // b * b)
        self.skipped = skipped if skipped is not None else SkippedFiles()
        self._pass = torch.zeros(2, dtype=torch.long).share_memory_()  # (epoch, batches done): set by ShardLoader
        self._warned: set[str] = set()

    def __len__(self) -> int:
        if self.plan.resampled:
            raise TypeError("a resampled stream has no length")
        return self.workers * self.plan.slot_batches

    def set_pass(self, epoch: int, done: int) -> None:
        """The pass that starts now: its epoch and the batches of it already trained on (resume)."""
        self._pass[0], self._pass[1] = int(epoch), int(done)

    # --- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        if n_workers != self.workers:
            raise RuntimeError(f"the stream was planned for {self.workers} worker(s) but runs in {n_workers}")
        epoch, done = int(self._pass[0]), int(self._pass[1])
        role = (worker + done) % self.workers
        slot = self.rank * self.workers + role
        return self._slot_batches(epoch, slot, role_done(done, role, self.workers))

    def _slot_batches(self, epoch: int, slot: int, skip: int) -> Iterator[dict[str, Any]]:
        for rnd in self.plan.rounds(epoch, slot):
            if skip >= rnd.batches:
                skip -= rnd.batches
                continue
            yield from self._round_batches(rnd, skip)
            skip = 0

    def _round_batches(self, rnd: Round, skip: int) -> Iterator[dict[str, Any]]:
        """The batches of ``rnd`` after its first ``skip``: outputs in shuffle-buffer order, grouped."""
        b = self.plan.batch_size
        order = buffer_order(rnd.size, self.plan.shuffle_buffer, np.random.default_rng(list(rnd.key)))[: rnd.used]
        start = skip * b // self.window * self.window
        if start >= rnd.used:
            return
        needed = np.zeros(rnd.size, dtype=bool)
        needed[order[start:]] = True
        reader = self._read(rnd, needed)
        stash: dict[int, RawSample] = {}  # read, not yet emitted (at most the buffer)
        batch_index = start // b
        try:
            for unit in range(start, rnd.used, self.window):
                samples = []
                for t in range(unit, min(unit + self.window, rnd.used)):
                    q = int(order[t])
                    while q not in stash:
                        p, sample = next(reader)
                        stash[p] = sample
                    samples.append((t, stash.pop(q)))
                if self.per_class is None:
                    groups = [list(range(i, min(i + b, len(samples)))) for i in range(0, len(samples), b)]
                else:
                    labels = [self.fmt.label(s.raw) if s.raw is not None else -1 for _, s in samples]
                    rng = np.random.default_rng([*rnd.key, unit, 0x9C])
                    groups = pk_batches(labels, b, self.per_class, rng)
                for group in groups:
                    if batch_index >= skip:
                        yield self._batch([samples[i] for i in group], rnd.key)
                    batch_index += 1
        finally:
            reader.close()  # the open shard, if any

    def _read(self, rnd: Round, needed: np.ndarray) -> Iterator[tuple[int, RawSample]]:
        """``(position, sample)`` of the needed positions of ``rnd``, ascending."""
        pos = 0
        for shard_index, first, n in rnd.segments:
            ordinals = np.flatnonzero(needed[pos : pos + n])
            if len(ordinals):
                shard = self.plan.shards[shard_index]
                for sample in read_members(shard, ordinals + first):
                    yield pos + sample.ordinal - first, sample
            pos += n

    # --- one batch -----------------------------------------------------------------------------
    def _fields(self, sample: RawSample) -> tuple[Tensor, int, list[str]] | None:
        """The decoded image, label and captions, or None (after a warning) for a bad sample."""
        why = sample.error or "missing from the shard"
        if sample.raw is not None:
            data = self.fmt.image(sample.raw)
            label, captions = self.fmt.label(sample.raw), self.fmt.captions(sample.raw)
            try:
                if data is None:
                    raise ValueError(f"no image member ({'/'.join(self.fmt.image_keys)})")
                if self.needs_caption and not captions:
                    raise ValueError("no caption (key.txt or the json caption field)")
                if self.per_class is not None and label < 0:
                    raise ValueError("no label (key.cls or the json label field)")
                return self.decode(data), label, captions
            except Exception as err:  # any decoder failure
                why = f"{type(err).__name__}: {err}"
        if self.strict:
            raise UnreadableImageError(
                f"cannot read sample {sample.name} ({why}); fix or remove it, "
                "or set data.strict=false to skip bad samples with a warning."
            )
        if sample.name not in self._warned:
            self._warned.add(sample.name)
            warn_unreadable(f"sample {sample.name}", RuntimeError(why))
        return None

    def _batch(self, samples: list[tuple[int, RawSample]], key: tuple[int, ...]) -> dict[str, Any]:
        fields = [self._fields(s) for _, s in samples]
        good = [i for i, f in enumerate(fields) if f is not None]
        if not good:
            raise UnreadableImageError(
                f"none of the {len(samples)} samples of a batch could be read (first: {samples[0][1].name}); "
                "check the shards named by data.urls."
            )
        items = []
        for i, (t, sample) in enumerate(samples):
            f = fields[i]
            if f is None:  # substitute: the next readable sample of this batch, same label first
                self.skipped.add()
                label = self.fmt.label(sample.raw) if sample.raw is not None else -1
                ring = [j for j in good if j > i] + [j for j in good if j < i]
                same = [j for j in ring if fields[j][1] == label]  # type: ignore[index]
                j = (same or ring)[0]
                f, sample = fields[j], samples[j][1]
            image, label, captions = f  # type: ignore[misc]
            seed_item((*key, t))
            items.append(self.make_item(image, label, captions, sample.id))
        return default_collate(items)


class ShardLoader(DataLoader):
    """The DataLoader of a :class:`ShardStream` (batches come collated from the stream). Every
    ``iter()`` starts a pass: its ``(epoch, batches done)`` comes from the callable given to
    :meth:`follow` (:class:`~contrastlab.training.data_order.DataOrder.next_pass`), else passes count 0, 1, ..."""

    def __init__(self, dataset: ShardStream, num_workers: int = 0, **kwargs: Any) -> None:
        super().__init__(
            dataset, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0, **kwargs
        )
        self._next_pass: Callable[[], tuple[int, int]] | None = None
        self._passes = 0

    def follow(self, next_pass: Callable[[], tuple[int, int]]) -> None:
        """Take each pass's ``(epoch, batches already done)`` from ``next_pass``."""
        self._next_pass = next_pass

    def __iter__(self) -> Any:
        if self._next_pass is not None:
            epoch, done = self._next_pass()
        else:
            epoch, done = self._passes, 0
            self._passes += 1
        self.dataset.set_pass(epoch, done)  # type: ignore[attr-defined]
        return super().__iter__()


def decode_image(data: bytes, size: int | None, channels: int = 3, resize_mode: str = "shortest") -> Tensor:
    """Image bytes -> uint8 (channels, size, size) (:func:`~contrastlab.data.image_files.load_image`)."""
    return load_image(io.BytesIO(data), size, channels, resize_mode)  # type: ignore[arg-type]
