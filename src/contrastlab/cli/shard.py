"""``contrastlab-shard``: an image folder or a caption table written as tar shards for ``data=webdataset``.

    contrastlab-shard input=~/data/pets output=~/shards/pets val_fraction=0.1        # class sub-folders -> labels
    contrastlab-shard input=captions.csv output=~/shards/coco val_fraction=0.05      # a caption table (CLIP)
    contrastlab-shard input=~/data/raw output=~/shards/raw shard_size_mb=512 resize=256

An image folder follows ``data=imagefolder``: class sub-folders give labels (``key.cls``, the class index of
the sorted folder names, and ``classes.json``), a flat folder is unlabelled. A caption table follows
``data=image_text_csv``: one row per (filepath, caption), rows of one image grouped (``key.txt`` = its first
caption, every caption in ``key.json``), an optional ``label_key`` column. Samples are written in a seeded
random order (``shuffle``) into ``<output>/<name>-000000.tar``, ... of about ``shard_size_mb`` each, with
``sizes.json``; ``val_fraction`` of them go to ``<output>/<val_name>-*.tar`` instead. The command ends by
printing the ``contrastlab-train`` overrides that read the shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from contrastlab.cli import boundary
from contrastlab.config import CONF_DIR
from contrastlab.data.image_files import find_image_samples
from contrastlab.data.image_text_csv import read_table
from contrastlab.data.shard_writer import (
    ShardWriter,
    brace_urls,
    image_member,
    sample_members,
    write_classes,
)
from contrastlab.errors import ConfigError

TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".jsonl", ".json")


@dataclass
class Entry:
    """One sample to write: an image file, its label (-1: none) and its captions."""

    path: Path
    label: int = -1
    captions: list[str] = field(default_factory=list)


def folder_entries(root: Path) -> tuple[list[Entry], list[str]]:
    """Every image under ``root`` (class sub-folders -> labels) and the class names."""
    samples, classes = find_image_samples(root, "input")
    return [Entry(Path(p), int(y)) for p, y in samples], classes


def table_entries(cfg: DictConfig, path: Path) -> tuple[list[Entry], list[str]]:
    """The images of a caption table with their captions (rows grouped by file path) and labels."""
    table = read_table(path, cfg.get("format"))
    keys = [cfg.filepath_key, cfg.caption_key] + ([cfg.label_key] if cfg.get("label_key") else [])
    for key in keys:
        if key not in table.columns:
            raise ConfigError(
                f"{path} has no column '{key}' (columns: {list(table.columns)}); "
                "set filepath_key / caption_key / label_key to its column names."
            )
    root = Path(str(cfg.image_root)).expanduser() if cfg.get("image_root") else path.parent
    captions: dict[str, list[str]] = {}
    raw_labels: dict[str, Any] = {}
    for row in table.to_dict("records"):
        fp, caps = str(row[cfg.filepath_key]), row[cfg.caption_key]
        captions.setdefault(fp, []).extend([str(c) for c in caps] if isinstance(caps, list) else [str(caps)])
        if cfg.get("label_key"):
            raw_labels.setdefault(fp, row[cfg.label_key])
    paths = {fp: Path(fp) if Path(fp).is_absolute() else root / fp for fp in captions}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ConfigError(
            f"{len(missing)} image(s) listed in {path} do not exist (first: {missing[0]}); "
            "set image_root to the folder the file paths are relative to."
        )
    classes: list[str] = []
    ids: dict[str, int] = {}
    if raw_labels:
        values = list(raw_labels.values())
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            ids = {fp: int(v) for fp, v in raw_labels.items()}
        else:
            classes = sorted({str(v) for v in values})
            index = {c: i for i, c in enumerate(classes)}
            ids = {fp: index[str(v)] for fp, v in raw_labels.items()}
    return [Entry(paths[fp], ids.get(fp, -1), caps) for fp, caps in captions.items()], classes


def write_split(
    entries: Sequence[tuple[int, Entry]],
    output: Path,
    name: str,
    cfg: DictConfig,
    classes: Sequence[str],
) -> list[tuple[Path, int]]:
    """``entries`` (original index, entry) into ``<output>/<name>-*.tar``; returns the shards and their counts."""
    max_count = int(cfg.max_count) if cfg.get("max_count") else None
    resize = int(cfg.resize) if cfg.get("resize") else None
    with ShardWriter(output, name, float(cfg.shard_size_mb) * 1e6, max_count) as writer:
        for i, e in tqdm(entries, desc=f"{name} shards", unit="img", disable=not cfg.progress):
            class_name = classes[e.label] if 0 <= e.label < len(classes) else None
            members = sample_members(image_member(e.path, resize), e.label, class_name, e.captions, e.path.name)
            writer.write(f"{i:09d}", members)
    return writer.written


def run_shard(cfg: DictConfig) -> dict[str, Any]:
    if not cfg.get("input") or not cfg.get("output"):
        raise ConfigError("contrastlab-shard needs input=<image folder or caption table> and output=<folder>.")
    source, output = Path(str(cfg.input)).expanduser(), Path(str(cfg.output)).expanduser()
    if not 0.0 <= float(cfg.val_fraction) < 1.0:
        raise ConfigError(f"val_fraction={cfg.val_fraction} must be in [0, 1); set e.g. val_fraction=0.1.")
    if float(cfg.shard_size_mb) <= 0:
        raise ConfigError(f"shard_size_mb={cfg.shard_size_mb} must be > 0; set e.g. shard_size_mb=256.")
    if source.is_file() and source.suffix.lower() in TABLE_SUFFIXES:
        entries, classes = table_entries(cfg, source)
    elif source.is_dir():
        entries, classes = folder_entries(source)
    else:
        raise ConfigError(
            f"input={source} is neither a folder of images nor a caption table ({', '.join(TABLE_SUFFIXES)}); "
            "set input to one of those."
        )
    names = [str(cfg.name)] + ([str(cfg.val_name)] if cfg.val_fraction > 0 else [])
    if len(set(names)) < len(names):
        raise ConfigError(f"name and val_name are both '{cfg.name}'; set val_name to another prefix.")
    taken = [n for n in names if (output / f"{n}-000000.tar").exists()]
    if taken and not cfg.overwrite:
        raise ConfigError(f"output={output} already holds {taken[0]} shards; set another output, or overwrite=true.")
    for n in taken:  # overwrite: remove the old shards of these prefixes, so no stale shard stays behind
        for old in output.glob(f"{n}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
            old.unlink()
    order = list(range(len(entries)))
    if cfg.shuffle:
        order = np.random.default_rng(int(cfg.seed)).permutation(len(entries)).tolist()
    n_val = max(1, round(float(cfg.val_fraction) * len(entries))) if cfg.val_fraction > 0 else 0
    if n_val >= len(entries):
        raise ConfigError(f"input holds {len(entries)} image(s): too few to hold out val_fraction={cfg.val_fraction}.")
    val = sorted(order[:n_val]) if n_val else []
    held = set(val)
    train = [i for i in order if i not in held]
    output.mkdir(parents=True, exist_ok=True)
    if classes:
        write_classes(output, classes)
    written = {"train": write_split([(i, entries[i]) for i in train], output, str(cfg.name), cfg, classes)}
    if val:
        written["val"] = write_split([(i, entries[i]) for i in val], output, str(cfg.val_name), cfg, classes)
    counts = {k: sum(n for _, n in v) for k, v in written.items()}
    parts = [f"{len(v)} {k} shard(s) ({counts[k]} samples)" for k, v in written.items()]
    print(f"wrote {' and '.join(parts)} to {output}" + (f" ({len(classes)} classes)" if classes else ""))
    args = ["data=webdataset", f"\"data.urls='{brace_urls([p for p, _ in written['train']])}'\""]
    if val:
        args.append(f"\"data.val_urls='{brace_urls([p for p, _ in written['val']])}'\"")
    if any(e.captions for e in entries):
        args = ["objective=clip", *args, "data.content=captions"]
    print("train on them: contrastlab-train " + " ".join(args))
    return {"shards": {k: [str(p) for p, _ in v] for k, v in written.items()}, "samples": counts}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="shard")
def hydra_main(cfg: DictConfig) -> None:
    boundary.run_task(run_shard, cfg)


def main() -> Any:
    """The ``contrastlab-shard`` command; bad input ends with one line on stderr and exit status 2."""
    return boundary.run_main(hydra_main)


if __name__ == "__main__":
    main()
