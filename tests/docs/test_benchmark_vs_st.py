"""``benchmarks/vs_sentence_transformers.py --toy`` runs offline (a tiny random model it writes itself) and prints
its table; the retrieval metrics it prints are checked against a naive loop. The ratios are read by people, never
asserted here."""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, cli_env

SCRIPT = ROOT / "benchmarks" / "vs_sentence_transformers.py"


def _module():
    spec = importlib.util.spec_from_file_location("vs_sentence_transformers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_retrieval_metrics_match_a_naive_loop(dtype):
    bench = _module()
    rng = np.random.default_rng(0)
    q = rng.normal(size=(30, 8)).astype(dtype)
    d = rng.normal(size=(50, 8)).astype(dtype)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    d[7] = d[3]  # a tie: the rank counts every document scoring at least as high
    relevant = rng.integers(0, 50, size=30)
    relevant[0] = 3
    got = bench.ir_metrics(q, d, relevant, k=10)
    r1 = mrr = ndcg = 0.0
    for i in range(30):
        s = [float(q[i] @ d[j]) for j in range(50)]
        rank = sum(1 for x in s if x >= s[relevant[i]])
        r1 += (rank == 1) / 30
        mrr += (1 / rank if rank <= 10 else 0.0) / 30
        ndcg += (1 / math.log2(rank + 1) if rank <= 10 else 0.0) / 30
    assert got == pytest.approx({"recall@1": r1, "mrr@10": mrr, "ndcg@10": ndcg}, abs=1e-12)


def test_the_toy_run_prints_both_rows(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--toy", "--threads", "1", "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=cli_env(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    steps = re.search(r"optimizer steps: sentence-transformers (\d+), contrastlab (\d+)", out)
    assert steps and steps.group(1) == steps.group(2) and int(steps.group(1)) > 0, out
    gap = float(re.search(r"max abs difference ([\d.e+-]+)", out).group(1))
    assert gap <= 1e-5  # the fine-tuning starts from exactly the sentence-transformers embedding
    number = r"\s+([\d.]+)"
    rows = {}
    for name in ("pretrained \\(no training\\)", "sentence-transformers fit", "contrastlab finetune_text"):
        m = re.search(rf"^{name}{number * 3}", out, re.M)
        assert m, out
        rows[name] = [float(x) for x in m.groups()]
        r1, mrr, ndcg = rows[name]  # one relevant document per query: 1[r=1] <= 1/r <= 1/log2(r+1) per query
        assert r1 <= mrr + 1e-4 <= ndcg + 2e-4 and ndcg > 0, (name, rows[name])
    assert re.search(r"^ratio contrastlab / ST(\s+[\d.]+){4}$", out, re.M), out
    # seeded, so deterministic: contrastlab's fine-tuning improves on the random start's recall@1
    assert rows["contrastlab finetune_text"][0] > rows["pretrained \\(no training\\)"][0]
