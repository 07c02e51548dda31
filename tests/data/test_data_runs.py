"""End-to-end ``contrastlab-train debug=fast`` runs on data the tests write: a labelled image folder,
an unlabelled one holding a corrupt file, and a tiny CIFAR-10 in its real format."""

from __future__ import annotations

from pathlib import Path

from conftest import own_warnings, train_run
from writers import write_cifar10, write_image_folder


def test_labelled_image_folder_run(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets", {"cat": 20, "dog": 20, "owl": 10})
    run = train_run(
        tmp_path,
        "debug=fast",
        "data=imagefolder",
        f"data.data_dir={root}",
        "augment=simclr",
        "data.image_size=16",
    )
    m = run.metrics
    assert m["trainer/global_step"] == 1  # 45 training images, batches of 32, drop_last
    assert m["val/knn_top1"] >= 0.9 and "val/knn_top1_init" in m  # one solid colour per class: near-perfect kNN
    assert m["data/skipped_images"] == 0
    assert (run.run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run.run_dir / "checkpoints" / "best.ckpt").is_file()  # monitored on val/knn_top1


def test_unlabelled_image_folder_run_skips_a_corrupt_file(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "flat", flat=40, corrupt=("broken.jpg",))
    run = train_run(
        tmp_path,
        "debug=fast",
        "data=imagefolder",
        f"data.data_dir={root}",
        "augment=simclr",
        "data.image_size=16",
        expect_warnings=True,  # the skipped file and the epoch's count of them
    )
    assert own_warnings(run.output) and all("UnreadableImageWarning" in w for w in own_warnings(run.output))
    m = run.metrics
    assert m["trainer/global_step"] == 1 and "train/loss" in m
    assert not any(k.startswith("val/knn") for k in m)  # no labels: the kNN monitor skipped itself
    assert m["data/skipped_images"] >= 1
    assert f"skipping unreadable image {root / 'broken.jpg'}" in run.output
    assert "epoch 0: skipped" in run.output
    ckpts = sorted(p.name for p in (run.run_dir / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt"]  # nothing to rank checkpoints by


def test_cifar10_run_on_tiny_real_format_files(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar", per_batch=8, n_test=16)
    run = train_run(
        tmp_path,
        "debug=fast",
        "data=cifar10",
        f"data.data_dir={tmp_path / 'cifar'}",
        "data.verify_md5=false",  # the files are tiny fakes: check they exist and parse, not their md5
        "augment=simclr",
    )
    m = run.metrics
    assert m["trainer/global_step"] == 1 and m["val/knn_top1"] >= 0.5, m  # class-coloured images; chance 0.1
