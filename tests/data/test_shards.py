"""``data=webdataset``: tar shards named every way (brace lists, lists, local paths, ``file://``, ``pipe:``,
fsspec URLs), every sample once per epoch across ranks x workers with the same batches on every slot, exact
resumption from any batch, class-balanced P x K batches, resampled streams, corrupt data skipped (or stopping
the run with ``data.strict=true``), missing shards refused at start-up, and one training run per objective."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import types
from collections import Counter
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from conftest import cli_env
from writers import write_image_folder, write_image_shards

from contrastlab.cli import boundary
from contrastlab.config import build
from contrastlab.data.image_files import UnreadableImageError, UnreadableImageWarning
from contrastlab.data.shard_stream import (
    SampleFormat,
    ShardError,
    ShardLoader,
    ShardStream,
    StreamPlan,
    buffer_order,
    check_shards_exist,
    count_samples,
    decode_image,
    expand_shard_urls,
    make_shards,
    pk_batches,
    read_members,
    role_done,
    shard_sizes,
)
from contrastlab.data.shards import CaptionShardsDataModule, ImageShardsDataModule, ShardReport
from contrastlab.errors import ConfigError
from contrastlab.training.data_order import DataOrder, resumable

pytestmark = pytest.mark.usefixtures("one_thread")


def brace(root: Path, name: str, n: int) -> str:
    return str(root / f"{name}-{{000000..{n - 1:06d}}}.tar")


def item(image: torch.Tensor, label: int, captions: list[str], sample_id: int) -> dict:
    """A training item whose value depends on the image and on the item's seeded RNG (like an augmentation)."""
    return {"x": image.float().mean() + torch.rand(()), "label": label, "index": sample_id}


def stream(shards, *, batch=4, slots=1, rank=0, workers=0, per_class=None, resampled=False, **kw) -> ShardStream:
    plan = StreamPlan(tuple(shards), batch, slots, True, 3, 5, resampled)
    decode = kw.pop("decode", lambda data: decode_image(data, 8))
    return ShardStream(plan, rank, workers, item, decode, SampleFormat(), per_class=per_class, window=8, **kw)


def passes(st: ShardStream, epoch: int, done: int, workers: int = 0, limit: int | None = None) -> list[tuple]:
    """The batches of a pass that starts after ``done`` batches: (ids, item values, labels) each."""
    loader = ShardLoader(st, num_workers=workers)
    loader.follow(lambda: (epoch, done))
    out = []
    for b in loader:
        out.append((b["index"].tolist(), b["x"].tolist(), b["label"].tolist()))
        if limit is not None and len(out) >= limit:
            break
    return out


# ------------------------------------------------------------------------------------------- naming shards
def test_urls_brace_lists_and_local_paths(tmp_path: Path) -> None:
    assert expand_shard_urls(str(tmp_path / "a-{000..002}.tar")) == [str(tmp_path / f"a-00{i}.tar") for i in range(3)]
    assert expand_shard_urls([str(tmp_path / "x.tar"), "s3://bucket/y-{0..1}.tar"]) == [
        str(tmp_path / "x.tar"),
        "s3://bucket/y-0.tar",
        "s3://bucket/y-1.tar",
    ]
    assert expand_shard_urls("a.tar::pipe:cat b.tar") == ["a.tar", "pipe:cat b.tar"]
    assert expand_shard_urls("~/s.tar") == [str(Path("~/s.tar").expanduser())]
    with pytest.raises(ShardError, match="data.urls is not set"):
        expand_shard_urls(None)


def test_every_kind_of_url_reads_the_same_samples(tmp_path: Path) -> None:
    (path,) = write_image_shards(tmp_path, n=6, per_shard=6)
    fs = fsspec.filesystem("memory")
    fs.pipe("/shards/train-000000.tar", path.read_bytes())
    urls = [str(path), f"file://{path}", f"pipe:cat {path}", "memory://shards/train-000000.tar"]
    check_shards_exist(urls, "data.urls")
    # sizes.json beside the local shard; the others are scanned
    assert shard_sizes(urls, "data.urls") == [6, 6, 6, 6]
    read = [[(s.ordinal, s.raw["__key__"], s.raw["png"]) for s in read_members(sh, np.arange(6))] for sh in
            make_shards(urls, [6] * 4)]  # fmt: skip
    assert read[0] == read[1] == read[2] == read[3] and len(read[0]) == 6
    with pytest.raises(ShardError, match=r"shard memory://shards/nope.tar named by data.val_urls does not exist"):
        check_shards_exist(["memory://shards/nope.tar"], "data.val_urls")


def test_a_missing_shard_fails_at_start_up_with_one_line(tmp_path: Path) -> None:
    write_image_shards(tmp_path, n=20, per_shard=10)
    with pytest.raises(ShardError) as err:
        ImageShardsDataModule(urls=brace(tmp_path, "train", 3), val_urls=str(tmp_path / "train-000000.tar"))
    assert boundary.message_for(err.value) == (
        f"shard {tmp_path / 'train-000002.tar'} named by data.urls does not exist (1 of 3 missing); fix data.urls."
    )  # the command says the same in one line, exit status 2 (test_the_command_refuses_a_missing_shard)


def test_shard_sizes_come_from_sizes_json_img2dataset_stats_or_a_scan(tmp_path: Path) -> None:
    paths = write_image_shards(tmp_path, n=25, per_shard=10)
    urls = [str(p) for p in paths]
    assert shard_sizes(urls, "k") == [10, 10, 5] == [count_samples(u) for u in urls]
    (tmp_path / "sizes.json").unlink()
    assert shard_sizes(urls, "k") == [10, 10, 5]  # scanned
    (tmp_path / "train-000001_stats.json").write_text(json.dumps({"successes": 7, "count": 9}))
    assert shard_sizes(urls, "k") == [10, 7, 5]  # img2dataset's count is believed


# ------------------------------------------------------------------------------------------- the plan
def test_buffer_order_is_a_permutation_that_never_holds_more_than_the_buffer() -> None:
    for n, size in ((50, 8), (8, 50), (1, 4), (200, 1), (37, 37)):
        order = buffer_order(n, size, np.random.default_rng(n))
        assert sorted(order.tolist()) == list(range(n))
        read = np.maximum.accumulate(order) + 1  # positions read when output t leaves (reading is sequential)
        held = read - np.arange(1, n + 1)  # read but not yet emitted
        assert held.max(initial=0) <= max(size - 1, 0), (n, size)
    assert buffer_order(30, 1, np.random.default_rng(0)).tolist() == list(range(30))  # no buffer: stream order
    a, b = (buffer_order(100, 10, np.random.default_rng(s)) for s in (1, 1))
    assert a.tolist() == b.tolist() != list(range(100))  # seeded, and it shuffles


def test_pk_batches_take_p_classes_of_k_and_every_item_once() -> None:
    labels = [c for _ in range(8) for c in range(4)]  # 4 classes x 8, interleaved
    batches = pk_batches(labels, 8, 2, np.random.default_rng(0))
    assert sorted(i for b in batches for i in b) == list(range(32)) and [len(b) for b in batches] == [8] * 4
    for b in batches[:3]:  # while 4 classes have 2 left, a batch is exactly 4 classes x 2
        assert sorted(Counter(labels[i] for i in b).values()) == [2, 2, 2, 2]
    uneven = pk_batches([0, 0, 0, 1, -1, 2, 2], 4, 2, np.random.default_rng(1))
    assert sorted(i for b in uneven for i in b) == list(range(7)) and [len(b) for b in uneven] == [4, 3]


@pytest.mark.parametrize(("sizes", "slots", "batch"), [([10] * 7 + [3], 4, 4), ([5], 4, 1), ([9, 9], 6, 2)])
def test_every_sample_once_per_epoch_across_slots_with_equal_batches(sizes, slots, batch) -> None:
    shards = make_shards([f"s{i}.tar" for i in range(len(sizes))], sizes)
    plan = StreamPlan(tuple(shards), batch, slots)
    orders = []
    for epoch in (0, 1):
        seen: list[int] = []
        for slot in range(slots):
            (rnd,) = plan.rounds(epoch, slot)
            assert rnd.batches == plan.slot_batches > 0 and rnd.used == rnd.size == plan.slot_samples
            seen += [shards[s].first_id + o for s, first, n in rnd.segments for o in range(first, first + n)]
        assert len(seen) == len(set(seen)) == slots * plan.slot_samples == sum(sizes) - plan.dropped
        assert plan.dropped < slots * batch  # less than one batch per slot is left out
        orders.append(seen)
    assert orders[0] != orders[1]  # another order (and other samples left over) every epoch
    if len(sizes) < slots:  # fewer shards than slots: the slots share a shard by member ranges
        segments = [seg for slot in range(slots) for seg in next(plan.rounds(0, slot)).segments]
        assert len({shard for shard, _, _ in segments}) < slots < len(segments) + 1


def test_role_done_counts_round_robin_batches() -> None:
    for workers in (1, 2, 3):
        for done in range(10):
            assert sum(role_done(done, r, workers) for r in range(workers)) == done
            assert [role_done(done, r, workers) for r in range(workers)] == [
                sum(1 for j in range(done) if j % workers == r) for r in range(workers)
            ]


# ------------------------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_serves_every_sample_once_and_resumes_exactly_from_any_batch(tmp_path: Path, workers: int) -> None:
    shards = make_shards([str(p) for p in write_image_shards(tmp_path, n=40, per_shard=9)], [9, 9, 9, 9, 4])
    slots = 2 * max(1, workers)  # two ranks
    full = [passes(stream(shards, slots=slots, rank=r, workers=workers), 1, 0, workers) for r in range(2)]
    ids = [i for rank in full for b in rank for i in b[0]]
    assert len(full[0]) == len(full[1]) == max(1, workers) * (40 // (slots * 4))  # the same steps on both ranks
    assert len(ids) == len(set(ids)) and all(len(b[0]) == 4 for rank in full for b in rank)
    for r in range(2):
        for done in [1, 2, len(full[r]) - 1] if workers else range(1, len(full[r])):
            st = stream(shards, slots=slots, rank=r, workers=workers)
            assert passes(st, 1, done, workers) == full[r][done:], (r, done)  # same items, same augmentations
    assert passes(stream(shards, slots=slots, workers=workers), 2, 0, workers) != full[0]  # another epoch


def test_data_order_tells_the_stream_where_a_resumed_pass_starts(tmp_path: Path) -> None:
    """DataOrder (the run's checkpointed position) hands a shard loader its pass instead of rebuilding it."""
    shards = make_shards([str(p) for p in write_image_shards(tmp_path, n=24, per_shard=8)], [8, 8, 8])
    full = passes(stream(shards), 1, 0)
    order = DataOrder(seed=3)
    order.load_state_dict({"epoch": 1, "batches": 2, "epoch_batches": len(full)})  # as a checkpoint holds it
    loader = ShardLoader(stream(shards))
    assert resumable(loader, order) is loader
    assert [b["index"].tolist() for b in loader] == [b[0] for b in full[2:]]
    order.load_state_dict({"epoch": 1, "batches": len(full), "epoch_batches": len(full)})  # a finished epoch
    assert [b["index"].tolist() for b in loader] == [b[0] for b in passes(stream(shards), 2, 0)]


def test_class_balanced_batches_resume_exactly(tmp_path: Path) -> None:
    shards = make_shards([str(p) for p in write_image_shards(tmp_path, n=48, classes=4, per_shard=12)], [12] * 4)
    full = passes(stream(shards, per_class=2), 0, 0)
    assert len(full) == 12 and sorted(i for b in full for i in b[0]) == list(range(48))
    balanced = [b for b in full if sorted(Counter(b[2]).values()) == [2, 2]]
    assert len(balanced) >= 8, [b[2] for b in full]  # P=2 classes x K=2 wherever the window allows it
    for done in range(1, 12):
        assert passes(stream(shards, per_class=2), 0, done) == full[done:]


def test_a_resampled_stream_is_endless_and_resumes_exactly(tmp_path: Path) -> None:
    shards = make_shards([str(p) for p in write_image_shards(tmp_path, n=30, per_shard=10)], [10] * 3)
    st = stream(shards, resampled=True)
    with pytest.raises(TypeError):
        len(st)
    first = passes(st, 0, 0, limit=12)  # 30 samples = 7 batches: it goes on past them
    assert len(first) == 12 and {i for b in first for i in b[0]} <= set(range(30))
    assert passes(stream(shards, resampled=True), 0, 5, limit=7) == first[5:]


# ------------------------------------------------------------------------------------------- bad data
def truncate_in(path: Path, member: str) -> None:
    """Cut the tar file ``path`` in the middle of the data of ``member``."""
    with tarfile.open(path) as tar:
        info = tar.getmember(member)
    path.write_bytes(path.read_bytes()[: info.offset_data + info.size // 2])


def rewrite(path: Path, change: dict[str, bytes | None]) -> None:
    """Rewrite the tar file ``path`` with the members in ``change`` replaced (None: removed)."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as out:
        for m, data in members:
            data = change.get(m.name, data)
            if data is not None:
                m.size = len(data)
                out.addfile(m, io.BytesIO(data))


def corrupt_shards(tmp_path: Path) -> list:
    """20 samples in two shards: sample 3's image is garbage, sample 5 has no image, shard 1 is truncated
    inside sample 17 (so 17, 18 and 19 are lost)."""
    paths = write_image_shards(tmp_path, n=20, per_shard=10)
    rewrite(paths[0], {"train000003.png": b"\x89PNG\r\n\x1a\n not a png at all", "train000005.png": None})
    truncate_in(paths[1], "train000017.png")
    return make_shards([str(p) for p in paths], shard_sizes([str(p) for p in paths], "k"))


def test_bad_samples_are_replaced_in_their_batch_with_a_warning_and_counted(tmp_path: Path) -> None:
    shards = corrupt_shards(tmp_path)
    assert [s.count for s in shards] == [10, 10]  # sizes.json still lists what was written
    st = stream(shards)
    with pytest.warns(UnreadableImageWarning) as caught:
        batches = passes(st, 0, 0)
    assert len(batches) == 5 and all(len(b[0]) == 4 for b in batches)  # every batch keeps its size
    assert st.skipped.count == 5  # samples 3, 5, 17, 18, 19
    ids = [i for b in batches for i in b[0]]
    assert not {3, 5, 17, 18, 19} & set(ids) and len(ids) - len(set(ids)) == 5  # replaced by batch mates
    named = " ".join(str(w.message) for w in caught)
    for key in ("train-000000.tar:train000003", "train-000000.tar:train000005", "train-000001.tar (sample 9)"):
        assert key in named, named
    # the same data with data.strict=true: the first bad sample stops the pass, naming it
    with pytest.raises(UnreadableImageError, match=r"cannot read sample .*train-00000[01]\.tar"):
        passes(stream(shards, strict=True), 0, 0)


def test_memory_splits_replace_bad_samples_and_the_report_logs_them(tmp_path: Path) -> None:
    corrupt_shards(tmp_path)
    dm = ImageShardsDataModule(
        urls=brace(tmp_path, "train", 2), val_urls=brace(tmp_path, "train", 2), batch_size=4, image_size=8,
        num_workers=0, eval_train_samples=8,
    )  # fmt: skip
    dm.setup()
    with pytest.warns(UnreadableImageWarning) as record:
        images = [dm.train_base[i][0] for i in range(len(dm.train_base))]
    assert [m for m in ("train000003", "train000005") if any(m in str(w.message) for w in record)] == [
        "train000003",
        "train000005",
    ]
    assert len(images) == 8 and all(img.shape == (3, 8, 8) for img in images)
    assert dm.skipped.take() == 2  # samples 3 and 5 of the kNN memory
    assert any(isinstance(cb, ShardReport) for cb in build.build_callbacks({}, dm))


# ------------------------------------------------------------------------------------------- datamodules
def test_image_shards_datamodule_labels_memory_and_a_val_folder(tmp_path: Path) -> None:
    write_image_shards(tmp_path, n=40, per_shard=10)
    write_image_shards(tmp_path, name="val", n=9, per_shard=10, seed=1)
    kw = {"urls": brace(tmp_path, "train", 4), "batch_size": 4, "image_size": 8, "num_workers": 0}
    dm = ImageShardsDataModule(val_urls=str(tmp_path / "val-000000.tar"), eval_train_samples=12, **kw)
    assert dm.has_labels and dm.num_classes == 3 and dm.classes == ["red", "green", "blue"]
    dm.setup()
    assert len(dm.train_base) == 12 and dm.train_base.targets == [i % 3 for i in range(12)]
    assert len(dm.val_base) == 9
    batch = next(iter(dm.eval_train_dataloader()))
    assert batch["image"].shape == (4, 3, 8, 8) and batch["label"].tolist() == [0, 1, 2, 0]
    # an image folder as the validation set: its class folders map through classes.json
    folder = write_image_folder(tmp_path / "valdir", {"dog": 2, "cat": 1})  # colours of no interest here
    (tmp_path / "classes.json").write_text(json.dumps(["red", "cat", "dog"]))
    dm2 = ImageShardsDataModule(val_dir=str(folder), **kw)
    dm2.setup()
    assert sorted(dm2.val_base.targets) == [1, 2, 2]
    # unlabelled shards: no labels, so no kNN monitor and no class balance
    write_image_shards(tmp_path / "u", n=8, per_shard=8, labels=False)
    dm3 = ImageShardsDataModule(urls=str(tmp_path / "u" / "train-000000.tar"), val_dir=str(folder), batch_size=4)
    assert not dm3.has_labels


def test_caption_shards_datamodule_serves_pairs_and_every_val_caption(tmp_path: Path) -> None:
    write_image_shards(tmp_path, n=16, per_shard=8, captions=True)
    write_image_shards(tmp_path, name="val", n=5, per_shard=8, captions=True, seed=2)
    dm = CaptionShardsDataModule(
        urls=brace(tmp_path, "train", 2), val_urls=str(tmp_path / "val-000000.tar"), batch_size=4, image_size=8,
        num_workers=0,
    )  # fmt: skip
    assert dm.has_captions and dm.has_labels and dm.class_names == ["red", "green", "blue"]
    captions, owner = dm.val_captions()
    assert len(captions) == 10 and owner.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert captions[:2] == ["a red square number 0", "red picture 0"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 8, 8) and len(batch["text"]) == 4
    for text, i, label in zip(batch["text"], batch["index"].tolist(), batch["label"].tolist(), strict=True):
        assert text.endswith(f" {i}") and label == i % 3  # one of the sample's own captions
    assert len(dm.train_texts()) == 32  # both captions of every sample in memory


def test_settings_that_cannot_work_fail_with_the_key_to_change(tmp_path: Path) -> None:
    write_image_shards(tmp_path, n=12, per_shard=12, captions=True)
    one = str(tmp_path / "train-000000.tar")
    with pytest.raises(ConfigError, match="data.per_class=3 must divide data.batch_size=8"):
        ImageShardsDataModule(urls=one, val_urls=one, batch_size=8, per_class=3)
    with pytest.raises(ShardError, match="needs a validation set; set data.val_urls"):
        ImageShardsDataModule(urls=one, batch_size=8)
    with pytest.raises(ConfigError, match="data.per_class=null for CLIP"):
        CaptionShardsDataModule(urls=one, val_urls=one, per_class=2)
    with pytest.raises(ConfigError, match="data.content=captions is not what ImageShardsDataModule reads"):
        ImageShardsDataModule(urls=one, val_urls=one, content="captions")
    from functools import partial

    from contrastlab.data.samplers import PKBatchSampler

    dm = ImageShardsDataModule(urls=one, val_urls=one, batch_size=8, batch_sampler=partial(PKBatchSampler, k=4))
    assert dm.per_class == 4  # +data/batch_sampler=pk: the stream forms the P x K batches itself
    with pytest.raises(ShardError, match="make no batch of 8 for each of the 4"):
        ImageShardsDataModule(
            urls=one, val_urls=one, batch_size=8, num_workers=4, augment=torch.nn.Identity()
        ).train_dataloader()
    dm = ImageShardsDataModule(urls=one, val_urls=one, batch_size=4, resampled=True, augment=torch.nn.Identity())
    dm.trainer = types.SimpleNamespace(max_steps=-1)
    with pytest.raises(ConfigError, match=r"data.resampled=true streams without end; set \+trainer.max_steps="):
        dm.train_dataloader()


# ------------------------------------------------------------------------------------------- training runs
COMMON = ("data=webdataset", "data.image_size=16", "data.batch_size=8", "trainer.max_epochs=1", "logger=csv",
          "print_config=false", "encoder.width=8", "callbacks.embedding_plot=null")  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    """SimCLR (2 loader workers, one corrupt sample), triplet (P x K batches from a resampled stream) and CLIP
    on shards, side by side."""
    root = tmp_path_factory.mktemp("shard_runs")
    images, captions = root / "images", root / "captions"
    write_image_shards(images, n=64, per_shard=16)
    write_image_shards(images, name="val", n=12, per_shard=12, seed=1)
    # the last sample (not in the 16-sample kNN memory) does not decode
    rewrite(images / "train-000003.tar", {"train000063.png": b"garbage"})
    write_image_shards(captions, n=32, per_shard=16, captions=True)
    write_image_shards(captions, name="val", n=8, per_shard=8, captions=True, seed=1)
    img = (f"data.urls='{brace(images, 'train', 4)}'", f"data.val_urls={images / 'val-000000.tar'}",
           "data.eval_train_samples=16")  # fmt: skip
    cap = (f"data.urls='{brace(captions, 'train', 2)}'", f"data.val_urls={captions / 'val-000000.tar'}")
    configs = {
        "simclr": [*img, "augment=simclr", "data.num_workers=2"],
        "triplet": [*cap, "objective=triplet", "augment=simclr", "data.per_class=4", "data.num_workers=0",
                    "data.resampled=true", "+trainer.max_steps=6", "+trainer.val_check_interval=3",
                    "trainer.check_val_every_n_epoch=null"],
        "clip": [*cap, "objective=clip", "data.content=captions", "data.num_workers=0", "text_encoder.width=16",
                 "text_encoder.depth=1", "text_encoder.heads=2"],
    }  # fmt: skip
    configs["missing"] = [f"data.urls='{brace(images, 'train', 5)}'", *img[1:]]  # train-000004.tar does not exist
    env = {**cli_env(root), "OMP_NUM_THREADS": "1"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "contrastlab.cli.train", *COMMON, *extra, f"hydra.run.dir={root / name}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=root,
        )  # fmt: skip
        for name, extra in configs.items()
    }
    outs = {name: proc.communicate(timeout=600)[0] for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == (2 if name == "missing" else 0), f"{name}:\n{outs[name][-5000:]}"
    return root, outs


@pytest.mark.slow
def test_the_command_refuses_a_missing_shard_with_one_line(runs) -> None:
    root, outs = runs
    shard = root / "images" / "train-000004.tar"
    assert outs["missing"].strip().splitlines()[-1] == (
        f"error: shard {shard} named by data.urls does not exist (1 of 5 missing); fix data.urls."
    )
    assert not (root / "missing" / "checkpoints").exists()


@pytest.mark.slow
def test_simclr_on_shards_with_two_workers_counts_the_corrupt_sample(runs) -> None:
    root, outs = runs
    metrics = json.loads((root / "simclr" / "metrics.json").read_text())
    assert metrics["trainer/global_step"] == 64 // 8  # 2 slots x 4 batches: every sample once
    assert metrics["data/dropped_samples"] == 0 and metrics["data/skipped_samples"] == 1
    assert "train-000003.tar:train000063" in outs["simclr"]
    assert metrics["val/knn_top1"] > 0.5  # three colour classes (chance 1/3): a monitor reading shuffled labels misses


@pytest.mark.slow
def test_triplet_trains_on_class_balanced_batches_of_a_resampled_stream(runs) -> None:
    root, _ = runs
    metrics = json.loads((root / "triplet" / "metrics.json").read_text())
    assert metrics["trainer/global_step"] == 6  # +trainer.max_steps ends the endless stream
    assert metrics["data/skipped_samples"] == 0 and metrics["data/dropped_samples"] == 0
    assert np.isfinite(metrics["train/loss"]) and metrics["val/knn_top1"] > 0.5  # chance 1/3


@pytest.mark.slow
def test_clip_on_caption_shards_reports_retrieval_and_zero_shot(runs) -> None:
    root, _ = runs
    metrics = json.loads((root / "clip" / "metrics.json").read_text())
    assert metrics["trainer/global_step"] == 32 // 8 and np.isfinite(metrics["train/loss"])
    assert metrics["val/i2t_recall@1_chance"] == pytest.approx(1 / 8)  # 8 val images, each with 2 captions
    assert "val/zero_shot_top1" in metrics and "val/t2i_recall@5" in metrics
