"""Speed and peak memory of NT-Xent / InfoNCE forward+backward on CPU, as ratios.

For each size (N pairs -> R = 2N rows, D columns) it times, in the same process and interleaved:

* ``bound``: the three matrix products NT-Xent cannot avoid: ``S = Z Z^T`` and two products of
  the same size for the backward (``G Z`` and ``Z^T G``);
* ``plain``: the straightforward PyTorch formulation (normalise, matmul, mask the diagonal with
  -inf, ``F.cross_entropy``), forward + backward;
* ``nt_xent``: :func:`contrastlab.losses.nt_xent` (automatic mode: keeps the softmax for the
  backward up to 2**26 entries, memory-efficient above);
* ``nt_xent[chunked]``: the memory-efficient mode (``chunk_size``), never more than a chunk of S;
* ``info_nce[keys]``: queries against a separate, 4x larger key set (a memory bank / gathered batch).

Time is the minimum (and median) over ``--repeats`` runs (the machine is shared: noisy). Peak
memory is the RSS high-water mark above the RSS before the call (Linux ``/proc/self/clear_refs``),
measured in a separate call. Finally the 65,536-row NT-Xent (32,768 pairs) runs once in the
memory-efficient mode and its peak memory is checked against 4 GB.

    python benchmarks/loss_speed.py                    # full table + the 65,536-row run
    python benchmarks/loss_speed.py --pairs 512 1024 --large-pairs 0   # quick
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from contrastlab.losses import info_nce, nt_xent

TARGET_BOUND_RATIO = 1.6
TARGET_SPEEDUP = 2.0
TARGET_LARGE_PEAK_GB = 4.0


# ----------------------------------------------------------------------------- measurement
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_mb(fn: Callable[[], object]) -> float:
    """RSS high-water mark during ``fn()`` above the RSS before it, in MB."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) / 1024


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- the contenders
def make_cases(pairs: int, dim: int, temperature: float, chunk_size: int) -> dict[str, Callable[[], object]]:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(pairs, dim, generator=g), torch.randn(pairs, dim, generator=g)
    rows = 2 * pairs
    zn = F.normalize(torch.cat([z1, z2]), dim=1)
    grad_s = torch.randn(rows, rows, generator=g) if rows <= 16384 else None
    bank = torch.randn(4 * rows, dim, generator=g)

    def bound() -> None:
        s = zn @ zn.T
        del s
        _ = grad_s @ zn  # dZ from the row side
        _ = zn.T @ grad_s  # dZ from the column side

    def plain() -> None:
        a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        z = F.normalize(torch.cat([a, b]), dim=1)
        logits = (z @ z.T) / temperature
        logits = logits.masked_fill(torch.eye(rows, dtype=torch.bool), float("-inf"))
        target = torch.cat([torch.arange(pairs, rows), torch.arange(pairs)])
        F.cross_entropy(logits, target).backward()

    def ours() -> None:
        a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        nt_xent(a, b, temperature).backward()

    def ours_chunked() -> None:
        a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        nt_xent(a, b, temperature, chunk_size=chunk_size).backward()

    def ours_keys() -> None:
        q, k = torch.cat([z1, z2]).requires_grad_(True), bank.clone().requires_grad_(True)
        info_nce(q, k, torch.arange(rows), temperature).backward()

    cases = {"bound": bound, "plain": plain, "nt_xent": ours, "nt_xent[chunked]": ours_chunked}
    if rows <= 8192:
        cases["info_nce[keys]"] = ours_keys
    if grad_s is None:  # the full-size bound and plain formulations do not fit in memory
        cases.pop("bound")
        cases.pop("plain")
    return cases


def run_size(pairs: int, dim: int, temperature: float, repeats: int, chunk_size: int) -> dict[str, dict]:
    cases = make_cases(pairs, dim, temperature, chunk_size)
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):  # interleaved, so load changes hit every contender alike
        for name, fn in cases.items():
            times[name].append(timed(fn))
    result = {}
    for name, fn in cases.items():
        result[name] = {
            "min": min(times[name]),
            "median": statistics.median(times[name]),
            "peak_mb": peak_memory_mb(fn),
        }
    return result


# ----------------------------------------------------------------------------- report
def print_table(pairs_list: list[int], results: dict[int, dict[str, dict]]) -> None:
    header = (
        f"{'rows':>6} {'case':<17} {'min s':>8} {'median s':>9} {'/bound':>7} "
        f"{'plain/x':>8} {'peak MB':>9}"
    )
    print(header)
    print("-" * len(header))
    for pairs in pairs_list:
        res = results[pairs]
        bound, plain = res.get("bound"), res.get("plain")
        for name, r in res.items():
            to_bound = f"{r['min'] / bound['min']:.2f}" if bound else "-"
            speedup = f"{plain['min'] / r['min']:.2f}" if plain and name != "bound" else "-"
            print(
                f"{2 * pairs:>6} {name:<17} {r['min']:>8.3f} {r['median']:>9.3f} {to_bound:>7} "
                f"{speedup:>8} {r['peak_mb']:>9.0f}"
            )


def large_run(pairs: int, dim: int, temperature: float) -> tuple[float, float]:
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(pairs, dim, generator=g), torch.randn(pairs, dim, generator=g)
    elapsed = 0.0

    def step() -> None:
        nonlocal elapsed
        a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        start = time.perf_counter()
        loss = nt_xent(a, b, temperature)  # automatic: memory-efficient above 2**26 entries
        loss.backward()
        elapsed = time.perf_counter() - start
        assert torch.isfinite(loss) and torch.isfinite(a.grad).all()

    peak = peak_memory_mb(step)
    return elapsed, peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, nargs="+", default=[512, 1024, 2048, 4096], help="N (rows = 2N)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--chunk-size", type=int, default=1024, help="rows per chunk for nt_xent[chunked]")
    p.add_argument("--large-pairs", type=int, default=32768, help="pairs of the big run (0 skips it)")
    args = p.parse_args()

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, D = {args.dim}, float32, CPU")
    results = {n: run_size(n, args.dim, args.temperature, args.repeats, args.chunk_size) for n in args.pairs}
    print_table(args.pairs, results)

    target = max(args.pairs)
    res = results[target]
    if "bound" in res:
        ratio = res["nt_xent"]["min"] / res["bound"]["min"]
        speedup = res["plain"]["min"] / res["nt_xent"]["min"]
        print(
            f"\nN = {target} pairs ({2 * target} rows): nt_xent / matmul bound = {ratio:.2f} "
            f"(target <= {TARGET_BOUND_RATIO}: {'PASS' if ratio <= TARGET_BOUND_RATIO else 'FAIL'}); "
            f"speed-up over plain = {speedup:.2f} "
            f"(target >= {TARGET_SPEEDUP}: {'PASS' if speedup >= TARGET_SPEEDUP else 'FAIL'})"
        )
    if args.large_pairs:
        elapsed, peak = large_run(args.large_pairs, args.dim, args.temperature)
        ok = peak / 1024 < TARGET_LARGE_PEAK_GB
        print(
            f"{2 * args.large_pairs} rows ({args.large_pairs} pairs), D = {args.dim}: forward+backward "
            f"{elapsed:.1f} s, peak memory {peak / 1024:.2f} GB "
            f"(target < {TARGET_LARGE_PEAK_GB} GB: {'PASS' if ok else 'FAIL'})"
        )


if __name__ == "__main__":
    main()
