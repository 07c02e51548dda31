"""CLIP / SigLIP losses across two real processes (gloo): each rank's pairs are contrasted with every
rank's, and the rank-averaged gradients (what DDP applies) equal the single-process full-batch ones."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from contrastlab.losses import CLIPLoss, SigLIPLoss
from contrastlab.negatives import InBatch
from contrastlab.objectives.clip import DualEncoderObjective

N, D, WORLD = 6, 5, 2
LOSSES = ("clip", "siglip")


def _objective(loss_name: str) -> DualEncoderObjective:
    from functools import partial

    from contrastlab.encoders.text import TransformerTextEncoder

    torch.manual_seed(0)
    loss = CLIPLoss() if loss_name == "clip" else SigLIPLoss(init_bias=-2.0)
    text = TransformerTextEncoder(vocab_size=8, max_length=4, width=4, depth=1, heads=1)
    return DualEncoderObjective(
        encoder=None,
        head=None,
        loss=loss,
        negatives=InBatch(gather_across_ranks=True),
        optimizer=partial(torch.optim.SGD, lr=0.1),
        text_encoder=text,
    ).double()


def _data():
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(N * WORLD, D, generator=g, dtype=torch.float64),
        torch.randn(N * WORLD, D, generator=g, dtype=torch.float64),
        torch.randn(D, D, generator=g, dtype=torch.float64),
    )


def _loss_and_grads(model, img, txt, w):
    w = w.clone().requires_grad_()
    model.zero_grad()
    loss = model.pair_loss(img @ w, txt @ w.T)
    loss.backward()
    bias = getattr(model.loss, "logit_bias", None)
    grads = [w.grad, model.logit_scale.grad] + ([bias.grad] if bias is not None else [])
    return loss.detach(), [g.clone() for g in grads]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        img, txt, w = _data()
        rows = slice(rank * N, (rank + 1) * N)
        results = {}
        for loss_name in LOSSES:
            loss, grads = _loss_and_grads(_objective(loss_name), img[rows], txt[rows], w)
            for t in [loss, *grads]:  # DDP averages gradients over ranks; the mean loss is the global loss
                dist.all_reduce(t)
                t /= WORLD
            results[loss_name] = [loss, *grads]
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ddp") / "ranks.pt")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    return torch.load(out)


@pytest.mark.parametrize("loss_name", LOSSES)
def test_two_ranks_equal_one_process_with_the_global_batch(two_rank_results, loss_name):
    got = two_rank_results[loss_name]
    img, txt, w = _data()
    loss, grads = _loss_and_grads(_objective(loss_name), img, txt, w)
    assert len(got) == len(grads) + 1
    torch.testing.assert_close(got[0], loss, atol=1e-10, rtol=1e-10)
    for a, b in zip(got[1:], grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
