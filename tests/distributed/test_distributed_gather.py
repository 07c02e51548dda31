"""``contrastlab.distributed`` with two real gloo processes (no mocks).

One spawn of 2 ranks computes everything (gather forward/backward, InBatch + info_nce, uneven
batch sizes) and saves its tensors; the parent compares them with one process doing the same
global computation.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from contrastlab import distributed
from contrastlab.losses import info_nce
from contrastlab.negatives import InBatch

WORLD = 2
B, D = 5, 6  # per-rank batch, embedding width
TEMPERATURE = 0.2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_data() -> dict[str, torch.Tensor]:
    """Every rank and the single process draw the same global tensors."""
    g = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(WORLD * B, D, generator=g, dtype=torch.float64),  # gather input
        "w": torch.randn(WORLD, WORLD * B, D, generator=g, dtype=torch.float64),  # per-rank loss weights
        "v1": torch.randn(WORLD * B, D, generator=g, dtype=torch.float64),  # encoder inputs, view 1
        "v2": torch.randn(WORLD * B, D, generator=g, dtype=torch.float64),  # encoder inputs, view 2
        "enc": torch.randn(D, D, generator=g, dtype=torch.float64),  # a shared linear "encoder"
    }


def _rank_loss(gathered: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A rank-specific, non-linear function of the whole gathered tensor."""
    return (weights * gathered).sum() + (gathered**2 * weights.abs()).sum() / 3


def _in_batch_loss(v1: torch.Tensor, v2: torch.Tensor, enc: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
    cands = InBatch(gather_across_ranks=True)(v1 @ enc, v2 @ enc)
    return info_nce(cands.queries, cands.keys, temperature=TEMPERATURE, chunk_size=chunk_size, **cands.loss_kwargs())


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only: no network needed
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        data, out = _global_data(), {}
        mine = slice(rank * B, (rank + 1) * B)

        # gather: forward = concatenation in rank order; backward = sum of every rank's gradient
        x = data["x"][mine].clone().requires_grad_(True)
        gathered = distributed.gather(x)
        _rank_loss(gathered, data["w"][rank]).backward()
        out.update(gathered=gathered.detach(), x_grad=x.grad, offset=torch.tensor(distributed.rank_offset(B)))

        # InBatch + info_nce: each rank's loss is the mean over its local 2B queries against all 4B keys
        for chunk in (None, 3):  # fused kernel, and its memory-efficient chunked mode
            v1, v2 = (
                data["v1"][mine].clone().requires_grad_(True),
                data["v2"][mine].clone().requires_grad_(True),
            )
            enc = data["enc"].clone().requires_grad_(True)
            loss = _in_batch_loss(v1, v2, enc, chunk)
            loss.backward()
            tag = "chunked" if chunk else "fused"
            out.update({f"{tag}_loss": loss.detach(), f"{tag}_v1": v1.grad, f"{tag}_v2": v2.grad})
            enc_grad = enc.grad.clone()
            dist.all_reduce(enc_grad)  # what DDP does with parameter gradients (then divides by world size)
            out[f"{tag}_enc"] = enc_grad / WORLD

        # uneven per-rank batches: a clear error on every rank, before any tensor is gathered
        for name, call in (
            ("check", lambda: distributed.check_equal_batches(B + rank)),
            ("gather", lambda: distributed.gather(torch.zeros(B + rank, D))),
        ):
            try:
                call()
                out[f"uneven_{name}"] = "no error"
            except RuntimeError as err:
                out[f"uneven_{name}"] = str(err)
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("gather")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


def test_gather_forward_is_concatenation_in_rank_order(ranks: list[dict]) -> None:
    data = _global_data()
    for r, out in enumerate(ranks):
        assert torch.equal(out["gathered"], data["x"])
        assert int(out["offset"]) == r * B


def test_gather_backward_sums_gradients_to_the_owning_rank(ranks: list[dict]) -> None:
    data = _global_data()
    x = data["x"].clone().requires_grad_(True)
    total = sum(_rank_loss(x, data["w"][r]) for r in range(WORLD))  # the sum of all ranks' losses
    total.backward()
    for r, out in enumerate(ranks):
        torch.testing.assert_close(out["x_grad"], x.grad[r * B : (r + 1) * B], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tag", ["fused", "chunked"])
def test_in_batch_info_nce_two_ranks_equal_one_process_with_the_global_batch(ranks: list[dict], tag: str) -> None:
    data = _global_data()
    v1, v2 = data["v1"].clone().requires_grad_(True), data["v2"].clone().requires_grad_(True)
    enc = data["enc"].clone().requires_grad_(True)
    single = _in_batch_loss(v1, v2, enc, None)  # one process, batch 2B: mean over all 4B queries
    single.backward()
    # the mean of the ranks' local means is the global mean
    torch.testing.assert_close(sum(out[f"{tag}_loss"] for out in ranks) / WORLD, single.detach())
    for r, out in enumerate(ranks):
        rows = slice(r * B, (r + 1) * B)
        # each rank's input gradient is world_size x the single-process one (DDP divides by world_size)
        torch.testing.assert_close(out[f"{tag}_v1"] / WORLD, v1.grad[rows])
        torch.testing.assert_close(out[f"{tag}_v2"] / WORLD, v2.grad[rows])
        torch.testing.assert_close(out[f"{tag}_enc"], enc.grad)  # DDP-averaged parameter gradient


def test_uneven_batches_raise_a_clear_error(ranks: list[dict]) -> None:
    for out in ranks:
        for name in ("check", "gather"):
            assert "per-rank batch sizes differ ([5, 6])" in out[f"uneven_{name}"]
            assert "data.drop_last=true" in out[f"uneven_{name}"]


def test_single_process_is_a_no_op() -> None:
    x = torch.randn(3, 2)
    assert distributed.gather(x) is x
    assert distributed.rank_offset(3) == 0
    distributed.check_equal_batches(3)  # nothing to compare against: no error
