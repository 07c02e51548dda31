"""The memory bank: FIFO without a dropped tail, candidates, momentum keys, save/restore, two ranks."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import quiet_trainer
from hydra import compose, initialize_config_dir

from contrastlab.config import build
from contrastlab.losses import info_nce, nt_xent
from contrastlab.negatives import MemoryBank, MomentumEncoder


def test_fifo_wraps_around_without_dropping_rows():
    bank = MemoryBank(size=10)
    rows = torch.arange(12, dtype=torch.float32)[:, None].repeat(1, 3)
    for s in range(0, 12, 4):
        bank.enqueue(rows[s : s + 4], torch.arange(s, s + 4), torch.arange(s, s + 4) % 2)
    # rows 0..9 filled the queue, rows 10, 11 overwrote slots 0, 1 (the oldest): every new row is kept
    assert bank.queue[:, 0].tolist() == [10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    assert bank.queue_ids.tolist() == [10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    assert bank.queue_labels.tolist() == [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    assert (int(bank.ptr), int(bank.filled)) == (2, 10)
    bank2 = MemoryBank(size=10)
    bank2.enqueue(rows[:7], torch.arange(7))
    bank2.enqueue(rows[7:12], torch.arange(7, 12))  # one batch straddling the end: 3 rows at the end, 2 at the start
    assert bank2.queue[:, 0].tolist() == [10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    emb, ids, _ = MemoryBank(size=5).memory()
    assert emb.shape[0] == ids.shape[0] == 0


def test_batch_larger_than_the_queue_names_sampler_size():
    with pytest.raises(ValueError, match="sampler.size"):
        MemoryBank(size=4).enqueue(torch.zeros(6, 2), torch.arange(6))


def test_empty_bank_is_exactly_nt_xent():
    z1, z2 = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    c = MemoryBank(size=32)(z1, z2, None, ids=torch.arange(6))
    torch.testing.assert_close(info_nce(c.queries, c.keys, temperature=0.3, **c.loss_kwargs()), nt_xent(z1, z2, 0.3))


@pytest.mark.parametrize("label_positives", [False, True])
def test_simclr_candidates_match_a_loop_construction(label_positives):
    bank = MemoryBank(size=8, label_positives=label_positives)
    bank.enqueue(torch.randn(6, 4), torch.tensor([0, 1, 7, 8, 2, 9]), torch.tensor([0, 1, 1, 0, 2, 2]))
    ids, labels = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1])
    c = bank(torch.randn(3, 4), torch.randn(3, 4), labels, ids=ids)
    # the whole queue is appended (its size is known without a host read); the 2 empty slots are masked out
    assert c.keys.shape == (6 + 8, 4)
    assert c.key_mask.tolist() == [True] * 6 + [True] * 6 + [False] * 2
    key_ids = ids.repeat(2).tolist() + bank.queue_ids[:6].tolist()
    key_labels = labels.repeat(2).tolist() + bank.queue_labels[:6].tolist()
    for r in range(6):
        for k in range(12):
            partner = k == (r + 3) % 6
            same = key_labels[k] == key_labels[r] if label_positives else key_ids[k] == key_ids[r]
            assert bool(c.positive_mask[r, k]) == ((partner or same) and k != r), (r, k)
        assert not c.positive_mask[r, 12:].any()  # an empty slot is nobody's positive
    assert c.exclude_index.tolist() == list(range(6))


def test_triplet_candidates_append_the_queue_with_labels_or_ids():
    bank = MemoryBank(size=8, mining="batch_hard")
    bank.enqueue(torch.randn(4, 3), torch.tensor([5, 6, 7, 8]), torch.tensor([1, 0, 1, 0]))
    z = torch.randn(4, 3)
    ids, labels = torch.tensor([0, 1, 0, 1]), torch.tensor([1, 1, 1, 1])
    c = bank.candidates(z, ids, labels, "labels", {})
    # the whole queue: the 4 empty slots have target -1 (neither a positive nor a negative of anyone)
    assert c.keys.shape == (12, 3) and c.key_targets.tolist() == [1, 1, 1, 1, 1, 0, 1, 0, -1, -1, -1, -1]
    assert c.key_mask.tolist() == [True] * 8 + [False] * 4  # what train/num_candidates counts
    assert bank.candidates(z, ids, labels, "views", {}).key_targets.tolist() == [0, 1, 0, 1, 5, 6, 7, 8] + [-1] * 4
    mined = bank.mine(torch.rand(4, 12), c, 0.2)
    assert mined.num_triplets == 4  # every anchor has a positive and a negative (from the queue)
    assert max(mined.positive_idx.tolist() + mined.negative_idx.tolist()) < 8  # never an empty slot


def test_momentum_encoder_is_an_exponential_moving_average():
    online = torch.nn.Linear(3, 2)
    key = MomentumEncoder(online, momentum=0.9)
    before = key.net[0].weight.clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    key.step()
    torch.testing.assert_close(key.net[0].weight, 0.9 * before + 0.1 * online.weight)
    assert not any(p.requires_grad for p in key.parameters())


def test_update_enqueues_the_momentum_keys_of_the_views():
    encoder, head = torch.nn.Linear(4, 3), torch.nn.Identity()
    bank = MemoryBank(size=16, momentum=0.5)
    bank.bind(encoder, head)
    views = [torch.randn(2, 4), torch.randn(2, 4)]
    batch = {"views": views, "index": torch.tensor([3, 4]), "label": torch.tensor([0, 1])}
    bank.update(torch.zeros(4, 3), batch)
    with torch.no_grad():
        expected = encoder(torch.cat(views))  # momentum copy == online right after binding
    torch.testing.assert_close(bank.queue[:4], expected)
    assert bank.queue_ids[:4].tolist() == [3, 4, 3, 4] and bank.queue_labels[:4].tolist() == [0, 1, 0, 1]


# --- acceptance: the queue survives save/restore and training continues -------------------------------
def _compose(tmp_path: Path, objective: str) -> object:
    with initialize_config_dir(build.CONF_DIR, version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"objective={objective}",
                "sampler=memory_bank",
                "sampler.size=96",
                "sampler.momentum=0.9",
                "debug=fast",
                "data.batch_size=16",
                "callbacks=none",
                f"paths.output_dir={tmp_path}",
                "task_name=memory_bank_test",
            ],
        )


def _trainer(max_steps: int) -> L.Trainer:
    return quiet_trainer(
        max_steps=max_steps,
        limit_val_batches=0,
    )


@pytest.mark.parametrize("objective", ["simclr"])
def test_queue_survives_save_and_restore_and_training_continues(tmp_path, objective):
    cfg = _compose(tmp_path, objective)
    L.seed_everything(0)
    dm, model = build.build_datamodule(cfg), build.build_objective(cfg)
    trainer = _trainer(4)
    trainer.fit(model, datamodule=dm)  # 4 steps x 32 rows = 128 rows into a queue of 96: wrapped
    bank = model.negatives
    assert (int(bank.ptr), int(bank.filled)) == (128 % 96, 96)
    ckpt = tmp_path / "bank.ckpt"
    trainer.save_checkpoint(ckpt)  # what ModelCheckpoint writes

    fresh = build.build_objective(cfg)  # queue width unknown (dim=null) until loaded
    assert fresh.negatives.queue.shape[1] == 0
    fresh.load_state_dict(torch.load(ckpt, weights_only=False)["state_dict"])
    for name in ("queue", "queue_ids", "queue_labels", "ptr", "filled"):
        assert torch.equal(getattr(fresh.negatives, name), getattr(bank, name)), name
    for p, q in zip(fresh.negatives.key_encoder.parameters(), bank.key_encoder.parameters(), strict=True):
        assert torch.equal(p, q)

    saved = bank.queue.clone()
    resumed = _trainer(6)
    resumed.fit(build.build_objective(cfg), datamodule=build.build_datamodule(cfg), ckpt_path=str(ckpt))
    after = resumed.lightning_module.negatives
    assert resumed.global_step == 6
    assert (int(after.ptr), int(after.filled)) == ((128 + 64) % 96, 96)
    assert torch.equal(after.queue[:32], saved[:32])  # rows 0..31 not yet overwritten are the saved ones
    assert not torch.equal(after.queue[32:], saved[32:])  # the two new steps wrote slots 32..95


# --- two real ranks enqueue the same gathered batch in the same order ---------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        bank = MemoryBank(size=10)
        for step in range(3):  # 3 steps x 2 ranks x 2 rows = 12 rows: wraps around
            rows = torch.full((2, 3), float(100 * step + 10 * rank)) + torch.arange(2.0)[:, None]
            bank.enqueue(rows, torch.tensor([100 * step + 10 * rank, 100 * step + 10 * rank + 1]))
        torch.save(bank.state_dict(), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_hold_identical_queues_in_rank_order(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # global order per step: rank 0's two rows, then rank 1's
    order = [100 * s + 10 * r + i for s in range(3) for r in range(2) for i in range(2)]
    expected = order[10:] + order[2:10]
    assert r0["queue_ids"].tolist() == expected
    assert r0["queue"][:, 0].tolist() == [float(x) for x in expected]
