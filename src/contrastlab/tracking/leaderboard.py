"""The local leaderboard of runs: read run directories (or W&B runs) into one table, print, write, plot.

Each run contributes its overrides (``.hydra/overrides.yaml``, read with Hydra's own parser, so
``optimizer.lr=1e-3`` is the float 0.001), its final metrics (``metrics.json``, ``{"status": "failed", ...}``
for a failed sweep job) and its training curves when present (the run's own ``history.jsonl``, else the CSV
logger's ``csv/metrics.csv``). The table shows the overrides that differ between runs, the key metrics and
the wall time, sorted by a metric;
``contrastlab-compare`` (:mod:`contrastlab.cli.compare`) prints it, writes ``compare.csv`` and
``compare.md``, and plots ``compare.png``. In a notebook::

    from contrastlab.tracking.leaderboard import load_runs, summary_table
    df = load_runs(["outputs/simclr/multiruns/2024-05-01_10-00-00"])   # one row per run
    summary_table(df, metric="val/knn_top1")
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

from contrastlab.config.overrides import is_experiment_key, override_key, override_value
from contrastlab.config.overrides import parse_overrides as hydra_parse
from contrastlab.tracking.history import read_history

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_METRIC = "val/knn_top1"
KEY_METRICS = (
    "val/knn_top1",
    "val/knn_top5",
    "val/linear_top1",
    "train/loss",
    "trainer/epoch",
    "time/wall_s",
)
CSV_CURVES_FILE = "metrics.csv"  # the CSV logger's (logger=csv), for runs without history.jsonl
LOG_AXIS_SPAN = 100.0  # a positive numeric parameter whose max/min reaches this is plotted on a log axis


@dataclass
class RunRecord:
    """One run, from a run directory or from W&B: what was set, what came out."""

    run: str
    path: str
    overrides: dict[str, Any]
    metrics: dict[str, float]
    status: str = "completed"  # completed | failed | incomplete (no metrics.json) | a W&B state
    error: str | None = None
    history: pd.DataFrame | None = field(default=None, repr=False)


# ----------------------------------------------------------------------------- reading runs


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["loss.temperature=0.1", "sampler=x", "optimizer.lr=1e-3"]`` ->
    ``{"loss.temperature": 0.1, "sampler": "x", "optimizer.lr": 0.001}``: values typed as Hydra types them
    (:func:`contrastlab.config.overrides.override_value`); deletions and non-experiment keys
    (:data:`~contrastlab.config.overrides.NON_EXPERIMENT_KEYS`) left out."""
    return {
        override_key(ov): override_value(ov)
        for ov in hydra_parse(overrides)
        if not ov.is_delete() and is_experiment_key(override_key(ov))
    }


def is_run_dir(path: Path) -> bool:
    return (path / ".hydra" / "overrides.yaml").is_file() or (path / "metrics.json").is_file()


def _natural_key(path: Path) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)


def find_run_dirs(path: str | Path) -> list[Path]:
    """``path`` itself if it is a run directory, else every run directory below it (a sweep)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; pass a sweep or run directory.")
    if is_run_dir(root):
        return [root]
    found = {p.parent.parent for p in root.rglob("overrides.yaml") if p.parent.name == ".hydra"}
    found |= {p.parent for p in root.rglob("metrics.json") if "wandb" not in p.parts}
    # a run directory's own sub-folders (an evaluation's metrics.json, ...) are part of that run
    runs = sorted((d for d in found if is_run_dir(d) and not found & set(d.parents)), key=_natural_key)
    if not runs:
        raise FileNotFoundError(f"no run directories (with .hydra/overrides.yaml or metrics.json) under {root}.")
    return runs


def read_curves(run_dir: Path) -> pd.DataFrame | None:
    """A run's training curves (one row per logging call, a ``step`` column): its ``history.jsonl``
    (:mod:`contrastlab.tracking.history`, every training run writes one), else the CSV logger's
    ``metrics.csv`` (a run from before ``history.jsonl``)."""
    history = read_history(run_dir)
    if history is not None:
        return history
    files = sorted(p for p in run_dir.rglob(CSV_CURVES_FILE) if not {"wandb", ".hydra"} & set(p.parts))
    if files:
        try:
            return pd.read_csv(files[0])
        except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError):
            return None
    return None


def read_run_dir(run_dir: str | Path, label: str | None = None) -> RunRecord:
    d = Path(run_dir)
    ov_file = d / ".hydra" / "overrides.yaml"
    overrides = parse_overrides(yaml.safe_load(ov_file.read_text()) or []) if ov_file.is_file() else {}
    metrics_file = d / "metrics.json"
    metrics: dict[str, float] = {}
    status, error = "incomplete", None
    if metrics_file.is_file():
        raw = json.loads(metrics_file.read_text())
        status = str(raw.pop("status", "completed"))
        error = raw.pop("error", None)
        metrics = {k: float(v) for k, v in raw.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return RunRecord(label or d.name, str(d), overrides, metrics, status, error, read_curves(d))


def sweep_started(sweep: Path) -> float:
    """When a sweep started: its ``<date>_<time>`` name, else when its first job saved its overrides."""
    try:
        return datetime.strptime(sweep.name, "%Y-%m-%d_%H-%M-%S").timestamp()
    except ValueError:
        stamps = [p.stat().st_mtime for p in sweep.glob("*/.hydra/overrides.yaml")]
        return min(stamps) if stamps else sweep.stat().st_mtime


def latest_sweep(root: str | Path | None = None) -> Path:
    """The newest ``<root>/<task>/multiruns/<sweep>``; root: ``$CONTRASTLAB_OUTPUTS`` or ``outputs``."""
    base = Path(root or os.environ.get("CONTRASTLAB_OUTPUTS", "outputs"))
    sweeps = [p for p in base.glob("*/multiruns/*") if p.is_dir()]
    if not sweeps:
        raise FileNotFoundError(f"no sweep under {base}/<task>/multiruns/; pass a sweep or run directory.")
    return max(sweeps, key=sweep_started)


def _labels(run_dirs: Sequence[Path]) -> list[str]:
    """Short unique labels: the job number / directory name, prefixed by the sweep's name if needed."""
    names = [d.name for d in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{d.parent.name}/{d.name}" for d in run_dirs]


def records_from_dirs(paths: Iterable[str | Path]) -> list[RunRecord]:
    run_dirs = [d for p in paths for d in find_run_dirs(p)]
    return [read_run_dir(d, label) for d, label in zip(run_dirs, _labels(run_dirs), strict=True)]


def frame_from_records(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per run: ``run``, ``status``, the override keys, the metric names, ``error``, ``path``.

    ``df.attrs["overrides"]`` and ``df.attrs["metrics"]`` list which columns are which; the curves
    are in ``df.attrs["curves"]`` (run -> DataFrame).
    """
    ov_cols = list(dict.fromkeys(k for r in records for k in r.overrides))
    metric_cols = sorted({k for r in records for k in r.metrics})
    rows = [
        {"run": r.run, "status": r.status, **r.overrides, **r.metrics, "error": r.error, "path": r.path}
        for r in records
    ]
    df = pd.DataFrame(rows, columns=["run", "status", *ov_cols, *metric_cols, "error", "path"])
    df.attrs["overrides"] = ov_cols
    df.attrs["metrics"] = metric_cols
    df.attrs["curves"] = {r.run: r.history for r in records if r.history is not None}
    return df


def load_runs(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Runs from sweep or run directories as a DataFrame (see :func:`frame_from_records`)."""
    return frame_from_records(records_from_dirs(paths))


# ----------------------------------------------------------------------------- W&B (thin)


def record_from_wandb_run(run: Any) -> RunRecord:
    """A :class:`RunRecord` from a ``wandb.apis.public.Run`` (``name``, ``config``, ``summary``, ``state``).

    ``config["overrides"]`` holds the override list (put there by :class:`contrastlab.tracking.loggers.WandbRunLogger`).
    """
    config = dict(run.config)
    summary = dict(run.summary)
    metrics = {
        k: float(v)
        for k, v in summary.items()
        if not k.startswith("_") and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    state = str(run.state)
    status = {"finished": "completed", "crashed": "failed"}.get(state, state)
    return RunRecord(
        str(run.name),
        str(getattr(run, "url", run.name)),
        parse_overrides(config.get("overrides") or []),
        metrics,
        status,
    )


def fetch_wandb_runs(project_path: str, group: str | None = None) -> list[Any]:  # pragma: no cover - network
    """The runs of ``ENTITY/PROJECT`` (in ``group``) from W&B's public API (needs credentials and network)."""
    import wandb

    return list(wandb.Api().runs(project_path, filters={"group": group} if group else {}))


def load_wandb_runs(project_path: str, group: str | None = None) -> pd.DataFrame:  # pragma: no cover - network
    return frame_from_records([record_from_wandb_run(r) for r in fetch_wandb_runs(project_path, group)])


# ----------------------------------------------------------------------------- the table


def varying_overrides(df: pd.DataFrame) -> list[str]:
    """Override columns whose value differs between runs (all of them for a single run)."""
    cols = df.attrs.get("overrides", [])
    if len(df) <= 1:
        return list(cols)
    return [c for c in cols if df[c].astype(str).nunique(dropna=False) > 1]


def summary_table(
    df: pd.DataFrame, metric: str = DEFAULT_METRIC, metrics: Sequence[str] = (), ascending: bool | None = None
) -> pd.DataFrame:
    """The leaderboard: run, status, differing overrides, ``metric`` and key metrics, sorted by ``metric``.

    ``ascending`` defaults to True for a loss (``"loss"`` in the name), else False; runs without the
    metric (failed, incomplete) come last.
    """
    if ascending is None:
        ascending = "loss" in metric
    present = [m for m in dict.fromkeys([metric, *metrics, *KEY_METRICS]) if m in df.columns]
    cols = ["run", "status", *varying_overrides(df), *present]
    if df["error"].notna().any():
        cols.append("error")
    out = df[cols].copy()
    if metric in out.columns:
        out = out.sort_values(metric, ascending=ascending, na_position="last", kind="stable")
    out.attrs = {}
    return out.reset_index(drop=True)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e9:
            return str(int(value))
        return f"{value:.4f}" if 0.01 <= abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def make_console() -> Console:
    """A rich console; wide when writing to a file or pipe (a sweep's log), so tables keep their columns."""
    return Console(width=None if sys.stdout.isatty() else 160)


def print_table(
    df: pd.DataFrame,
    metric: str = DEFAULT_METRIC,
    metrics: Sequence[str] = (),
    ascending: bool | None = None,
    title: str | None = None,
    console: Console | None = None,
) -> pd.DataFrame:
    """Print :func:`summary_table` with rich (failed runs in red, their errors below); returns it."""
    table_df = summary_table(df, metric, metrics, ascending)
    shown = [c for c in table_df.columns if c != "error"]
    table = Table(title=title or f"runs sorted by {metric}")
    for col in shown:
        numeric = pd.api.types.is_numeric_dtype(table_df[col])
        table.add_column(col, justify="right" if numeric else "left", no_wrap=numeric or col in ("run", "status"))
    for _, row in table_df.iterrows():
        style = "red" if row["status"] == "failed" else None
        table.add_row(*(_fmt(row[c]) for c in shown), style=style)
    console = console or make_console()
    console.print(table)
    if "error" in table_df.columns:
        for _, row in table_df[table_df["error"].notna()].iterrows():
            console.print(f"[red]run {row['run']} failed:[/red] {row['error']}", highlight=False)
    return table_df


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    cells = [[_fmt(v).replace("|", "\\|").replace("\n", " ") for v in row] for row in df.itertuples(index=False)]
    header = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else "---" for c in df.columns) + "|"
    return "\n".join([header, rule, *("| " + " | ".join(r) + " |" for r in cells)]) + "\n"


def write_table(table_df: pd.DataFrame, out_dir: str | Path, stem: str = "compare") -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
    table_df.to_csv(csv_path, index=False)
    md_path.write_text(to_markdown(table_df))
    return csv_path, md_path


def is_numeric_param(values: pd.Series) -> bool:
    """A swept parameter plotted on a numeric axis: numbers (not booleans) in every run that set it."""
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def wants_log_axis(values: pd.Series) -> bool:
    """Numbers spanning at least two decades (all positive, max/min >= :data:`LOG_AXIS_SPAN`): a log axis."""
    x = values.dropna()
    return bool(len(x) > 1 and (x > 0).all() and x.max() / x.min() >= LOG_AXIS_SPAN)


def runs_figure(df: pd.DataFrame, metric: str) -> Figure:
    """A matplotlib Figure: ``metric`` against each swept parameter (numeric parameters on a numeric axis,
    logarithmic when :func:`wants_log_axis`; others as categories), then the training curves if any."""
    from matplotlib.figure import Figure  # no pyplot: no backend switch, nothing to close

    params = varying_overrides(df) if len(df) > 1 else []
    curves = {k: v for k, v in df.attrs.get("curves", {}).items() if k in set(df["run"])}
    curve_metrics = [m for m in ("train/loss", metric) if any(m in c.columns for c in curves.values())]
    n = max(len(params), 1) + len(curve_metrics)
    fig = Figure(figsize=(4.2 * n, 3.4))
    axes = list(fig.subplots(1, n, squeeze=False)[0])
    has_metric = metric in df.columns
    if params:
        for ax, param in zip(axes, params, strict=False):
            sub = df[["run", param, metric]] if has_metric else df[["run", param]].assign(**{metric: math.nan})
            if is_numeric_param(sub[param]):
                sub = sub.dropna(subset=[param]).sort_values(param)
                ax.plot(sub[param].astype(float), sub[metric], "o-")
                if wants_log_axis(sub[param]):
                    ax.set_xscale("log")
            else:
                ax.plot(sub[param].astype(str), sub[metric], "o")
            ax.set_xlabel(param)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
    else:
        ax = axes[0]
        ax.bar(df["run"].astype(str), df[metric] if has_metric else [0.0] * len(df))
        ax.set_xlabel("run")
        ax.set_ylabel(metric)
    for ax, m in zip(axes[max(len(params), 1) :], curve_metrics, strict=True):
        for run, curve in curves.items():
            if m not in curve.columns:
                continue
            points = curve[["step", m]].dropna() if "step" in curve.columns else curve[[m]].dropna().reset_index()
            ax.plot(points.iloc[:, 0], points[m], marker=".", label=str(run))
        ax.set_xlabel("step")
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
        if len(curves) <= 12:
            ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_runs(df: pd.DataFrame, metric: str, out_path: str | Path) -> Path:
    """PNG of :func:`runs_figure`: ``metric`` against each swept parameter, then the training curves."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs_figure(df, metric).savefig(out, dpi=110)
    return out
