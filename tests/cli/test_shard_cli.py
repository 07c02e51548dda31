"""``contrastlab-shard``: an image folder (labels from class sub-folders) or a caption table into tar shards of a
target size (``key.png|jpg`` + ``key.cls`` / ``key.txt`` / ``key.json``, ``sizes.json``, ``classes.json``), with a
held-out validation set, that ``data=webdataset`` reads back sample for sample."""

from __future__ import annotations

import csv
import io
import json
import tarfile
import tomllib
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cli
from hydra import compose, initialize_config_dir
from PIL import Image
from writers import write_image_folder, write_image_text_csv

from contrastlab.cli.shard import run_shard
from contrastlab.config import CONF_DIR
from contrastlab.data.image_files import load_image
from contrastlab.data.shard_stream import decode_image, expand_shard_urls, shard_sizes
from contrastlab.data.shards import CaptionShardsDataModule, ImageShardsDataModule
from contrastlab.errors import ConfigError


def shard_config(**overrides: object):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("shard", overrides=[f"{k}={v}" for k, v in overrides.items()])


def samples(paths: list[Path]) -> dict[str, dict[str, bytes]]:
    """Every sample of the shards: key -> {extension: bytes}."""
    out: dict[str, dict[str, bytes]] = {}
    for path in paths:
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def test_an_image_folder_becomes_labelled_shards_of_the_target_size(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "pets", {"cat": 9, "dog": 8, "owl": 7})  # png, jpg and bmp files
    out = tmp_path / "shards"
    proc = run_cli(
        "shard", f"input={folder}", f"output={out}", "val_fraction=0.25", "shard_size_mb=0.02", "progress=false",
        tmp_path=tmp_path,
    )  # fmt: skip
    train, val = sorted(out.glob("train-*.tar")), sorted(out.glob("val-*.tar"))
    assert "wrote" in proc.stdout and f"data.urls='{out}/train-{{000000..{len(train) - 1:06d}}}.tar'" in proc.stdout
    assert len(train) > 1 and len(val) >= 1
    for path in train:  # a new shard starts before the target size would be passed (tar: + end blocks, 10 KiB records)
        assert path.stat().st_size <= 0.02e6 + 1024 + 10240
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {p.name: len(samples([p])) for p in train + val}
    assert json.loads((out / "classes.json").read_text()) == ["cat", "dog", "owl"]
    written = samples(train + val)
    assert len(written) == 24 and len(samples(val)) == 6  # every image once; a quarter held out
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    by_name = {(f.parent.name, f.name): f for f in files}
    for member in written.values():
        meta = json.loads(member["json"])
        source = by_name[(meta["class"], meta["source"])]
        assert int(member["cls"]) == meta["label"] == ["cat", "dog", "owl"].index(meta["class"])
        if source.suffix in (".png", ".jpg"):  # copied byte for byte
            assert member[source.suffix[1:]] == source.read_bytes()
        else:  # BMP: re-encoded losslessly as PNG
            decoded = decode_image(member["png"], None)
            assert torch.equal(decoded, load_image(source, None))
    # read back: the datamodule sees the same samples and labels
    dm = ImageShardsDataModule(urls=[str(p) for p in train], val_urls=[str(p) for p in val], batch_size=2)
    assert dm.has_labels and dm.classes == ["cat", "dog", "owl"] and sum(s.count for s in dm.shards) == 18


def test_a_caption_table_becomes_caption_shards(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = write_image_text_csv(tmp_path / "coco", n_images=12, labelled=True)
    out = tmp_path / "shards"
    result = run_shard(
        shard_config(input=table, output=out, label_key="shape", val_fraction=0.25, progress=False, resize=16)
    )
    assert result["samples"] == {"train": 9, "val": 3}
    printed = capsys.readouterr().out
    assert "objective=clip data=webdataset" in printed and "data.content=captions" in printed
    assert json.loads((out / "classes.json").read_text()) == ["circle", "square"]
    rows: dict[str, tuple[list[str], str]] = {}
    with table.open() as fh:
        for row in csv.DictReader(fh):
            rows.setdefault(Path(row["filepath"]).name, ([], row["shape"]))[0].append(row["caption"])
    for member in samples([Path(p) for p in result["shards"]["train"] + result["shards"]["val"]]).values():
        meta = json.loads(member["json"])
        captions, shape = rows[meta["source"]]
        assert meta["captions"] == captions and member["txt"].decode() == captions[0]
        assert meta["class"] == shape and int(member["cls"]) == ["circle", "square"].index(shape)
        with Image.open(io.BytesIO(member["png"])) as im:
            assert min(im.size) == 16  # resize=16: the shorter side scaled down to 16
    urls = expand_shard_urls(result["shards"]["train"])
    dm = CaptionShardsDataModule(urls=urls, val_urls=result["shards"]["val"], batch_size=3, image_size=8)
    captions, owner = dm.val_captions()  # every caption of every held-out image, with its image
    val = [json.loads(m["json"]) for m in samples([Path(p) for p in result["shards"]["val"]]).values()]
    assert captions == [c for meta in val for c in meta["captions"]]
    assert owner.tolist() == [i for i, meta in enumerate(val) for _ in meta["captions"]]
    assert shard_sizes(urls, "data.urls") == [9]


def test_bad_input_ends_with_one_line(tmp_path: Path) -> None:
    proc = run_cli("shard", f"input={tmp_path / 'nowhere'}", f"output={tmp_path / 'o'}", tmp_path=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: input={tmp_path / 'nowhere'} is neither a folder of images nor a caption table "
        "(.csv, .tsv, .tab, .jsonl, .json); set input to one of those."
    ]
    folder = write_image_folder(tmp_path / "imgs", flat=4)
    run_shard(shard_config(input=folder, output=tmp_path / "o", progress=False))
    with pytest.raises(ConfigError, match="already holds train shards; set another output, or overwrite=true"):
        run_shard(shard_config(input=folder, output=tmp_path / "o", progress=False))
    result = run_shard(shard_config(input=folder, output=tmp_path / "o", progress=False, overwrite=True))
    assert result["samples"] == {"train": 4} and not (tmp_path / "o" / "classes.json").exists()  # unlabelled
    with pytest.raises(ConfigError, match="val_fraction=1.5 must be in"):
        run_shard(shard_config(input=folder, output=tmp_path / "p", val_fraction=1.5))


def test_the_command_is_declared() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["contrastlab-shard"] == "contrastlab.cli.shard:main"
