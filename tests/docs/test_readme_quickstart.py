"""The README's first command, exactly: ``make train`` trains the default SimCLR run on digits and prints
``val/knn_top1`` (at least 0.96, the README's promise) next to ``val/knn_top1_init``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import ROOT, make_train


def test_make_train_reaches_the_promised_knn(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    promise = re.search(r"make train +# .*prints val/knn_top1 \(≥ ([\d.]+)\)", readme)
    assert promise, "the README's quick start no longer states the kNN make train reaches"
    proc = make_train(tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (run_dir,) = (tmp_path / "outputs" / "simclr" / "runs").iterdir()  # CONTRASTLAB_OUTPUTS moves the root
    metrics = json.loads((run_dir / "metrics.json").read_text())
    printed = proc.stdout + proc.stderr
    assert re.search(r"val/knn_top1\s.*\d", printed) and re.search(r"val/knn_top1_init\s.*\d", printed)
    assert metrics["val/knn_top1"] >= float(promise.group(1)) > metrics["val/knn_top1_init"]
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "wandb").glob("offline-run-*")), "the default logger (W&B) did not log offline"
