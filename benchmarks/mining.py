"""Online triplet mining: time and peak memory, beside plain-PyTorch references.

    python benchmarks/mining.py                      # N = 4096, D = 128, 128 classes x 32 items, CPU
    python benchmarks/mining.py --n 2048 --device cuda

For each strategy (batch_hard, semi_hard, batch_all) it measures the training path of contrastlab —
the distance matrix, ``mine_from_distances`` and the loss on what it mined (batch-all: the mask form)
— against

* ``loop``: plain PyTorch one anchor at a time (each anchor's K positives x N negatives), O(N^2) memory;
* ``cubic``: the textbook broadcast over all (a, p, n) (an (N, N, N) tensor, how the anchor libraries
  mine semi-hard and batch-all), run at a smaller N because at N = 4096 it needs N^3 = 69e9 entries.

Peak memory is the extra memory of one cold call, printed as a multiple of the N x N float32 distance
matrix (CPU: the process's peak resident set, reset just before the call via /proc/self/clear_refs;
CUDA: ``max_memory_allocated``). Each measurement runs in a fresh process. Time is the median of warm
calls. Every implementation must mine the same number of triplets with the same mean loss.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from contrastlab.losses import batch_all_triplet_margin, pairwise_distance, triplet_margin_from_distances
from contrastlab.negatives import mine_from_distances

MARGIN = 0.2


def inputs(n: int, dim: int, per_class: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g)
    labels = torch.arange(n) // per_class
    return x.to(device), labels.to(device)


def ours(x: torch.Tensor, labels: torch.Tensor, strategy: str) -> tuple[int, float]:
    dist = pairwise_distance(x, x)
    mined = mine_from_distances(dist, labels, labels, strategy, MARGIN, torch.arange(len(x), device=x.device))
    if strategy == "batch_all":
        loss = batch_all_triplet_margin(dist, mined.positive_mask, mined.negative_mask, MARGIN)
        return int(mined.stats["active_fraction"] * mined.stats["num_triplets"] + 0.5), float(loss)
    loss = triplet_margin_from_distances(dist, mined.anchor_idx, mined.positive_idx, mined.negative_idx, MARGIN)
    return mined.anchor_idx.numel(), float(loss)


def loop(x: torch.Tensor, labels: torch.Tensor, strategy: str) -> tuple[int, float]:
    """Plain PyTorch, one anchor at a time."""
    xn = torch.nn.functional.normalize(x, dim=1)
    total, count = 0.0, 0
    for a in range(len(x)):
        d = 1 - xn @ xn[a]
        pos = labels == labels[a]
        pos[a] = False
        neg = labels != labels[a]
        dp, dn = d[pos], d[neg]
        if strategy == "batch_hard":
            total, count = total + float(torch.relu(dp.max() - dn.min() + MARGIN)), count + 1
        elif strategy == "semi_hard":
            farther = dn[None, :] > dp[:, None]
            nearest = torch.where(farther, dn[None, :], torch.inf).min(1).values
            chosen = torch.where(farther.any(1), nearest, dn.max())
            total, count = total + float(torch.relu(dp - chosen + MARGIN).sum()), count + len(dp)
        else:
            t = dp[:, None] - dn[None, :] + MARGIN
            total, count = total + float(t[t > 0].sum()), count + int((t > 0).sum())
    if strategy == "batch_all":
        return count, total / count
    return count, total / count


def cubic(x: torch.Tensor, labels: torch.Tensor, strategy: str) -> tuple[int, float]:
    """The (N, N, N) broadcast over every (anchor, positive, negative)."""
    dist = pairwise_distance(x, x)
    n = len(x)
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(n, dtype=torch.bool, device=x.device)
    if strategy == "batch_hard":  # needs no cube: the masked max / min is the plain formulation
        hp = torch.where(pos, dist, -torch.inf).max(1).values
        hn = torch.where(~same, dist, torch.inf).min(1).values
        return n, float(torch.relu(hp - hn + MARGIN).mean())
    trip = dist[:, :, None] - dist[:, None, :] + MARGIN  # (a, p, n)
    valid = pos[:, :, None] & ~same[:, None, :]
    if strategy == "batch_all":
        active = valid & (trip > 0)
        return int(active.sum()), float(trip[active].mean())
    farther = valid & (dist[:, None, :] > dist[:, :, None])
    nearest = torch.where(farther, dist[:, None, :], torch.inf).min(2).values  # (a, p)
    fallback = torch.where(~same, dist, -torch.inf).max(1).values[:, None].expand_as(nearest)
    chosen = torch.where(farther.any(2), nearest, fallback)
    loss = torch.relu(dist - chosen + MARGIN)[pos]
    return int(pos.sum()), float(loss.mean())


IMPLS = {"ours": ours, "loop": loop, "cubic": cubic}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(impl: str, strategy: str, n: int, dim: int, per_class: int, device: str, repeats: int, threads: int) -> dict:
    torch.manual_seed(0)
    if threads > 0:
        torch.set_num_threads(threads)
    x, labels = inputs(n, dim, per_class, device)
    fn = IMPLS[impl]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            result = fn(x, labels, strategy)
            sync()
            peak = torch.cuda.max_memory_allocated() - base
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set to the current one
            base = _rss_kib("VmRSS")
            result = fn(x, labels, strategy)
            peak = (_rss_kib("VmHWM") - base) * 1024
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            fn(x, labels, strategy)
            sync()
            times.append(time.perf_counter() - t0)
    return {"triplets": result[0], "loss": result[1], "peak_bytes": peak, "time_s": statistics.median(times)}


def measure(impl: str, strategy: str, n: int, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        strategy,
        "--n",
        str(n),
        "--dim",
        str(args.dim),
        "--per-class",
        str(args.per_class),
        "--device",
        args.device,
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def row(strategy: str, n: int, ref: str, args: argparse.Namespace) -> None:
    a, b = measure("ours", strategy, n, args), measure(ref, strategy, n, args)
    nn = n * n * 4
    # float32: triplets within rounding of the hinge (d_ap - d_an + margin ~ 0) may flip between formulations
    same_count = abs(a["triplets"] - b["triplets"]) <= 1e-6 * b["triplets"]
    same = same_count and abs(a["loss"] - b["loss"]) <= 1e-4 * max(1.0, abs(b["loss"]))
    print(
        f"{strategy:<10} {n:>5} {ref:>5} | {a['time_s'] * 1e3:9.1f} {b['time_s'] * 1e3:10.1f} "
        f"{b['time_s'] / a['time_s']:8.1f}x | {a['peak_bytes'] / nn:9.2f} {b['peak_bytes'] / nn:9.2f} | "
        f"{a['triplets']:>11,} {'yes' if same else 'NO'}"
    )
    if not same:
        print(f"    ours: {a['triplets']} triplets, loss {a['loss']:.6f}; {ref}: {b['triplets']}, {b['loss']:.6f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--cubic-n", type=int, default=384, help="N for the (N, N, N) reference")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--per-class", type=int, default=32, help="items per class (K)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--worker", nargs=2, metavar=("IMPL", "STRATEGY"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(
            json.dumps(worker(*args.worker, args.n, args.dim, args.per_class, args.device, args.repeats, args.threads))
        )
        return
    print(
        f"mining: D={args.dim}, {args.per_class} items per class, margin {MARGIN}, device {args.device}, "
        f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads"
    )
    print("peak = extra memory of one call / (N x N float32); speed-up = reference time / ours\n")
    print(
        f"{'strategy':<10} {'N':>5} {'ref':>5} | {'ours ms':>9} {'ref ms':>10} {'speed-up':>9} | "
        f"{'ours peak':>9} {'ref peak':>9} | {'triplets':>11} same"
    )
    for strategy in ("batch_hard", "semi_hard", "batch_all"):
        row(strategy, args.n, "loop", args)
    for strategy in ("batch_hard", "semi_hard", "batch_all"):
        row(strategy, args.cubic_n, "cubic", args)


if __name__ == "__main__":
    main()
