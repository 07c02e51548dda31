"""Evaluation split across ranks, with two real gloo processes: the kNN monitor, the collapse monitor and CLIP's
evaluate_metrics give the numbers of one process, while each rank embeds only its share of the splits."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from contrastlab import distributed
from contrastlab.data.batch_augment import BatchSimCLRAugment
from contrastlab.data.digits import DigitsDataModule
from contrastlab.data.shapes_captions import ShapesCaptionsDataModule
from contrastlab.encoders import ProjectionHead, SmallCNN
from contrastlab.encoders.text import TransformerTextEncoder
from contrastlab.evaluation.callbacks import KNNMonitor
from contrastlab.evaluation.collapse import CollapseMonitor
from contrastlab.losses import CLIPLoss, NTXentLoss
from contrastlab.negatives import InBatch
from contrastlab.objectives import SimCLR
from contrastlab.objectives.clip import CLIP

WORLD = 2
# full digits (1,437 train / 360 val items, 23 + 6 batches of 64: uneven shares), and 30 train items, fewer
# per rank than k = 20 neighbours
DATA = {"digits": {}, "small": {"limit_samples": 30}}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model() -> SimCLR:
    """A random linear map of the pixels: its embeddings keep the digits apart (an untrained CNN maps them all
    close together, where the nearest neighbours are near-ties)."""
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 16))
    return SimCLR(encoder, ProjectionHead(16, num_layers=0), NTXentLoss(), InBatch(), torch.optim.SGD)


def _datamodule(**kw) -> DigitsDataModule:
    augment = BatchSimCLRAugment(image_size=16, hflip_p=0.0, grayscale_p=0.0)
    return DigitsDataModule(batch_size=64, augment=augment, **kw)


def _clip_metrics() -> dict[str, float]:
    """CLIP's evaluate_metrics (image-text retrieval and zero-shot) on 24 validation images, 48 captions; one
    text per forward pass, so that a text's embedding does not depend on which rank encodes it."""
    torch.manual_seed(0)
    model = CLIP(
        encoder=SmallCNN(3, width=4, stages=2, out_dim=16),
        head=ProjectionHead(16, out_dim=8, num_layers=1, batch_norm=False),
        loss=CLIPLoss(),
        negatives=InBatch(),
        optimizer=torch.optim.AdamW,
        text_encoder=TransformerTextEncoder(vocab_size=64, max_length=16, width=16, depth=1, heads=2),
        eval_batch_size=1,
    )
    dm = ShapesCaptionsDataModule(num_train=64, num_val=24, batch_size=8, image_size=16)
    images: list[int] = []
    model.encoder.register_forward_hook(lambda m, args, y: images.append(y.shape[0]))
    return {**model.evaluate_metrics(dm), "images": sum(images)}


def _evaluate() -> dict[str, dict]:
    """Every metric of both monitors and the rows the encoder embedded for the kNN monitor, per dataset."""
    model, out = _model(), {}
    rows: list[int] = []
    model.encoder.register_forward_hook(lambda m, args, y: rows.append(y.shape[0]))
    for name, kw in DATA.items():
        dm = _datamodule(**kw)
        rows.clear()
        knn = KNNMonitor(k=20).compute(model, dm)
        embedded = sum(rows)
        health = CollapseMonitor(alignment_pairs=16).measure(model, dm)
        dm.setup()
        out[name] = {**knn, **health, "rows": embedded, "total": len(dm.train_base) + len(dm.val_base)}
    out["clip"] = _clip_metrics()
    return out


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        out = _evaluate()
        # the gather helpers on uneven shares: rank r holds 3 + r rows
        mine = torch.arange(3 + rank, dtype=torch.float64)[:, None] + 10 * rank
        out["gather_rows"] = distributed.gather_rows(mine)
        out["gather_lists"] = distributed.gather_lists([f"r{rank}-{i}" for i in range(1 + rank)])
        out["bounds"] = [distributed.shard_bounds(n) for n in (0, 1, 7)]
        out["max"] = distributed.max_over_ranks(5 - rank)
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("eval_sharded")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def single() -> dict[str, dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _evaluate()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("data", list(DATA))
def test_two_ranks_give_the_metrics_of_one_process(ranks: list[dict], single: dict, data: str) -> None:
    one = single[data]
    assert one["val/knn_top1"] > 0.2 or data == "small"  # a real signal on digits (chance 0.1)
    for out in ranks:
        got = out[data]
        assert got["val/knn_top1"] == one["val/knn_top1"] and got["val/knn_top5"] == one["val/knn_top5"]
        for name in ("alignment", "uniformity", "effective_rank", "dim_std"):
            assert got[name] == pytest.approx(one[name], rel=1e-6, abs=1e-7), name


def test_clip_evaluate_metrics_on_two_ranks_equal_one_process(ranks: list[dict], single: dict) -> None:
    assert {"val/i2t_recall@1", "val/t2i_recall@5", "val/zero_shot_top1"} <= set(single["clip"])
    for out in ranks:
        metrics = {k: v for k, v in out["clip"].items() if k != "images"}
        assert metrics == pytest.approx({k: v for k, v in single["clip"].items() if k != "images"}, rel=1e-6, abs=1e-7)
    assert single["clip"]["images"] == 24 and [out["clip"]["images"] for out in ranks] == [8, 16]  # 3 batches of 8


@pytest.mark.parametrize("data", list(DATA))
def test_each_rank_embeds_its_share_of_the_splits(ranks: list[dict], single: dict, data: str) -> None:
    total = single[data]["total"]
    assert single[data]["rows"] == total  # one process embeds every train and val item once
    shares = [out[data]["rows"] for out in ranks]
    assert sum(shares) == total  # the ranks' shares partition the splits
    assert max(shares) <= total / WORLD + 2 * 64  # about half each (whole batches of 64 per split)


def test_gather_helpers_on_uneven_shares(ranks: list[dict]) -> None:
    want = torch.cat([torch.arange(3, dtype=torch.float64), torch.arange(4, dtype=torch.float64) + 10])[:, None]
    for r, out in enumerate(ranks):
        torch.testing.assert_close(out["gather_rows"], want, rtol=0, atol=0)
        assert out["gather_lists"] == ["r0-0", "r1-0", "r1-1"]
        assert out["max"] == 5
        assert out["bounds"] == [(0, 0), (0, 0) if r == 0 else (0, 1), (0, 3) if r == 0 else (3, 7)]
