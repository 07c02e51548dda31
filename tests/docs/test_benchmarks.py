"""The README's benchmark commands run (at toy sizes: the full tables take minutes and their ratios are read
by people, never asserted here) and print what the README says they print. The mining benchmark's own
check, that the fast miners pick the same triplets as the loop and cubic references, must hold."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT


def _bench(name: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_loss_speed_prints_both_tables() -> None:
    out = _bench("loss_speed.py", "--rows", "256", "--large-rows", "0", "--repeats", "1", "--threads", "1")
    for family, fused in (("nt_xent", "nt_xent"), ("info_nce", "info_nce")):
        section = out.split(f"== {family} ==", 1)[1].split("==", 1)[0]
        cases = set(re.findall(r"^\s+256 (\S+)", section, flags=re.M))
        assert cases == {"bound", "plain", fused, f"{fused}[chunked]"}, section


def test_mining_miners_agree_with_the_references() -> None:
    out = _bench("mining.py", "--n", "256", "--cubic-n", "64", "--per-class", "8", "--repeats", "1", "--threads", "1")
    rows = re.findall(r"^(batch_hard|semi_hard|batch_all)\s+(\d+)\s+(loop|cubic) \|.*\|\s+([\d,]+) (\w+)$", out, re.M)
    assert len(rows) == 6, out
    for strategy, n, ref, triplets, same in rows:
        assert same == "yes", f"{strategy} N={n}: differs from the {ref} reference\n{out}"
        assert int(triplets.replace(",", "")) > 0


def test_train_overhead_compares_the_same_losses() -> None:
    out = _bench("train_overhead.py", "--repeats", "1", "--epoch-steps", "2")
    lightning, bare = re.search(r"last loss: lightning ([\d.]+), bare ([\d.]+)", out).groups()
    assert lightning == bare  # the two loops train the same model on the same data: the ratio is fair
    assert re.search(r"epoch ratio lightning/bare: [\d.]+", out)


def test_data_throughput_benchmark_runs_at_toy_size() -> None:
    out = _bench(
        "data_throughput.py", "--n", "200", "--size", "64", "--image-size", "32", "--batch", "16", "--repeats", "1"
    )
    assert "img/s" in out and "shards" in out and "folder" in out
