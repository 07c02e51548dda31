"""``contrastlab.distributed`` with 2 and 3 ranks as threads of this process (torch's threaded process group).

The gloo tests (test_distributed_gather.py, test_eval_sharded.py) run the same functions in spawned
processes, which a mutation tester cannot see: these run them in-process, so ``make mutate`` knows which
tests cover which function. Every result is compared with the single-process computation on the global
batch (the gather is a concatenation in rank order; its backward sums every rank's gradient of the
owner's rows).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from ranks import run_ranks

from contrastlab import distributed


@pytest.mark.parametrize("world", [2, 3])
def test_gather_is_the_rank_ordered_concatenation_and_its_backward_sums_every_ranks_gradient(world: int) -> None:
    b, d = 2, 3
    data = torch.randn(world * b, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    weights = torch.randn(world, world * b, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def rank_fn(rank: int) -> tuple:
        x = data[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        gathered = distributed.gather(x)
        (weights[rank] * gathered).sum().backward()
        plain = distributed.gather(x, with_grad=False)
        return (
            distributed.is_distributed(),
            distributed.world_size(),
            distributed.rank(),
            distributed.rank_offset(b),
            gathered.detach(),
            x.grad,
            plain.requires_grad,
            plain,
        )

    for rank, (is_dist, size, r, offset, gathered, grad, plain_grad, plain) in enumerate(run_ranks(rank_fn, world)):
        assert (is_dist, size, r, offset) == (True, world, rank, rank * b)
        assert torch.equal(gathered, data) and torch.equal(plain, data) and not plain_grad
        # d/dx_rank of sum_r <w_r, gather(x)> = sum_r w_r[rows of rank]
        assert torch.allclose(grad, weights.sum(0)[rank * b : (rank + 1) * b], rtol=1e-12)


def test_gather_of_a_tensor_without_gradient_and_unequal_batches() -> None:
    def rank_fn(rank: int) -> torch.Tensor:
        return distributed.gather(torch.full((2, 1), float(rank)))  # requires_grad=False: the plain path

    for out in run_ranks(rank_fn):
        assert out.tolist() == [[0.0], [0.0], [1.0], [1.0]] and not out.requires_grad

    def unequal(rank: int) -> None:
        distributed.gather(torch.zeros(rank + 1, 2, requires_grad=True))

    with pytest.raises(RuntimeError, match=r"^per-rank batch sizes differ \(\[1, 2\]\); cross-rank negatives need"):
        run_ranks(unequal)


@pytest.mark.parametrize("world", [2, 3])
def test_evaluation_helpers_split_and_reassemble_in_rank_order(world: int) -> None:
    def rank_fn(rank: int) -> tuple:
        rows = torch.arange(rank + 1, dtype=torch.float32)[:, None].repeat(1, 2) + 10 * rank  # rank r: r + 1 rows
        bounds = [distributed.shard_bounds(n) for n in (0, 1, 7, 8)]
        return (
            bounds,
            distributed.gather_rows(rows),
            distributed.gather_lists([f"r{rank}-{i}" for i in range(rank + 1)]),
            distributed.max_over_ranks(5 - rank),
            distributed.max_over_ranks(rank),
        )

    results = run_ranks(rank_fn, world)
    expected_rows = torch.cat(
        [torch.arange(r + 1, dtype=torch.float32)[:, None].repeat(1, 2) + 10 * r for r in range(world)]
    )
    expected_lists = [f"r{r}-{i}" for r in range(world) for i in range(r + 1)]
    for rank, (bounds, rows, lists, top, top_rank) in enumerate(results):
        assert bounds == [(rank * n // world, (rank + 1) * n // world) for n in (0, 1, 7, 8)]
        assert torch.equal(rows, expected_rows) and lists == expected_lists
        assert top == 5 and top_rank == world - 1
    shares = [results[r][0][2] for r in range(world)]  # n = 7: contiguous, covering, sizes differ by <= 1
    assert (
        shares[0][0] == 0 and shares[-1][1] == 7 and all(a[1] == b[0] for a, b in zip(shares, shares[1:], strict=False))
    )
    assert max(e - s for s, e in shares) - min(e - s for s, e in shares) <= 1


def test_host_integers_travel_over_one_cached_cpu_group_unless_the_backend_is_gloo(monkeypatch) -> None:
    def rank_fn(rank: int) -> tuple:
        first = distributed.host_group()
        return first, distributed.host_group(), distributed._host_groups.get(id(dist.group.WORLD))

    for first, second, cached in run_ranks(rank_fn):  # "threaded" is not gloo: a gloo group, made once per world
        assert first is not None and first is second and cached is first

    monkeypatch.setattr(dist, "get_backend", lambda *a, **k: "gloo")
    assert distributed.host_group() is None  # gloo: the default group already exchanges CPU tensors


def test_single_process_identities() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.gather(x) is x and distributed.gather_rows(x) is x
    assert distributed.gather_lists(["a"]) == ["a"] and distributed.max_over_ranks(4) == 4
    assert distributed.shard_bounds(5) == (0, 5) and distributed.rank_offset(7) == 0
    distributed.check_equal_batches(3)  # nothing to compare


def test_launched_by_torchrun_reads_torchelastic(monkeypatch) -> None:
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert distributed.launched_by_torchrun() is False
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert distributed.launched_by_torchrun() is True


def test_one_rank_is_not_distributed() -> None:
    def rank_fn(rank: int) -> tuple:
        x = torch.ones(2, 1, requires_grad=True)
        return distributed.is_distributed(), distributed.world_size(), distributed.gather(x) is x

    assert run_ranks(rank_fn, world=1) == [(False, 1, True)]


def test_host_integers_rows_and_lists_use_the_gloo_host_group(monkeypatch) -> None:
    """CPU tensors and objects go through host_group() (a gloo group, so they never queue behind device work),
    never through the default group (NCCL on GPUs)."""
    used: list[tuple[str, object, object]] = []  # (collective, group passed, this rank's host group)
    real_all_gather, real_all_gather_object = dist.all_gather, dist.all_gather_object

    def all_gather(*args, group=None, **kwargs):
        used.append(("all_gather", group, distributed.host_group()))
        return real_all_gather(*args, group=group, **kwargs)

    def all_gather_object(*args, group=None, **kwargs):
        used.append(("all_gather_object", group, distributed.host_group()))
        return real_all_gather_object(*args, group=group, **kwargs)

    monkeypatch.setattr(dist, "all_gather", all_gather)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)

    def rank_fn(rank: int) -> tuple:
        host = distributed.host_group()
        distributed.gather_rows(torch.zeros(rank + 1, 2))
        distributed.gather_lists(["x"])
        distributed.max_over_ranks(rank)
        return dist.get_backend(host)

    assert run_ranks(rank_fn) == ["gloo", "gloo"]
    # per rank: gather_rows' counts and rows, gather_lists' objects, max_over_ranks' integers
    assert len(used) == 8 and all(group is host and host is not None for _, group, host in used)


class _Sent(Exception):
    """Raised by a fake collective once it has recorded what it was given (on every rank, so none waits)."""


def test_rows_on_a_device_are_gathered_over_the_default_group(monkeypatch) -> None:
    """Device tensors (here on the meta device, so no GPU is needed) travel over the default group, not over
    host_group() (gloo, for CPU tensors); their row counts still go over host_group()."""
    groups: list[object] = []
    real_all_gather = dist.all_gather

    def all_gather(parts, tensor, group=None, **kwargs):
        if tensor.device.type != "meta":
            return real_all_gather(parts, tensor, group=group, **kwargs)
        groups.append(group)
        raise _Sent  # meta tensors hold no data: nothing to exchange

    monkeypatch.setattr(dist, "all_gather", all_gather)

    def rank_fn(rank: int) -> None:
        with pytest.raises(_Sent):
            distributed.gather_rows(torch.empty(rank + 1, 2, device="meta"))

    run_ranks(rank_fn)
    assert groups == [None, None]
