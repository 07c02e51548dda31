"""Image folders: class sub-folders or flat, val split / val_dir, resizing, and bad data (corrupt files
skipped with a warning and counted, strict mode, empty folders)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import open_dict
from PIL import Image
from torch.utils.data import DataLoader
from writers import write_image_folder

from contrastlab.config.build import CONF_DIR, build_callbacks, build_datamodule
from contrastlab.data import (
    DataDirError,
    ImageFolderDataModule,
    SimCLRAugment,
    SkippedFilesReport,
    UnreadableImageError,
    UnreadableImageWarning,
)
from contrastlab.data.image_files import ImageFileDataset

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "owl": (30, 30, 200)}


def test_class_folders_round_trip(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets", {"cat": 8, "dog": 8, "owl": 8})
    dm = ImageFolderDataModule(
        data_dir=str(root), image_size=16, val_fraction=0.25, batch_size=4, augment=SimCLRAugment(16)
    )
    assert dm.has_labels and dm.classes == ["cat", "dog", "owl"] and dm.num_classes == 3
    dm.setup()
    assert (len(dm.train_base), len(dm.val_base)) == (18, 6)
    assert sorted(label for _, label in dm.val_base.samples) == [0, 0, 1, 1, 2, 2]  # stratified
    img, label = dm.train_base[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 16, 16)  # any size -> centre square image_size
    colour = torch.tensor(COLOURS[dm.classes[label]], dtype=torch.uint8).view(3, 1, 1)
    assert torch.equal(img, colour.expand(3, 16, 16))
    assert torch.equal(dm.train_labels(), torch.tensor([lb for _, lb in dm.train_base.samples]))
    batch = next(iter(dm.train_dataloader()))
    assert [v.shape for v in batch["views"]] == [(4, 3, 16, 16)] * 2
    assert batch["label"].tolist() == [dm.train_base.samples[i][1] for i in batch["index"].tolist()]
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (4, 3, 16, 16)
    assert val["label"].tolist() == [label for _, label in dm.val_base.samples[:4]]
    # the split is a function of the seed
    again = ImageFolderDataModule(data_dir=str(root), image_size=16, val_fraction=0.25)
    other = ImageFolderDataModule(data_dir=str(root), image_size=16, val_fraction=0.25, seed=1)
    again.setup(), other.setup()
    assert again.val_base.samples == dm.val_base.samples != other.val_base.samples


def test_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "flat", flat=10)
    dm = ImageFolderDataModule(
        data_dir=str(root), image_size=8, val_fraction=0.2, batch_size=4, augment=SimCLRAugment(8)
    )
    assert not dm.has_labels and dm.num_classes is None and dm.classes == []
    dm.setup()
    assert (len(dm.train_base), len(dm.val_base)) == (8, 2)
    batch = next(iter(dm.train_dataloader()))
    assert [v.shape for v in batch["views"]] == [(4, 3, 8, 8)] * 2 and batch["label"].tolist() == [-1] * 4
    assert next(iter(dm.val_dataloader()))["label"].tolist() == [-1, -1]


def test_val_dir_and_grey_and_load_size(tmp_path: Path) -> None:
    train = write_image_folder(tmp_path / "train", {"cat": 3, "dog": 3, "owl": 3})
    val = write_image_folder(tmp_path / "val", {"dog": 2, "owl": 1})
    dm = ImageFolderDataModule(data_dir=str(train), val_dir=str(val), image_size=8, load_size=12, channels=1)
    dm.setup()
    assert len(dm.train_base) == 9
    assert [lb for _, lb in dm.val_base.samples] == [1, 1, 2]  # indices of data_dir's classes
    img, _ = dm.val_base[0]
    assert img.shape == (1, 12, 12)  # decoded at load_size ...
    assert next(iter(dm.val_dataloader()))["image"].shape == (3, 1, 8, 8)  # ... evaluated at image_size
    write_image_folder(tmp_path / "val", {"cat": 1})
    (tmp_path / "val" / "fox").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "fox" / "a.png")
    with pytest.raises(DataDirError, match=r"data\.val_dir=.*sub-folders named as in data\.data_dir.*fox"):
        ImageFolderDataModule(data_dir=str(train), val_dir=str(val))


def test_empty_folders_fail_at_construction(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataDirError, match=r"data\.data_dir=.*empty folder"):
        ImageFolderDataModule(data_dir=str(tmp_path / "empty"))
    with pytest.raises(DataDirError, match=r"data\.data_dir=.*does not exist; set data\.data_dir"):
        ImageFolderDataModule(data_dir=str(tmp_path / "nowhere"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    with pytest.raises(DataDirError, match=r"data\.data_dir=.*contains no images"):
        ImageFolderDataModule(data_dir=str(tmp_path / "notes"))
    root = write_image_folder(tmp_path / "pets", {"cat": 2, "dog": 2})
    (root / "zebra").mkdir()
    (root / "zebra" / "notes.txt").write_text("x")
    with pytest.raises(DataDirError, match=r"class folder\(s\) .*zebra contain no images"):
        ImageFolderDataModule(data_dir=str(root))
    with pytest.raises(DataDirError, match=r"data\.val_fraction=0\.0"):
        ImageFolderDataModule(data_dir=str(tmp_path / "pets" / "cat"), val_fraction=0.0)


def test_corrupt_images_are_skipped_with_a_warning_and_counted(tmp_path: Path) -> None:
    corrupt = ("cat/bad.jpg", "dog/half.png")
    root = write_image_folder(tmp_path / "pets", {"cat": 4, "dog": 4}, corrupt=corrupt)
    samples = sorted((str(p), 0 if p.parent.name == "cat" else 1) for p in root.glob("*/*"))
    ds = ImageFileDataset(samples, size=8)
    bad = [i for i, (p, _) in enumerate(samples) if p.endswith(("bad.jpg", "half.png"))]
    for i in bad:
        with pytest.warns(UnreadableImageWarning, match=rf"skipping unreadable image {samples[i][0]}"):
            img, label = ds[i]
        assert img.shape == (3, 8, 8) and label == samples[i][1]  # replaced by a readable image of its class
        assert torch.equal(img[:, 0, 0], torch.tensor(COLOURS[("cat", "dog")[label]], dtype=torch.uint8))
    assert ds.skipped.count == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        labels = [label for _, label in DataLoader(ds, batch_size=5)]
    assert ds.skipped.take() == 4 and ds.skipped.count == 0  # two more skips in the pass; take() resets
    assert torch.cat(labels).tolist() == [lb for _, lb in samples]


def test_skips_in_worker_processes_reach_the_main_process(tmp_path: Path) -> None:
    corrupt = ("cat/bad1.jpg", "cat/bad2.jpg", "cat/bad3.png")
    root = write_image_folder(tmp_path / "pets", {"cat": 4}, corrupt=corrupt)
    ds = ImageFileDataset([(str(p), 0) for p in sorted(root.glob("*/*"))], size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        n = sum(len(b[1]) for b in DataLoader(ds, batch_size=2, num_workers=2))
    assert n == 7 and ds.skipped.count == 3


def test_strict_stops_naming_the_file(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets", {"cat": 4, "dog": 4}, corrupt=("dog/bad.jpg",))
    dm = ImageFolderDataModule(data_dir=str(root), image_size=8, strict=True, val_fraction=0.3)
    dm.setup()
    everything = dm.train_base.samples + dm.val_base.samples
    split = dm.train_base if any(p.endswith("bad.jpg") for p, _ in dm.train_base.samples) else dm.val_base
    i = next(i for i, (p, _) in enumerate(split.samples) if p.endswith("bad.jpg"))
    bad = root / "dog" / "bad.jpg"
    with pytest.raises(UnreadableImageError, match=rf"cannot read image {bad} .*data\.strict=false"):
        split[i]
    assert len(everything) == 9


def test_no_readable_image_left(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "bad", corrupt=("a.jpg", "b.jpg"))
    ds = ImageFileDataset([(str(root / "a.jpg"), -1), (str(root / "b.jpg"), -1)], size=8)
    with (
        pytest.warns(UnreadableImageWarning) as record,
        pytest.raises(UnreadableImageError, match="none of the 2 images"),
    ):
        ds[0]
    assert sorted(Path(str(w.message).split()[3]).name for w in record) == ["a.jpg", "b.jpg"]  # each file, once


def _compose(tmp_path: Path, *overrides: str, only_checkpoint: bool = False):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path / 'run'}", *overrides])
    if only_checkpoint:  # the callback under test and the kNN monitor it ranks by; the others: by their owners
        with open_dict(cfg):
            cfg.callbacks = {"model_checkpoint": cfg.callbacks.model_checkpoint, "knn": cfg.callbacks.knn}
    return cfg


def test_callbacks_follow_the_labels(tmp_path: Path) -> None:
    """Unlabelled folders have no kNN metric: the checkpoint callback keeps last.ckpt only; image
    folders also get the per-epoch skipped-files report."""
    flat = write_image_folder(tmp_path / "flat", flat=4)
    pets = write_image_folder(tmp_path / "pets", {"cat": 2, "dog": 2})
    for root, labelled in ((flat, False), (pets, True)):
        overrides = ("data=imagefolder", f"data.data_dir={root}", "augment=simclr")
        cfg = _compose(tmp_path, *overrides, only_checkpoint=True)
        dm = build_datamodule(cfg)
        assert dm.has_labels is labelled
        callbacks = build_callbacks(cfg, dm)
        ckpt = next(c for c in callbacks if isinstance(c, ModelCheckpoint))
        # last.ckpt is written by callbacks.step_checkpoint (every N steps and each epoch end), not here
        assert ckpt.monitor == ("val/knn_top1" if labelled else None)
        assert ckpt.save_top_k == (1 if labelled else 0)
        assert sum(isinstance(c, SkippedFilesReport) for c in callbacks) == 1
    cfg = _compose(tmp_path, only_checkpoint=True)  # digits: no file skipping, no report
    assert not any(isinstance(c, SkippedFilesReport) for c in build_callbacks(cfg, build_datamodule(cfg)))
    # labelled, but callbacks.knn off: nothing logs val/knn_top1, so nothing is ranked by it either
    cfg = _compose(tmp_path, "data=imagefolder", f"data.data_dir={pets}", "augment=simclr", only_checkpoint=True)
    with open_dict(cfg):
        cfg.callbacks.knn = None
    ckpt = next(c for c in build_callbacks(cfg, build_datamodule(cfg)) if isinstance(c, ModelCheckpoint))
    assert ckpt.monitor is None and ckpt.save_top_k == 0


def test_imagefolder_config_composes_with_simclr(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets", {"cat": 3, "dog": 3})
    cfg = _compose(tmp_path, "data=imagefolder", f"data.data_dir={root}", "augment=simclr")
    dm = build_datamodule(cfg)
    assert isinstance(dm, ImageFolderDataModule) and dm.image_size == 64 == cfg.augment.image_size
    assert np.allclose(dm.normalize.mean, [0.485, 0.456, 0.406])
