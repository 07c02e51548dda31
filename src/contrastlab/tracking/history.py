"""Every run's own metric history, ``<run_dir>/history.jsonl``: the file format (no Lightning import here).

One JSON object per line, one line per logging call: ``{"step": <global step>, "<metric>": <value>, ...}``
(finite numbers only). :class:`contrastlab.tracking.loggers.HistoryLogger`, which every training run has
whatever ``logger=`` says, appends the lines on rank 0 and flushes each one, so a killed run keeps what
it logged; a run continued in the same directory first drops the rows at and after the step it restarts
from. :func:`read_history` is what ``contrastlab-compare`` plots as training curves; W&B's files are never
read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

HISTORY_FILE = "history.jsonl"


def _number(value: Any) -> float | int | None:
    """A logged value as a JSON number: a Python or 0-d tensor/array number; ``None`` for NaN/inf or other."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def history_row(metrics: Mapping[str, Any], step: int | None = None) -> dict[str, Any]:
    """``{"step": step, **metrics}`` with only the finite numbers; ``{}`` when there are none."""
    values = {k: v for k, v in ((k, _number(v)) for k, v in metrics.items() if k != "step") if v is not None}
    if not values:
        return {}
    return values if step is None else {"step": int(step), **values}


def append_row(path: str | Path, row: Mapping[str, Any]) -> None:
    with Path(path).open("a") as f:
        f.write(json.dumps(row) + "\n")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a history file; a line cut short (a killed run) is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def drop_from(path: str | Path, step: int) -> None:
    """Keep only the rows logged before ``step`` (a run continued in the same directory re-logs from there)."""
    p = Path(path)
    if p.is_file():
        kept = [r for r in read_rows(p) if not isinstance(r.get("step"), int) or r["step"] < step]
        p.write_text("".join(json.dumps(r) + "\n" for r in kept))


def read_history(run_dir: str | Path) -> pd.DataFrame | None:
    """``<run_dir>/history.jsonl`` as a DataFrame (one row per logging call, a ``step`` column), or ``None``."""
    path = Path(run_dir) / HISTORY_FILE
    rows = read_rows(path) if path.is_file() else []
    return pd.DataFrame(rows) if rows else None
