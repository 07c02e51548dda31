"""Multirun plumbing: a failing sweep job is recorded and the sweep goes on; the sweep ends with a table.

* :func:`record_failure` writes ``error.txt`` (the traceback) and ``metrics.json``
  (``{"status": "failed", "error": ...}``) into the job's directory;
* :func:`optimized_value` is what a job returns to the sweeper (``optimized_metric``), ``None``
  when missing, which Optuna records as a failed trial;
* :class:`SweepCallback` (registered in ``conf/hydra/default.yaml``) makes ``${hydra:...}`` usable
  in ``hydra.sweep.dir`` and sweeper settings, creates the directory of a SQLite Optuna storage,
  and prints every job's overrides, status and metrics when the sweep ends.
"""

from __future__ import annotations

import json
import logging
import math
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"


def in_multirun() -> bool:
    """True inside a Hydra multirun job (``-m``, ``hparams_search=...``, a launcher)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failure(run_dir: str | Path, err: BaseException, rank: int = 0) -> Path:
    """Write the error of a failed job into its directory; returns the ``error.txt`` path."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if rank == 0 else f"_rank{rank}"
    error_file = out / f"error{suffix}.txt"
    error_file.write_text("".join(traceback.format_exception(err)))
    if rank == 0:
        summary = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.error("job failed, the sweep goes on (%s): %s: %s", out, type(err).__name__, err)
    return error_file


def optimized_value(metrics: Mapping[str, Any], name: str | None) -> float | None:
    """``metrics[name]`` as a float for the sweeper; ``None`` when missing (with a warning in a sweep)."""
    if not name:
        return None
    value = metrics.get(name)
    if value is None or not math.isfinite(float(value)):
        if not in_multirun():
            return None
        log.warning(
            "optimized_metric=%s is not among the final metrics (%s); set optimized_metric to one of them.",
            name,
            ", ".join(sorted(metrics)),
        )
        return None
    return float(value)


class SweepCallback(Callback):
    """Hydra callback for multiruns (see the module docstring)."""

    def __init__(self, metric: str | None = None, print_table: bool = True) -> None:
        self.metric = metric
        self.print_table = print_table

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra resolves hydra.sweep.dir (and the sweeper's settings) before any job runs; let
        # ${hydra:runtime.choices...} (used by task_name) resolve against the sweep's own config.
        HydraConfig.instance().set_config(config)
        storage = config.hydra.sweeper.get("storage")
        if isinstance(storage, str) and storage.startswith("sqlite:///"):
            Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.print_table:
            return
        from contrastlab.tracking import leaderboard

        sweep_dir = Path(str(config.hydra.sweep.dir))
        metric = self.metric or config.get("optimized_metric") or leaderboard.DEFAULT_METRIC
        try:
            frame = leaderboard.load_runs([sweep_dir])
        except FileNotFoundError:
            return
        leaderboard.print_table(frame, metric=metric, title=f"sweep {sweep_dir}")
        failed = frame[frame["status"] == "failed"]
        for _, row in failed.iterrows():
            log.error("job %s failed: %s (see %s)", row["run"], row["error"], Path(row["path"]) / ERROR_FILE)
        log.info(
            "%d jobs: %d failed; compare them with `contrastlab-compare %s`",
            len(frame),
            len(failed),
            sweep_dir,
        )
