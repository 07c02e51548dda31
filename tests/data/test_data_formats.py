"""CIFAR-10/100 and STL-10 datamodules on tiny files written in torchvision's real on-disk formats.

The writers below produce the same files the official archives unpack to (CIFAR: python pickles of
``{"data": uint8 (N, 3072) channel planes, "labels" / "fine_labels": [...]}``; STL-10: raw uint8
``(N, 3, 96, 96)`` column-major binaries and 1-based label bytes), only with a few images each.
They are imported by ``test_data_runs.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from writers import _cifar_batch, _images, _pickle, write_cifar10

from contrastlab.config.checks import ConfigError, check_data_dir
from contrastlab.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DataDirError,
    SimCLRAugment,
    STL10DataModule,
)

# ---------------------------------------------------------------------------------------------------
# writers of the real formats


def write_cifar100(root: Path, n_train: int = 12, n_test: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """``root/cifar-100-python/{train, test, meta}`` with fine and coarse labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = _images(rng, n, 32), rng.integers(0, 100, n)
        batch = _cifar_batch(x, y.tolist(), "fine_labels", split)
        batch["coarse_labels"] = (y // 5).tolist()
        _pickle(folder / split, batch)
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    fine, coarse = [f"fine{i}" for i in range(100)], [f"coarse{i}" for i in range(20)]
    _pickle(folder / "meta", {"fine_label_names": fine, "coarse_label_names": coarse})
    return out


def write_stl10(
    root: Path, n_train: int = 6, n_test: int = 4, n_unlabeled: int = 5, seed: int = 0
) -> dict[str, np.ndarray]:
    """``root/stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin, class_names.txt, fold_indices.txt``."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        x = _images(rng, n, 96)
        # the binaries store each (3, 96, 96) image column-major: channel, column, row
        (folder / f"{split}_X.bin").write_bytes(x.transpose(0, 3, 2, 1).tobytes())
        out[f"{split}_x"] = x
        if split != "unlabeled":
            y = rng.integers(0, 10, n)
            (folder / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())  # 1-based on disk
            out[f"{split}_y"] = y
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    folds = [" ".join(str(i) for i in rng.permutation(n_train)[:3]) for _ in range(10)]
    (folder / "fold_indices.txt").write_text("\n".join(folds) + "\n")
    return out


# ---------------------------------------------------------------------------------------------------
# helpers


def _check_batches(dm, batch_size: int, size: int, train_labels: np.ndarray, val_labels: np.ndarray) -> None:
    """A training batch of two views and a val batch, with the right shapes, dtypes and labels."""
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["views"]) == 2
    for v in batch["views"]:
        assert v.shape == (batch_size, 3, size, size) and v.dtype == torch.float32
    assert not torch.equal(batch["views"][0], batch["views"][1])  # two independent augmentations
    assert torch.equal(batch["label"], torch.as_tensor(train_labels)[batch["index"]])
    val = next(iter(dm.val_dataloader()))
    n_val = min(len(val_labels), batch_size)
    assert val["image"].shape == (n_val, 3, size, size) and val["image"].dtype == torch.float32
    assert val["label"].tolist() == val_labels[:n_val].tolist()
    assert val["index"].tolist() == list(range(n_val))


def _expected_eval_image(dm, hwc_uint8: np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(hwc_uint8).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(dm.normalize.mean).view(-1, 1, 1)
    std = torch.tensor(dm.normalize.std).view(-1, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100


def test_cifar10_round_trip(tmp_path: Path) -> None:
    fake = write_cifar10(tmp_path)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), verify_md5=False, batch_size=4, augment=SimCLRAugment(32))
    dm.setup()
    assert (len(dm.train_base), len(dm.val_base)) == (20, 6)
    assert dm.num_classes == 10 and dm.has_labels
    for i in (0, 7, 19):  # pixels and labels survive the pickle round trip, across batch files
        img, label = dm.train_base[i]
        assert np.array_equal(np.asarray(img), fake["train_x"][i]) and label == fake["train_y"][i]
    assert torch.equal(dm.train_labels(), torch.as_tensor(fake["train_y"]))
    _check_batches(dm, 4, 32, fake["train_y"], fake["test_y"])
    val = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(val["image"][1], _expected_eval_image(dm, fake["test_x"][1]))


def test_cifar100_round_trip(tmp_path: Path) -> None:
    fake = write_cifar100(tmp_path)
    dm = CIFAR100DataModule(data_dir=str(tmp_path), verify_md5=False, batch_size=4, augment=SimCLRAugment(32))
    dm.setup()
    assert (len(dm.train_base), len(dm.val_base)) == (12, 6) and dm.num_classes == 100
    img, label = dm.val_base[3]
    assert np.array_equal(np.asarray(img), fake["test_x"][3]) and label == fake["test_y"][3]
    _check_batches(dm, 4, 32, fake["train_y"], fake["test_y"])


def test_verify_md5_rejects_files_that_are_not_the_real_ones(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(data_dir=str(tmp_path))  # verify_md5=True: torchvision checks every md5
    with pytest.raises(DataDirError, match=r"md5.*data\.download=true.*data\.verify_md5=false"):
        dm.setup()


def test_cifar_missing_file_and_unparsable_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataDirError, match="could not be parsed"):
        CIFAR10DataModule(data_dir=str(tmp_path), verify_md5=False).setup()
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataDirError, match=r"missing; set data\.download=true"):
        CIFAR10DataModule(data_dir=str(tmp_path), verify_md5=False).setup()


def test_download_flag_keeps_files_that_are_already_there(tmp_path: Path) -> None:
    """``download=true`` with files present (and verify_md5=false) fetches nothing: no network here."""
    fake = write_cifar10(tmp_path)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), download=True, verify_md5=False, batch_size=4)
    dm.prepare_data()
    dm.setup()
    assert len(dm.train_base) == len(fake["train_y"])


@pytest.mark.parametrize("module", [CIFAR10DataModule, STL10DataModule])
def test_missing_data_dir_without_download_names_the_keys(tmp_path: Path, module) -> None:
    with pytest.raises(DataDirError, match=r"data\.data_dir=.*does not exist and data\.download=false"):
        module(data_dir=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataDirError, match=r"data\.data_dir=.*empty folder.*data\.download=true"):
        module(data_dir=str(tmp_path / "empty"))


def test_config_check_for_data_dir(tmp_path: Path) -> None:
    missing = OmegaConf.create({"data_dir": str(tmp_path / "nowhere"), "download": False})
    with pytest.raises(ConfigError, match=r"data\.data_dir=.* does not exist and data\.download=false"):
        check_data_dir(missing)
    check_data_dir(OmegaConf.create({"data_dir": str(tmp_path / "nowhere"), "download": True}))  # will fetch
    check_data_dir(OmegaConf.create({"data_dir": None}))  # datasets without files (digits)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty folder"):
        check_data_dir(OmegaConf.create({"data_dir": str(tmp_path / "empty")}))
    with pytest.raises(ConfigError, match=r"does not exist; set data\.data_dir") as info:
        check_data_dir(OmegaConf.create({"data_dir": str(tmp_path / "nowhere")}))  # no download option
    assert "download" not in str(info.value)


# ---------------------------------------------------------------------------------------------------
# STL-10


def test_stl10_round_trip(tmp_path: Path) -> None:
    fake = write_stl10(tmp_path)
    dm = STL10DataModule(data_dir=str(tmp_path), verify_md5=False, batch_size=3, augment=SimCLRAugment(96))
    dm.setup()
    assert (len(dm.train_base), len(dm.val_base)) == (6, 4) and dm.has_labels
    for i in (0, 5):  # the column-major binary decodes to the written HWC pixels
        img, label = dm.train_base[i]
        assert np.array_equal(np.asarray(img), fake["train_x"][i]) and label == fake["train_y"][i]
    _check_batches(dm, 3, 96, fake["train_y"], fake["test_y"])


def test_stl10_unlabeled_split_for_self_supervision(tmp_path: Path) -> None:
    fake = write_stl10(tmp_path)
    dm = STL10DataModule(
        data_dir=str(tmp_path), verify_md5=False, unlabeled=True, batch_size=11, augment=SimCLRAugment(96)
    )
    dm.setup()
    expected = np.concatenate([fake["train_y"], -np.ones(5, dtype=np.int64)])
    assert len(dm.train_base) == 11
    assert torch.equal(dm.train_labels(), torch.as_tensor(expected))
    img, label = dm.train_base[8]  # an unlabelled image
    assert np.array_equal(np.asarray(img), fake["unlabeled_x"][2]) and label == -1
    batch = next(iter(dm.train_dataloader()))
    assert [v.shape for v in batch["views"]] == [(11, 3, 96, 96)] * 2
    assert sorted(batch["label"].tolist()) == sorted(expected.tolist())
    # the kNN memory (evaluation transform on the train split) holds only the labelled images
    memory = [b["label"] for b in dm.eval_train_dataloader()]
    assert torch.cat(memory).tolist() == fake["train_y"].tolist()


def test_stl10_fold(tmp_path: Path) -> None:
    fake = write_stl10(tmp_path)
    dm = STL10DataModule(data_dir=str(tmp_path), verify_md5=False, folds=2)
    dm.setup()
    lines = (tmp_path / "stl10_binary" / "fold_indices.txt").read_text().splitlines()
    idx = [int(i) for i in lines[2].split()]
    assert dm.train_labels().tolist() == fake["train_y"][idx].tolist()
