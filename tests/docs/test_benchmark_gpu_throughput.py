"""``benchmarks/gpu_throughput.py --toy``: the GPU comparison runs end to end at toy size on the CPU and prints
images/s and peak memory for contrastlab and the bare loop (and lightly's recipe, or that it is not installed).
The numbers themselves are read by people on a GPU, never asserted here."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT, cli_env


def test_toy_run_prints_throughput_and_memory_of_each_case(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_throughput.py"), "--toy", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=cli_env(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "batch 8, 2 timed steps after 1, 0 workers" in out, out
    for case in ("contrastlab", "bare"):
        images_s, peak, loss = re.search(rf"^{case}\s+([\d.]+)\s+(\d+)\s+([\d.]+)$", out, re.M).groups()
        assert float(images_s) > 0 and int(peak) > 0 and 0 < float(loss) < 10, out  # NT-Xent of 16 views: ~log 15
    assert re.search(r"^lightly\s+(not installed|[\d.]+\s)", out, re.M), out
    assert re.search(r"^images/s contrastlab/bare: [\d.]+$", out, re.M), out
