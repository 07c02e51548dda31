"""Speed and peak memory of NT-Xent / InfoNCE forward+backward on CPU, as ratios.

For each loss and size (R rows = 2N views for NT-Xent; R queries against 2R keys for InfoNCE,
D columns) it times, in the same process and interleaved:

* ``bound``: the three matrix products the loss cannot avoid: ``S = Q K^T`` and two products of
  the same size for the backward (``G K`` and ``Q^T G``);
* ``plain``: the straightforward PyTorch formulation (normalise, matmul, mask the diagonal with
  -inf for NT-Xent, ``F.cross_entropy``), forward + backward;
* ``nt_xent`` / ``info_nce``: contrastlab's loss in automatic mode (keeps the softmax for the
  backward up to 2**26 entries, memory-efficient above);
* ``[chunked]``: the memory-efficient mode (``chunk_size``): never more than a chunk of S.

Time is the minimum (and median) over ``--repeats`` runs (the machine is shared: noisy). Peak
memory is the RSS high-water mark above the RSS before the call (Linux ``/proc/self/clear_refs``),
measured in a separate call. Finally the 65,536-row NT-Xent (32,768 pairs) runs once in the
memory-efficient mode and its peak memory is checked against 4 GB.

    python benchmarks/loss_speed.py                    # full table + the 65,536-row run
    python benchmarks/loss_speed.py --rows 1024 2048 --large-rows 0   # quick
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
def nt_xent_cases(rows: int, dim: int, temperature: float, chunk_size: int) -> dict[str, Callable[[], object]]:
    """SimCLR: queries = keys = the 2N views; bound = Z Z^T, G Z, Z^T G."""
    pairs = rows // 2
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(pairs, dim, generator=g), torch.randn(pairs, dim, generator=g)
    zn = F.normalize(torch.cat([z1, z2]), dim=1)
    grad_s = torch.randn(rows, rows, generator=g)
    target = torch.cat([torch.arange(pairs, rows), torch.arange(pairs)])

    def bound() -> None:
        del_ = zn @ zn.T  # forward: S
        del del_
        _ = grad_s @ zn  # backward, row side
        _ = zn.T @ grad_s  # backward, column side

    def plain() -> None:
        a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        z = F.normalize(torch.cat([a, b]), dim=1)
        logits = (z @ z.T) / temperature
        logits = logits.masked_fill(torch.eye(rows, dtype=torch.bool), float("-inf"))
        F.cross_entropy(logits, target).backward()

    def ours() -> None:
        a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        nt_xent(a, b, temperature).backward()

    def ours_chunked() -> None:
        a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        nt_xent(a, b, temperature, chunk_size=chunk_size).backward()

    return {"bound": bound, "plain": plain, "nt_xent": ours, "nt_xent[chunked]": ours_chunked}


def info_nce_cases(rows: int, dim: int, temperature: float, chunk_size: int) -> dict[str, Callable[[], object]]:
    """Queries (R, D) against a separate key set of 2R rows (gathered batch / memory bank);
    bound = Q K^T, G K, Q^T G."""
    g = torch.Generator().manual_seed(0)
    m = 2 * rows
    q0, k0 = torch.randn(rows, dim, generator=g), torch.randn(m, dim, generator=g)
    qn, kn = F.normalize(q0, dim=1), F.normalize(k0, dim=1)
    grad_s = torch.randn(rows, m, generator=g)
    pos = torch.randint(0, m, (rows,), generator=g)

    def bound() -> None:
        del_ = qn @ kn.T
        del del_
        _ = grad_s @ kn
        _ = qn.T @ grad_s

    def plain() -> None:
        q, k = q0.clone().requires_grad_(True), k0.clone().requires_grad_(True)
        logits = (F.normalize(q, dim=1) @ F.normalize(k, dim=1).T) / temperature
        F.cross_entropy(logits, pos).backward()

    def ours(chunk: int | None = None) -> None:
        q, k = q0.clone().requires_grad_(True), k0.clone().requires_grad_(True)
        info_nce(q, k, pos, temperature, chunk_size=chunk).backward()

    return {"bound": bound, "plain": plain, "info_nce": ours, "info_nce[chunked]": lambda: ours(chunk_size)}


FAMILIES = {"nt_xent": nt_xent_cases, "info_nce": info_nce_cases}


def run_size(cases: dict[str, Callable[[], object]], repeats: int, budget_s: float = 2.0) -> dict[str, dict]:
    """Warm up, then ``repeats`` interleaved rounds (more for fast cases, up to ``budget_s`` per case)."""
    warm = max(timed(fn) for fn in cases.values())
    repeats = max(repeats, min(50, int(budget_s / max(warm, 1e-4))))
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):  # interleaved, so load changes hit every contender alike
        for name, fn in cases.items():
            times[name].append(timed(fn))
    return {
        name: {
            "min": min(times[name]),
            "median": statistics.median(times[name]),
            "peak_mb": peak_memory_mb(fn),
        }
        for name, fn in cases.items()
    }


# ----------------------------------------------------------------------------- report
def print_table(results: dict[int, dict[str, dict]]) -> None:
    header = f"{'rows':>6} {'case':<18} {'min s':>8} {'median s':>9} {'/bound':>7} {'plain/x':>8} {'peak MB':>9}"
    print(header)
    print("-" * len(header))
    for rows, res in results.items():
        bound, plain = res["bound"], res["plain"]
        for name, r in res.items():
            speedup = f"{plain['min'] / r['min']:.2f}" if name != "bound" else "-"
            print(
                f"{rows:>6} {name:<18} {r['min']:>8.3f} {r['median']:>9.3f} {r['min'] / bound['min']:>7.2f} "
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
    p.add_argument("--rows", type=int, nargs="+", default=[1024, 2048, 4096, 8192], help="R = 2N rows")
    p.add_argument("--losses", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--chunk-size", type=int, default=1024, help="rows per chunk for the [chunked] cases")
    p.add_argument("--large-rows", type=int, default=65536, help="rows of the big NT-Xent run (0 skips it)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, D = {args.dim}, float32, CPU")
    print("min/median over repeats; /bound = min time / min time of the three matrix products;")
    print("plain/x = speed-up over the straightforward PyTorch formulation; peak MB = RSS high-water mark")
    bounds = {}
    for loss in args.losses:
        print(f"\n== {loss} ==")
        results = {
            r: run_size(FAMILIES[loss](r, args.dim, args.temperature, args.chunk_size), args.repeats) for r in args.rows
        }
        print_table(results)
        top = max(args.rows)
        res = results[top]
        bounds[loss] = (top, res["bound"]["min"])
        if loss == "nt_xent":
            ratio = res["nt_xent"]["min"] / res["bound"]["min"]
            speedup = res["plain"]["min"] / res["nt_xent"]["min"]
            print(
                f"NT-Xent, {top // 2} pairs ({top} rows): time / matmul bound = {ratio:.2f} "
                f"(target <= {TARGET_BOUND_RATIO}: {'PASS' if ratio <= TARGET_BOUND_RATIO else 'FAIL'}); "
                f"speed-up over plain = {speedup:.2f} "
                f"(target >= {TARGET_SPEEDUP}: {'PASS' if speedup >= TARGET_SPEEDUP else 'FAIL'})"
            )
    if args.large_rows:
        elapsed, peak = large_run(args.large_rows // 2, args.dim, args.temperature)
        ok = peak / 1024 < TARGET_LARGE_PEAK_GB
        extra = ""
        if "nt_xent" in bounds:  # the bound grows as rows^2 at fixed D
            rows, t_bound = bounds["nt_xent"]
            est = t_bound * (args.large_rows / rows) ** 2
            extra = f", matmul bound ~{est:.0f} s (extrapolated from {rows} rows) -> ratio ~{elapsed / est:.2f}"
        print(
            f"\nNT-Xent, {args.large_rows} rows ({args.large_rows // 2} pairs), D = {args.dim}, chunked "
            f"mode: forward+backward {elapsed:.1f} s{extra}; peak memory {peak / 1024:.2f} GB "
            f"(target < {TARGET_LARGE_PEAK_GB} GB: {'PASS' if ok else 'FAIL'})"
        )


if __name__ == "__main__":
    main()
