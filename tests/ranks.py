"""Ranks as threads of this process: ``run_ranks(fn, world)`` runs ``fn(rank)`` on ``world`` threads, each a rank
of one threaded process group (torch's ``multi_threaded_pg``).

Spawned gloo ranks are invisible to a mutation tester; these run in-process, so ``make mutate`` knows which tests
cover which function. Shared by the ``*_mutants`` tests of every folder (``from ranks import run_ranks``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.testing._internal.distributed import multi_threaded_pg as threaded

from contrastlab import distributed


def run_ranks(fn: Callable[[int], Any], world: int = 2, timeout: float = 30.0) -> list[Any]:
    """``fn(rank)`` on ``world`` threads, each a rank of one threaded process group; their results.

    Fails fast instead of hanging: a rank that raises wakes the others waiting in a collective, and ranks still
    running after ``timeout`` seconds (e.g. one waits in a collective another never enters) are woken the same way
    and reported as hung. The threads are daemons, so a rank that cannot be woken never keeps pytest alive.
    """
    torch._C._distributed_c10d._set_thread_isolation_mode(True)
    threaded._install_threaded_pg()
    store = dist.HashStore()
    results: list[Any] = [None] * world
    errors: list[BaseException] = []

    def worker(rank: int) -> None:
        dist.init_process_group("threaded", rank=rank, world_size=world, store=store)
        try:
            results[rank] = fn(rank)
        except BaseException as err:  # wake the other ranks waiting in a collective
            errors.append(err)
            threaded.ProcessLocalGroup.exception_handle(err)
        finally:
            dist.destroy_process_group()

    threads = [threading.Thread(target=worker, args=(r,), daemon=True) for r in range(world)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        hung = [r for r, t in enumerate(threads) if t.is_alive()]
        if hung:  # wake the ranks stuck in a collective (they exit), then report
            threaded.ProcessLocalGroup.exception_handle(TimeoutError("a rank hung"))
            for t in threads:
                t.join(timeout=5)
        assert not hung, f"ranks {hung} still running after {timeout} s (waiting in a collective another rank skipped?)"
    finally:
        threaded._uninstall_threaded_pg()
        torch._C._distributed_c10d._set_thread_isolation_mode(False)
        threaded.ProcessLocalGroup.reset()
        distributed._host_groups.clear()
    if errors:
        raise errors[0]
    return results
