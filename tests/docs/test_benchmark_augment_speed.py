"""``benchmarks/augment_speed.py`` at toy size: it times our batched augmentation, kornia's and the per-image
path on the same batch and prints the ratios and the verdict the rule in ``contrastlab/data/batch_augment.py``
reads (the figures are for people, never asserted)."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT


def test_quick_run_prints_each_case_and_the_verdict() -> None:
    args = ["--shapes", "16x32", "--repeats", "1", "--budget", "0.05", "--threads", "1"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "augment_speed.py"), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    cases = set(re.findall(r"^\s+16x32\s+(\S+)\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.M))
    assert cases == {"ours", "kornia", "per-image"}, out
    assert re.search(r"^16x32: kornia/ours [\d.]+, per-image/ours [\d.]+$", out, re.M), out
    assert re.search(r"^verdict: (kornia within|kornia more than) 1.2x", out, re.M), out
