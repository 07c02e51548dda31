"""Bad data in a caption table: an unreadable image is skipped with a warning naming it (or stops the run
with ``data.strict=true``); a missing table, missing columns or missing images fail at start-up with one
sentence naming the key (exit status 2 on the command line)."""

from __future__ import annotations

import csv
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import cli_env
from PIL import Image

from contrastlab.cli import boundary
from contrastlab.config import build
from contrastlab.data.image_files import SkippedFilesReport, UnreadableImageError, UnreadableImageWarning
from contrastlab.data.image_text_csv import CaptionTableError, ImageTextCSVDataModule


def write_table(root: Path, n: int = 8, corrupt: tuple[int, ...] = (), missing: tuple[int, ...] = ()) -> Path:
    """``n`` PNGs (some truncated to garbage, some never written) and ``captions.csv`` listing all."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"images/{i:02d}.png"
        if i in corrupt:
            (root / name).write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
        elif i not in missing:
            Image.new("RGB", (20, 20), (10 * i, 200 - 10 * i, 90)).save(root / name)
        rows.append({"filepath": name, "caption": f"picture number {i}"})
    path = root / "captions.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["filepath", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def datamodule(path: Path, **kw) -> ImageTextCSVDataModule:
    return ImageTextCSVDataModule(path=str(path), batch_size=4, image_size=16, val_fraction=0.25, **kw)


def test_an_unreadable_image_is_skipped_with_a_warning_naming_it_and_counted(tmp_path):
    path = write_table(tmp_path, corrupt=(3,))
    dm = datamodule(path)
    dm.setup()
    bad = str(tmp_path / "images" / "03.png")
    with pytest.warns(UnreadableImageWarning, match=f"skipping unreadable image {bad}"):
        images = [dm.train_split.image(i) for i in range(len(dm.train_split))] + [
            dm.val_split.image(i) for i in range(len(dm.val_split))
        ]
    assert all(img.shape == (3, 20, 20) and img.dtype == torch.uint8 for img in images)  # all items served
    assert dm.skipped.count == 1  # one request for the unreadable file
    # the count is logged at the end of the epoch by the callback build_callbacks adds for such data
    assert any(isinstance(cb, SkippedFilesReport) for cb in build.build_callbacks({}, dm))
    # a whole training pass: batches keep their size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.augment = None
        sizes = [len(b["image"]) for b in dm.train_dataloader()]
    assert sizes and all(s == 4 for s in sizes)


def test_strict_stops_at_the_unreadable_image_naming_it(tmp_path):
    path = write_table(tmp_path, corrupt=(3,))
    dm = datamodule(path, strict=True)
    dm.setup()
    bad = tmp_path / "images" / "03.png"
    split = dm.train_split if bad in dm.train_split.images else dm.val_split
    with pytest.raises(UnreadableImageError, match=f"cannot read image {bad}.*data.strict=false"):
        split.image(list(split.images).index(bad))


def test_a_table_listing_missing_images_fails_at_setup_naming_the_key(tmp_path):
    path = write_table(tmp_path, missing=(2, 5))
    with pytest.raises(CaptionTableError, match=r"2 image\(s\) listed in .* do not exist .*set data.image_root"):
        datamodule(path).setup()
    with pytest.raises(CaptionTableError) as err:
        datamodule(path, image_root=str(tmp_path / "elsewhere")).setup()
    assert boundary.is_bad_input(err.value)  # the command line: one line, exit status 2
    assert "\n" not in boundary.message_for(err.value)


def test_a_table_without_the_caption_column_fails_at_setup_naming_the_key(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("filepath,text\nimages/00.png,hello\n")
    with pytest.raises(CaptionTableError, match=r"has no column 'caption' .*set data.filepath_key / data.caption_key"):
        datamodule(path).setup()


def test_a_missing_caption_file_is_a_start_up_error_on_the_command_line(tmp_path):
    missing = tmp_path / "nowhere" / "captions.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "contrastlab.cli.train",
            "objective=clip",
            "data=image_text_csv",
            f"data.path={missing}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        env=cli_env(tmp_path),
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: data.path={missing} does not exist; set data.path to your table "
        "(image paths and captions, CSV / TSV / JSONL)."
    ]
    with pytest.raises(CaptionTableError, match=f"data.path={missing} does not exist"):
        datamodule(missing).setup()


def test_strict_in_a_dataloader_worker_is_still_one_line(tmp_path):
    """An error raised in a DataLoader worker arrives with the worker's traceback in its message; the
    command line still prints one sentence (the error's own), exit status 2."""
    path = write_table(tmp_path, n=8, corrupt=tuple(range(8)))
    dm = datamodule(path, strict=True, num_workers=1)
    dm.setup()
    with pytest.raises(UnreadableImageError) as err:
        next(iter(dm.val_image_dataloader()))
    assert "Traceback" in str(err.value)  # what DataLoader hands back
    message = boundary.message_for(err.value)
    assert message.startswith("cannot read image ") and "data.strict=false" in message and "\n" not in message
