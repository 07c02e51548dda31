"""The image-caption table datamodule: CSV / TSV / JSONL, several captions per image, labels, splits."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from contrastlab.data.image_text_csv import ImageTextCSVDataModule


@pytest.fixture
def images(tmp_path):
    for i in range(10):
        Image.new("RGB", (20 + i, 16), (25 * i, 100, 200 - 10 * i)).save(tmp_path / f"{i}.png")
    return tmp_path


def _rows(n=10):
    return [
        (f"{i}.png", f"caption {i} {k}", "even" if i % 2 == 0 else "odd") for i in range(n) for k in range(1 + i % 3)
    ]


def test_csv_groups_captions_by_image_and_splits_by_image(images):
    lines = ["filepath,caption,kind"] + [",".join(r) for r in _rows()]
    (images / "t.csv").write_text("\n".join(lines) + "\n")
    dm = ImageTextCSVDataModule(path=str(images / "t.csv"), label_key="kind", val_fraction=0.3, image_size=12)
    dm.setup()
    train, val = dm.train_split, dm.val_split
    assert len(train) + len(val) == 10 and len(val) == 3
    assert {str(p) for p in train.images}.isdisjoint({str(p) for p in val.images})
    for split in (train, val):
        for path, caps in zip(split.images, split.captions, strict=True):
            i = int(path.stem)
            assert caps == [f"caption {i} {k}" for k in range(1 + i % 3)]
    assert dm.class_names == ["even", "odd"]
    assert [int(p.stem) % 2 for p in train.images] == train.labels.tolist()
    captions, owner = dm.val_captions()
    assert len(captions) == sum(len(c) for c in val.captions) and owner.max().item() == 2
    batch = next(iter(dm.val_image_dataloader()))
    assert batch["image"].shape == (3, 3, 12, 12)  # shorter side resized, centre-cropped
    assert dm.has_labels


def test_tsv_and_jsonl_with_caption_lists(images):
    rows = _rows()
    (images / "t.tsv").write_text("path\ttext\n" + "\n".join(f"{a}\t{b}" for a, b, _ in rows) + "\n")
    tsv = ImageTextCSVDataModule(path=str(images / "t.tsv"), filepath_key="path", caption_key="text", val_fraction=0.2)
    tsv.setup()
    assert sum(len(c) for c in tsv.train_split.captions + tsv.val_split.captions) == len(rows)
    assert not tsv.has_labels and tsv.train_split.labels.eq(-1).all()
    jsonl = images / "t.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"filepath": f"{i}.png", "caption": [f"a {i}", f"b {i}"]}) for i in range(10))
    )
    dm = ImageTextCSVDataModule(path=str(jsonl), val_path=str(jsonl))
    dm.setup()
    assert len(dm.train_split) == len(dm.val_split) == 10
    assert dm.train_split.captions[3] == ["a 3", "b 3"]
    assert len(dm.train_texts()) == 20


def test_bad_tables_name_the_key(images):
    (images / "t.csv").write_text("file,caption\n0.png,x\n")
    with pytest.raises(Exception, match="data.filepath_key"):
        ImageTextCSVDataModule(path=str(images / "t.csv")).setup()
    (images / "u.csv").write_text("filepath,caption\nmissing.png,x\n0.png,y\n")
    with pytest.raises(Exception, match="data.image_root"):
        ImageTextCSVDataModule(path=str(images / "u.csv")).setup()
    with pytest.raises(ValueError, match="data.path"):
        ImageTextCSVDataModule(path=None)


def test_pair_batches_carry_raw_captions(images):
    lines = ["filepath,caption"] + [f"{a},{b}" for a, b, _ in _rows()]
    (images / "t.csv").write_text("\n".join(lines) + "\n")
    dm = ImageTextCSVDataModule(path=str(images / "t.csv"), batch_size=4, image_size=8, val_fraction=0.2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 8, 8) and batch["image"].dtype == torch.float32
    assert all(isinstance(t, str) for t in batch["text"])
    # with the no-duplicates sampler, no image and no caption repeats in a batch
    from functools import partial

    from contrastlab.data.no_duplicates import NoDuplicatesBatchSampler

    dm2 = ImageTextCSVDataModule(
        path=str(images / "t.csv"),
        batch_size=4,
        image_size=8,
        val_fraction=0.2,
        batch_sampler=partial(NoDuplicatesBatchSampler),
    )
    for b in dm2.train_dataloader():
        assert len(set(b["image_index"].tolist())) == len(b["text"]) == len(set(b["text"])) == 4
