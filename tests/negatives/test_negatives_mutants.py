"""Pins what the surviving mutants of ``contrastlab.negatives`` (in_batch, memory_bank, miners, momentum) changed.

The paths that only run under ``torch.distributed`` run with the ranks as threads of this process
(:func:`ranks.run_ranks`), and every rank's result is compared with the single-process computation on the
concatenated global batch. Device placement is checked on the ``meta`` device, which (like an accelerator, and
unlike the CPU) refuses to be mixed with CPU tensors.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

import pytest
import torch
from ranks import run_ranks
from torch import Tensor, nn

from contrastlab.errors import ConfigError
from contrastlab.losses import clip_loss, info_nce, pairwise_distance
from contrastlab.negatives import InBatch, MemoryBank, MomentumEncoder, TripletMiner, mine_triplets, miners

META = torch.device("meta")


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _rows(rank: int, per_rank: int) -> slice:
    return slice(rank * per_rank, (rank + 1) * per_rank)


# --- InBatch.two_tower_keys ------------------------------------------------------------------------------------
def test_two_tower_keys_in_one_process_are_only_the_extra_negatives() -> None:
    """Without DDP nothing is gathered (whatever ``gather_across_ranks``): only ``text_negatives``, when given."""
    a, b, neg = _randn(2, 3, seed=0), _randn(2, 3, seed=1), _randn(4, 3, seed=2)
    for sampler in (InBatch(), InBatch(gather_across_ranks=False)):
        assert sampler.two_tower_keys(a, b) == {}
        kw = sampler.two_tower_keys(a, b, neg)
        assert list(kw) == ["text_negatives"] and kw["text_negatives"] is neg


@pytest.mark.parametrize("world", [2, 3])
def test_two_tower_keys_are_every_ranks_rows_and_give_the_global_clip_loss(world: int) -> None:
    """Under DDP the keys are the rank-ordered concatenations, ``offset`` is this rank's first row (N != D here),
    the extra negatives are gathered too; the mean of the ranks' losses is the single-process global loss.
    ``gather_across_ranks=False`` keeps the local rows."""
    n, d, k = 2, 3, 1
    a_all, b_all, neg_all = _randn(world * n, d, seed=3), _randn(world * n, d, seed=4), _randn(world * k, d, seed=5)

    def rank_fn(rank: int) -> tuple[dict[str, Any], ...]:
        a, b, neg = a_all[_rows(rank, n)], b_all[_rows(rank, n)], neg_all[_rows(rank, k)]
        with_neg, plain = InBatch().two_tower_keys(a, b, neg), InBatch().two_tower_keys(a, b)
        local = InBatch(gather_across_ranks=False)
        loss = clip_loss(a, b, 10.0, **with_neg)
        return with_neg, plain, local.two_tower_keys(a, b, neg), local.two_tower_keys(a, b), loss

    results = run_ranks(rank_fn, world)
    for rank, (with_neg, plain, local_neg, local_plain, _) in enumerate(results):
        assert list(with_neg) == ["all_image_features", "all_text_features", "offset", "text_negatives"]
        assert list(plain) == ["all_image_features", "all_text_features", "offset"]
        for kw in (with_neg, plain):
            assert torch.equal(kw["all_image_features"], a_all) and torch.equal(kw["all_text_features"], b_all)
            assert kw["offset"] == rank * n
        assert torch.equal(with_neg["text_negatives"], neg_all)
        assert list(local_neg) == ["text_negatives"] and torch.equal(
            local_neg["text_negatives"], neg_all[_rows(rank, k)]
        )
        assert local_plain == {}
    global_loss = clip_loss(a_all, b_all, 10.0, text_negatives=neg_all)
    torch.testing.assert_close(torch.stack([r[-1] for r in results]).mean(), global_loss, rtol=1e-12, atol=1e-12)


# --- TripletMiner --------------------------------------------------------------------------------------------------
def test_triplet_miner_defaults() -> None:
    """``TripletMiner()`` is semi-hard mining over the batch gathered from every rank."""
    miner = TripletMiner()
    assert (miner.strategy, miner.gather_across_ranks) == ("semi_hard", True)


@pytest.mark.parametrize("gather", [True, False])
def test_triplet_candidates_across_ranks_match_the_global_batch(gather: bool) -> None:
    """Gathering: keys/targets are the global batch, ``self_index`` is shifted by this rank's offset (R != D here),
    and the mined triplets are the global batch's triplets of this rank's anchors. Not gathering: the local batch."""
    world, r, d = 2, 2, 3
    z_all, t_all = _randn(world * r, d, seed=6), torch.tensor([0, 1, 1, 0])

    def rank_fn(rank: int) -> tuple[Any, Any]:
        miner = TripletMiner() if gather else TripletMiner(gather_across_ranks=False)
        c = miner.batch_candidates(z_all[_rows(rank, r)], t_all[_rows(rank, r)])
        return c, miner.mine(pairwise_distance(c.queries, c.keys), c, 0.2)

    results = run_ranks(rank_fn, world)
    for rank, (c, mined) in enumerate(results):
        rows = _rows(rank, r)
        assert torch.equal(c.queries, z_all[rows]) and torch.equal(c.query_targets, t_all[rows])
        if gather:
            g = TripletMiner().batch_candidates(z_all, t_all)
            g_mined = TripletMiner().mine(pairwise_distance(z_all, z_all), g, 0.2)
            assert torch.equal(c.keys, z_all) and torch.equal(c.key_targets, t_all)
            assert c.self_index.tolist() == g.self_index[rows].tolist() == [rank * r, rank * r + 1]
            expected = [
                (a - rank * r, p, n)
                for a, p, n in zip(
                    *(x.tolist() for x in (g_mined.anchor_idx, g_mined.positive_idx, g_mined.negative_idx)), strict=True
                )
                if rank * r <= a < (rank + 1) * r
            ]
        else:
            assert torch.equal(c.keys, z_all[rows]) and torch.equal(c.key_targets, t_all[rows])
            assert c.self_index.tolist() == [0, 1]
            expected = []  # within one rank every anchor lacks a positive (targets 0, 1 and 1, 0)
        got = list(
            zip(mined.anchor_idx.tolist(), mined.positive_idx.tolist(), mined.negative_idx.tolist(), strict=True)
        )
        assert got == expected
    assert gather is False or len(results[0][1].anchor_idx) == 2  # each local anchor: one positive on the other rank


def test_triplet_self_index_is_on_the_device_of_the_batch() -> None:
    """``self_index`` is made on the device of ``z`` (the losses combine it with device tensors)."""
    c = TripletMiner().batch_candidates(torch.zeros(3, 2, device=META), torch.zeros(3, dtype=torch.long, device=META))
    assert c.self_index.device == META


# --- mine_triplets and the row blocks --------------------------------------------------------------------------------
def _naive_cosine(x: Tensor) -> list[list[float]]:
    rows = x.tolist()
    norm = [math.sqrt(sum(v * v for v in u)) for u in rows]
    return [
        [1 - sum(a * b for a, b in zip(u, v, strict=True)) / (nu * nv) for v, nv in zip(rows, norm, strict=True)]
        for u, nu in zip(rows, norm, strict=True)
    ]


def _naive_triplets(x: Tensor, labels: list[int], strategy: str, margin: float) -> list[tuple[int, int, int]]:
    """Loops over anchors, positives and negatives of ``x`` against itself (cosine distance)."""
    d, out = _naive_cosine(x), []
    for a, la in enumerate(labels):
        pos = [j for j, lj in enumerate(labels) if lj == la and j != a]
        neg = [j for j, lj in enumerate(labels) if lj != la]
        for p in pos:
            if strategy == "batch_all":
                out += [(a, p, n) for n in neg if d[a][p] - d[a][n] + margin > 0]
            else:  # semi_hard: nearest negative farther than the positive, else the farthest negative
                farther = [n for n in neg if d[a][n] > d[a][p]]
                out.append((a, p, min(farther, key=lambda n: d[a][n]) if farther else max(neg, key=lambda n: d[a][n])))
    return sorted(out)


def _sorted(triplets: tuple[Tensor, Tensor, Tensor]) -> list[tuple[int, int, int]]:
    return sorted(zip(*(t.tolist() for t in triplets), strict=True))


def test_mine_triplets_defaults_are_semi_hard_with_margin_0_2() -> None:
    """Without ``strategy``/``margin``: semi-hard triplets; batch-all with the default margin enumerates exactly the
    triplets active at margin 0.2 (the data has triplets active at 1.2 but not at 0.2)."""
    x, labels = _randn(10, 4, seed=7), [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    t = torch.tensor(labels)
    assert _sorted(mine_triplets(x, t)) == _naive_triplets(x, labels, "semi_hard", 0.2)
    batch_all = _sorted(mine_triplets(x, t, "batch_all"))
    assert batch_all == _naive_triplets(x, labels, "batch_all", 0.2)
    assert len(_naive_triplets(x, labels, "batch_all", 1.2)) > len(batch_all) > 0


def test_mine_triplets_needs_ref_labels_with_ref_embeddings() -> None:
    """The message names the missing argument."""
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match=r"^ref_labels is required with ref_embeddings$"):
        mine_triplets(x, torch.zeros(3, dtype=torch.long), ref_embeddings=x)


@pytest.mark.parametrize("strategy", ["semi_hard", "batch_all"])
def test_mine_triplets_honours_block_elements(strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``block_elements`` bounds the anchor blocks of the mining (2 rows of M = 10 keys for 20 elements), and
    batch-all enumeration gets the same budget; the triplets are those of one block."""
    x, labels = _randn(10, 4, seed=8), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    blocks: list[int] = []
    budgets: list[int | None] = []
    real_masks, real_enumerate = miners.target_masks, miners.enumerate_batch_all

    def target_masks(query_targets: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        blocks.append(query_targets.shape[0])
        return real_masks(query_targets, *args, **kwargs)

    def enumerate_batch_all(*args: Any, **kwargs: Any) -> tuple[Tensor, Tensor, Tensor]:
        budgets.append(args[4] if len(args) > 4 else kwargs.get("block_elements"))
        return real_enumerate(*args, **kwargs)

    monkeypatch.setattr(miners, "target_masks", target_masks)
    monkeypatch.setattr(miners, "enumerate_batch_all", enumerate_batch_all)
    blocked = _sorted(mine_triplets(x, labels, strategy, block_elements=20))
    assert blocks == [2] * 5 and budgets == ([20] if strategy == "batch_all" else [])
    assert blocked == _naive_triplets(x, labels.tolist(), strategy, 0.2)


def test_row_blocks_follow_the_budget() -> None:
    """Rows per block: ``budget // M`` (at least 1, at most N); the default budget is max(N*M // 4, 2^22), an int."""
    assert miners._row_blocks(10, 100, 50) == 1  # budget < M: still one row
    assert miners._row_blocks(10, 1, 4) == 4  # M = 1: budget rows
    assert miners._row_blocks(10, 0, 4) == 4  # no keys: budget // 1
    assert miners._row_blocks(2048, 2048, None) == 2048  # a training batch of 2048 rows is one block
    assert miners._row_blocks(4096, 4096, None) == 1024  # 2^22 // 4096
    big = miners._row_blocks(4096, 8192, None)  # N*M // 4 = 2^23 > 2^22: 2^23 // 8192
    assert big == 1024 and type(big) is int


# --- MemoryBank ----------------------------------------------------------------------------------------------------
def test_memory_bank_defaults_and_its_integer_state() -> None:
    """Defaults: 4096 lazily sized rows, online keys, id positives, gathering; the ids, labels, pointer and
    fill count are saved as integers."""
    bank = MemoryBank()
    assert (bank.size, tuple(bank.queue.shape), bank.momentum, bank.label_positives) == (4096, (4096, 0), None, False)
    assert bank.gather_across_ranks is True and bank.strategy == "semi_hard"
    assert MemoryBank(gather_across_ranks=False).gather_across_ranks is False
    dtypes = {k: v.dtype for k, v in bank.state_dict().items()}
    assert dtypes == {
        "queue": torch.float32,
        "queue_ids": torch.long,
        "queue_labels": torch.long,
        "ptr": torch.long,
        "filled": torch.long,
    }
    assert bank.queue_ids.tolist() == bank.queue_labels.tolist() == [-1] * 4096


def test_memory_bank_of_one_row_and_the_size_message() -> None:
    """``size=1`` is valid (each enqueue replaces the row); ``size=0`` is refused with a message naming it."""
    bank = MemoryBank(size=1)
    bank.enqueue(torch.tensor([[1.0, 2.0]]), torch.tensor([5]))
    bank.enqueue(torch.tensor([[3.0, 4.0]]), torch.tensor([6]), torch.tensor([2]))
    assert bank.queue.tolist() == [[3.0, 4.0]] and bank.queue_ids.tolist() == [6] and bank.queue_labels.tolist() == [2]
    assert (int(bank.ptr), int(bank.filled)) == (0, 1)
    with pytest.raises(ValueError, match=r"^sampler\.size must be >= 1, got 0\.$"):
        MemoryBank(size=0)


def test_bind_builds_the_key_encoder_with_the_banks_momentum() -> None:
    """``bind`` passes ``momentum`` on: one step is the 0.5 average, not the default 0.99."""
    online = nn.Linear(2, 2)
    bank = MemoryBank(momentum=0.5)
    bank.bind(online)
    assert bank.key_encoder is not None and bank.key_encoder.momentum == 0.5
    before = bank.key_encoder.net[0].weight.clone()
    with torch.no_grad():
        online.weight.add_(2.0)
    bank.key_encoder.step()
    torch.testing.assert_close(bank.key_encoder.net[0].weight, 0.5 * before + 0.5 * online.weight)


def _filled_bank(size: int = 8, width: int = 3, **kwargs: Any) -> MemoryBank:
    bank = MemoryBank(size=size, **kwargs)
    bank.enqueue(_randn(3, width, seed=9).float(), torch.tensor([0, 7, 8]), torch.tensor([1, 0, -1]))
    return bank


def test_loading_a_state_without_a_queue_or_of_another_width() -> None:
    """A state without ``queue`` (non-strict) leaves a lazily sized bank as it is; a sized bank refuses a queue
    of another width instead of adopting it."""
    lazy = MemoryBank(size=8)
    result = lazy.load_state_dict({}, strict=False)
    assert sorted(result.missing_keys) == ["filled", "ptr", "queue", "queue_ids", "queue_labels"]
    assert tuple(lazy.queue.shape) == (8, 0)
    sized = MemoryBank(size=8, dim=5)
    with pytest.raises(
        RuntimeError, match=r"size mismatch for queue: copying a param with shape torch\.Size\(\[8, 3\]\)"
    ):
        sized.load_state_dict(_filled_bank().state_dict())
    assert tuple(sized.queue.shape) == (8, 5)


def test_load_hook_takes_keyword_arguments_like_deepspeed() -> None:
    """Lightning's DeepSpeed strategy calls ``_load_from_state_dict`` with keywords only: they reach torch."""
    source, bank = _filled_bank(), MemoryBank(size=8)
    missing: list[str] = []
    errors: list[str] = []
    bank._load_from_state_dict(
        state_dict=source.state_dict(),
        prefix="",
        local_metadata={},
        strict=True,
        missing_keys=missing,
        unexpected_keys=[],
        error_msgs=errors,
    )
    assert (missing, errors) == ([], [])
    assert torch.equal(bank.queue, source.queue) and torch.equal(bank.queue_ids, source.queue_ids)


def test_bank_tensors_stay_on_the_banks_device() -> None:
    """A lazily sized bank on another device takes the saved width on its own device; the filled-slot mask, the
    InfoNCE candidates (from CPU ids and labels) and the triplet key mask are made on that device."""
    bank = MemoryBank(size=8, label_positives=True).to(META)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: copying into a meta tensor is a no-op
        bank.load_state_dict(_filled_bank().state_dict())
    assert bank.queue.device == META and tuple(bank.queue.shape) == (8, 3)
    assert bank.valid_rows().device == META
    z = torch.zeros(2, 3, device=META)
    c = bank(z, z, torch.tensor([1, -1]), ids=torch.tensor([0, 1]))
    assert {t.device for t in (c.keys, c.positive_mask, c.exclude_index, c.key_mask)} == {META}
    ids = torch.tensor([0, 1], device=META)
    t = bank.candidates(z, ids, ids, "labels", {})
    assert {x.device for x in (t.keys, t.key_targets, t.self_index, t.key_mask)} == {META}


def test_triplet_targets_keep_the_device_of_the_given_targets() -> None:
    """The queue's targets are moved to the targets' device (here the embeddings and the bank are elsewhere)."""
    bank = _filled_bank()
    c = bank.candidates(
        torch.zeros(2, 3), torch.tensor([0, 1], device=META), torch.tensor([1, 0], device=META), "labels", {}
    )
    assert c.key_targets.device == META and tuple(c.key_targets.shape) == (10,)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_candidates_keep_the_batch_dtype_and_mask_keys_with_bools(dtype: torch.dtype) -> None:
    """The float32 queue is cast to the batch's dtype (bf16 under autocast); ``key_mask`` is a bool mask of the
    batch rows and the filled slots, for InfoNCE and triplet candidates alike."""
    bank = _filled_bank()
    z1, z2 = torch.randn(2, 3, dtype=dtype), torch.randn(2, 3, dtype=dtype)
    c = bank(z1, z2, None, ids=torch.tensor([0, 1]))
    assert c.keys.dtype == dtype and c.keys.shape == (4 + 8, 3)
    assert c.key_mask.dtype == torch.bool and c.key_mask.tolist() == [True] * 7 + [False] * 5
    t = bank.candidates(z1, torch.tensor([0, 1]), torch.tensor([1, 0]), "views", {})
    assert t.keys.dtype == dtype and t.key_targets.tolist() == [0, 1, 0, 7, 8] + [-1] * 5
    assert t.key_mask.dtype == torch.bool and t.key_mask.tolist() == [True] * 5 + [False] * 5


def test_an_empty_bank_appends_nothing_and_masks_no_key() -> None:
    """Before the first enqueue the triplet candidates are the batch alone, with no ``key_mask``."""
    z = torch.randn(3, 2)
    t = MemoryBank(size=8).candidates(z, torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1]), "labels", {})
    assert t.keys is z and t.key_targets.tolist() == [0, 0, 1] and t.key_mask is None


def test_infonce_candidates_need_ids() -> None:
    """The message says where the ids come from."""
    with pytest.raises(ValueError, match=re.escape("the memory bank needs batch['index'] ids; pass ids=") + "$"):
        MemoryBank(size=4)(torch.zeros(2, 3), torch.zeros(2, 3))


def _rank_major(world: int, n: int) -> list[int]:
    """Global-batch key index (``[Z1; Z2]``) of each gathered key (rank-major ``[z1_r; z2_r]`` blocks)."""
    return [v * world * n + r * n + i for r in range(world) for v in range(2) for i in range(n)]


@pytest.mark.parametrize("label_positives", [True, False])
def test_bank_candidates_across_ranks_are_the_global_batchs(label_positives: bool) -> None:
    """With the default gathering each rank's candidates are the single-process candidates of the global batch
    (its query rows, keys in rank-major order, then the same queue); the mean of the ranks' InfoNCE losses is the
    global loss."""
    world, n, d, size = 2, 2, 3, 8
    z1_all, z2_all = _randn(world * n, d, seed=10).float(), _randn(world * n, d, seed=11).float()
    ids_all, labels_all = torch.tensor([0, 1, 2, 3]), torch.tensor([1, -1, 1, 0])
    queued = (_randn(world * 2, d, seed=12).float(), torch.tensor([2, 9, 0, 5]), torch.tensor([0, 1, -1, 1]))

    def rank_fn(rank: int) -> tuple[Any, Tensor]:
        bank = MemoryBank(size=size, label_positives=label_positives)
        bank.enqueue(*(x[_rows(rank, 2)] for x in queued))
        rows = _rows(rank, n)
        c = bank(z1_all[rows], z2_all[rows], labels_all[rows], ids=ids_all[rows])
        return c, info_nce(c.queries, c.keys, temperature=0.5, **c.loss_kwargs())

    g_bank = MemoryBank(size=size, label_positives=label_positives)
    g_bank.enqueue(*queued)
    g = g_bank(z1_all, z2_all, labels_all, ids=ids_all)
    perm = torch.tensor(_rank_major(world, n) + list(range(2 * world * n, 2 * world * n + size)))
    results = run_ranks(rank_fn, world)
    for rank, (c, _) in enumerate(results):
        q = torch.tensor([v * world * n + rank * n + i for v in range(2) for i in range(n)])
        assert torch.equal(c.queries, g.queries[q]) and torch.equal(c.keys, g.keys[perm])
        assert torch.equal(c.positive_mask, g.positive_mask[q][:, perm])
        assert torch.equal(perm[c.exclude_index], g.exclude_index[q])
        assert c.key_mask.dtype == torch.bool and torch.equal(c.key_mask, g.key_mask[perm])
    global_loss = info_nce(g.queries, g.keys, temperature=0.5, **g.loss_kwargs())
    torch.testing.assert_close(torch.stack([loss for _, loss in results]).mean(), global_loss)


def test_bank_without_gathering_under_ddp_uses_the_local_batch() -> None:
    """``gather_across_ranks=False`` (labels as positives too): each rank's candidates are those of a
    single-process bank with the same (globally enqueued) queue and the local batch."""
    world, n, d, size = 2, 2, 3, 8
    z1_all, z2_all = _randn(world * n, d, seed=13).float(), _randn(world * n, d, seed=14).float()
    ids_all, labels_all = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 0, 1, -1])
    queued = (_randn(world * 2, d, seed=15).float(), torch.tensor([2, 9, 0, 5]), torch.tensor([0, 1, 1, 1]))

    def rank_fn(rank: int) -> Any:
        bank = MemoryBank(size=size, label_positives=True, gather_across_ranks=False)
        bank.enqueue(*(x[_rows(rank, 2)] for x in queued))
        rows = _rows(rank, n)
        return bank(z1_all[rows], z2_all[rows], labels_all[rows], ids=ids_all[rows])

    single = MemoryBank(size=size, label_positives=True)
    single.enqueue(*queued)
    for rank, c in enumerate(run_ranks(rank_fn, world)):
        rows = _rows(rank, n)
        e = single(z1_all[rows], z2_all[rows], labels_all[rows], ids=ids_all[rows])
        assert c.keys.shape == (2 * n + size, d)
        for field in ("queries", "keys", "positive_mask", "exclude_index", "key_mask"):
            assert torch.equal(getattr(c, field), getattr(e, field)), field


# --- MomentumEncoder -----------------------------------------------------------------------------------------------
def test_momentum_encoder_default_and_range() -> None:
    """The default momentum is 0.99; 0 is allowed (the keys follow the online net), 1 and above are refused."""
    online = nn.Linear(2, 2)
    default = MomentumEncoder(online)
    assert default.momentum == 0.99
    follow = MomentumEncoder(online, momentum=0.0)
    before = default.net[0].weight.clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    default.step()
    follow.step()
    torch.testing.assert_close(default.net[0].weight, 0.99 * before + 0.01 * online.weight)
    assert torch.equal(follow.net[0].weight, online.weight) and torch.equal(follow.net[0].bias, online.bias)
    for bad in (1.0, 1.5):
        message = f"momentum must be in [0, 1), got {bad}; set sampler.momentum (or null to disable)."
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            MomentumEncoder(online, momentum=bad)


def test_momentum_encoder_refuses_an_online_net_that_changed_shape() -> None:
    """A parameter added to the online net after the copy makes ``step`` fail instead of pairing the rest."""
    online = nn.Linear(2, 2)
    key = MomentumEncoder(online, momentum=0.5)
    online.register_parameter("extra", nn.Parameter(torch.ones(1)))
    with pytest.raises(ValueError, match=r"zip\(\) argument 2 is longer than argument 1"):
        key.step()


def test_an_unknown_strategy_names_the_key() -> None:
    """``check_strategy`` (and the miner built on it) refuse a strategy with the one line naming sampler.strategy."""
    expected = r"^sampler\.strategy must be one of batch_hard, semi_hard, batch_all, got 'banana'; set e\.g\. "
    with pytest.raises(ConfigError, match=expected + r"sampler\.strategy=batch_hard\.$"):
        miners.check_strategy("banana")
    with pytest.raises(ConfigError, match=expected):
        TripletMiner("banana")  # type: ignore[arg-type]
