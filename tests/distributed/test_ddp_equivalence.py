"""One DDP training step on 2 real gloo processes == one single-process step on the global batch.

Two processes are spawned (no mocks); in each, a Lightning ``Trainer`` with ``DDPStrategy(gloo)`` on 2
CPU devices (the processes are launched here, so Lightning joins them instead of launching its own)
takes one SGD step of SimCLR, triplet (batch-hard) and CLIP on its half (B rows) of a fixed global
batch. The parent takes the same step with one process on all 2B rows. What has to hold for the two
to match, and is exercised here:

* each rank's loss is the mean over its local anchors against the candidates of *every* rank
  (``distributed.gather``: InfoNCE keys, CLIP image/text keys, triplet mining keys), and DDP averages
  the parameter gradients, so the update is that of the mean over all 2B anchors;
* every anchor counts the same (triplet: every anchor has a positive and a negative);
* the data are fixed tensors (no augmentation), BatchNorm is in eval mode (per-rank batch statistics
  differ from the global ones; ``trainer.sync_batchnorm=true`` on GPUs), the text tower has no dropout;
* SGD without momentum or weight decay, so the update is ``-lr * grad`` and shows gradient errors.

Also checked: gradient caching under DDP gives the same update as the plain single-process step, and
triplet mining restricted to the local batch (``gather_across_ranks=false``) does *not*, so the test
can tell the two apart.
"""

from __future__ import annotations

import os
import socket
import tempfile
import warnings
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

WORLD = 2
B = 8  # per-rank batch
LR = 0.5
CASES = ("simclr", "simclr_cached", "triplet", "triplet_local", "clip", "clip_cached")
COLOURS = ["red", "green", "blue", "cyan", "pink", "grey", "gold", "teal"]
SHAPES = ["circle", "square", "star", "cross"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is fastest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def global_batch(case: str) -> dict:
    """The fixed global batch of 2B rows (same in every process)."""
    g = torch.Generator().manual_seed(7)
    n = WORLD * B
    if case.startswith("clip"):
        captions = [f"a {COLOURS[i % 8]} {SHAPES[(i // 8 + i) % 4]} number {i}" for i in range(n)]
        return {"image": torch.randn(n, 3, 8, 8, generator=g), "text": captions}
    labels = torch.arange(n) % 3  # every anchor has a positive (its other view) and negatives
    views = [torch.randn(n, 1, 8, 8, generator=g) for _ in range(2)]
    return {"views": views, "label": labels, "index": torch.arange(n)}


def local_batch(batch: dict, rank: int) -> dict:
    rows = slice(rank * B, (rank + 1) * B)
    return {k: [v[rows] for v in x] if k == "views" else x[rows] for k, x in batch.items()}


def build(case: str):
    """A small model of ``case`` with BatchNorm in eval mode, identical in every process."""
    from contrastlab.encoders import ProjectionHead, SmallCNN
    from contrastlab.encoders.text import TransformerTextEncoder
    from contrastlab.losses import CLIPLoss, NTXentLoss, TripletMarginLoss
    from contrastlab.negatives import InBatch, TripletMiner
    from contrastlab.objectives import SimCLR, Triplet
    from contrastlab.objectives.clip import CLIP

    torch.manual_seed(0)
    common = {"optimizer": partial(torch.optim.SGD, lr=LR), "batch_size": B}
    cache = {"micro_batch_size": 3} if case.endswith("cached") else None
    if case.startswith("clip"):
        text = TransformerTextEncoder(vocab_size=64, max_length=12, width=16, depth=1, heads=2, dropout=0.0)
        text.fit_tokenizer(global_batch(case)["text"])
        model = CLIP(
            encoder=SmallCNN(3, width=4, stages=2, out_dim=16),
            head=ProjectionHead(16, out_dim=8, num_layers=1, batch_norm=False),
            loss=CLIPLoss(),
            negatives=InBatch(),
            text_encoder=text,
            grad_cache=cache,
            **common,
        )
    else:
        parts = {
            "encoder": SmallCNN(1, width=4, stages=2, out_dim=16),
            "head": ProjectionHead(16, hidden_dim=32, out_dim=8),
        }
        if case.startswith("simclr"):
            model = SimCLR(loss=NTXentLoss(0.5), negatives=InBatch(), grad_cache=cache, **parts, **common)
        else:
            miner = TripletMiner("batch_hard", gather_across_ranks=case == "triplet")
            model = Triplet(loss=TripletMarginLoss(0.5), negatives=miner, positives="labels", **parts, **common)
    return calibrate_batchnorm(model, case).eval()  # BN with running statistics; nothing uses dropout


@torch.no_grad()
def calibrate_batchnorm(model, case: str):
    """Set every BatchNorm's running statistics to those of the global batch (one forward pass with
    momentum 1), so eval-mode BN normalises like a trained network: with the initial statistics the
    random network maps every input to nearly the same direction, and the loss is too flat for float32
    gradients to mean anything."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = 1.0
    model.train()
    batch = global_batch(case)
    if case.startswith("clip"):
        model.encode_image(batch["image"])
    else:
        model.project(torch.cat(batch["views"]))
    for m in norms:
        m.momentum = 0.1
    return model


def one_step(case: str, batch: dict, devices: int) -> dict:
    """Fit ``case`` for one step on ``batch``: the parameter gradients (as the optimizer sees them), the
    parameter update and the training loss."""
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy
    from torch.utils.data import DataLoader

    model = build(case)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen: dict = {}

    class Spy(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # type: ignore[no-untyped-def]
            seen["grad"] = {n: p.grad.clone() for n, p in pl_module.named_parameters()}  # after DDP's all-reduce

        def on_train_batch_end(self, trainer, pl_module, outputs, *args) -> None:  # type: ignore[no-untyped-def]
            seen["loss"] = float(outputs["loss"])

    strategy = DDPStrategy(process_group_backend="gloo", find_unused_parameters=False) if devices > 1 else "auto"
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_steps=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[Spy()],
    )
    trainer.fit(model, train_dataloaders=DataLoader([batch], batch_size=None))
    return {**seen, "update": {n: p.detach() - before[n] for n, p in model.named_parameters()}}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    # the processes exist already: Lightning's environment joins them instead of launching new ones
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(WORLD),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
        GLOO_SOCKET_IFNAME="lo",
    )
    out = {case: one_step(case, local_batch(global_batch(case), rank), WORLD) for case in CASES}
    torch.save(out, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def results() -> tuple[list[dict], dict]:
    """(per-rank results of the 2-process run, single-process results); the single-process steps run
    while the two processes start up."""
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as out_dir:
        procs = mp.spawn(_worker, args=(_free_port(), out_dir), nprocs=WORLD, join=False)
        plain = {case: one_step(case, global_batch(case), 1) for case in ("simclr", "triplet", "clip")}
        while not procs.join():
            pass
        ranks = [torch.load(Path(out_dir) / f"rank{r}.pt") for r in range(WORLD)]
    same_as = {"simclr_cached": "simclr", "clip_cached": "clip", "triplet_local": "triplet"}
    return ranks, {case: plain[same_as.get(case, case)] for case in CASES}


@pytest.fixture(scope="module")
def ddp(results) -> list[dict]:
    return results[0]


@pytest.fixture(scope="module")
def single(results) -> dict:
    return results[1]


def _assert_close_to(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    """Float32 agreement: each tensor within 1e-4 relative, or 1e-5 of the largest entry of the model's
    gradient/update (a bias gradient is a sum over the 2B rows that mostly cancels, so its own scale
    says little about the rounding of the sum; the rows are added in a different order on 2 ranks)."""
    assert got.keys() == want.keys()
    scale = max(float(w.abs().max()) for w in want.values())
    for name, w in want.items():
        torch.testing.assert_close(
            got[name], w, rtol=1e-4, atol=1e-5 * scale, msg=lambda m, n=name: f"{what} of {n}: {m}"
        )


def _relative_difference(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """||got - want|| / ||want|| over all parameters together."""
    diff = sum(float((got[n] - want[n]).pow(2).sum()) for n in want)
    return (diff / sum(float(w.pow(2).sum()) for w in want.values())) ** 0.5


@pytest.mark.parametrize("case", ["simclr", "triplet", "clip", "simclr_cached", "clip_cached"])
def test_two_ranks_take_the_single_process_step_on_the_global_batch(ddp, single, case: str) -> None:
    want = single[case]
    assert min(float(g.abs().max()) for g in want["grad"].values()) > 0  # every parameter gets a gradient
    for out in ddp:  # both ranks hold the same gradients (averaged by DDP) and take the same step
        assert _relative_difference(out[case]["grad"], want["grad"]) < 1e-5
        _assert_close_to(out[case]["grad"], want["grad"], "gradient")
        _assert_close_to(out[case]["update"], want["update"], "update")
    # the ranks' local losses average to the global loss (every anchor has the same weight)
    assert sum(out[case]["loss"] for out in ddp) / WORLD == pytest.approx(want["loss"], rel=1e-5)


def test_clip_logit_scale_gradient_is_not_scaled_by_ranks_or_micro_batches(ddp, single) -> None:
    want = single["clip"]["grad"]["logit_scale"]
    assert abs(float(want)) > 1e-4
    for case in ("clip", "clip_cached"):
        for out in ddp:
            torch.testing.assert_close(out[case]["grad"]["logit_scale"], want, rtol=1e-4, atol=1e-7)


def test_triplet_mining_on_the_local_batch_only_is_a_different_step(ddp, single) -> None:
    want, got = single["triplet_local"]["grad"], ddp[0]["triplet_local"]["grad"]
    assert _relative_difference(got, want) > 1e-2, "mining without the other rank's keys changes the gradient"
