"""contrastlab-compare on run directories written like the real ones (no training here: see test_sweep.py)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from rich.console import Console

from contrastlab.cli import compare as cli_compare
from contrastlab.tracking import leaderboard


def make_run(
    d: Path,
    overrides: list[str],
    metrics: dict | None,
    curves: list[dict] | None = None,
    failed: str | None = None,
) -> Path:
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if failed is not None:
        (d / "metrics.json").write_text(json.dumps({"status": "failed", "error": failed}))
    elif metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    if curves is not None:
        (d / "csv").mkdir()
        pd.DataFrame(curves).to_csv(d / "csv" / "metrics.csv", index=False)
    return d


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A 2x2 grid (temperature x sampler) with one failed and one unfinished job, like a real multirun."""
    root = tmp_path / "outputs" / "simclr" / "multiruns" / "2024-05-01_10-00-00"
    common = ["debug=fast", "print_config=false", "hydra.verbose=false"]
    make_run(
        root / "0",
        ["loss.temperature=0.1", "sampler=in_batch", *common],
        {"val/knn_top1": 0.80, "train/loss": 3.1, "time/wall_s": 12.5, "trainer/epoch": 1},
        curves=[{"step": 0, "train/loss": 4.0}, {"step": 1, "train/loss": 3.5, "val/knn_top1": 0.8}],
    )
    make_run(
        root / "1",
        ["loss.temperature=0.5", "sampler=in_batch", *common],
        {"val/knn_top1": 0.85, "train/loss": 2.9, "time/wall_s": 11.0, "trainer/epoch": 1},
    )
    make_run(root / "2", ["loss.temperature=-1", "sampler=memory_bank", *common], None, failed="ConfigError: bad")
    make_run(root / "10", ["loss.temperature=0.5", "sampler=memory_bank", *common], None)  # still running
    (root / "multirun.yaml").write_text("hydra: {}\n")
    (root / "0" / "checkpoints").mkdir()
    return root


def test_load_runs_reads_overrides_metrics_and_status(sweep: Path) -> None:
    df = leaderboard.load_runs([sweep])
    assert list(df["run"]) == ["0", "1", "2", "10"]  # job numbers in numeric order
    assert df.attrs["overrides"] == [
        "loss.temperature",
        "sampler",
        "debug",
    ]  # hydra.* and print_config dropped
    assert df["loss.temperature"].tolist() == [0.1, 0.5, -1, 0.5]
    assert df["status"].tolist() == ["completed", "completed", "failed", "incomplete"]
    assert df.loc[2, "error"] == "ConfigError: bad"
    assert df.loc[1, "val/knn_top1"] == 0.85
    assert math.isnan(df.loc[2, "val/knn_top1"]) and math.isnan(df.loc[3, "time/wall_s"])
    assert set(df.attrs["curves"]) == {"0"}


def test_run_dir_and_nested_dirs(sweep: Path) -> None:
    assert leaderboard.find_run_dirs(sweep / "1") == [sweep / "1"]
    (sweep / "0" / "eval").mkdir()
    (sweep / "0" / "eval" / "metrics.json").write_text("{}")  # part of run 0, not a run of its own
    assert [d.name for d in leaderboard.find_run_dirs(sweep)] == ["0", "1", "2", "10"]
    with pytest.raises(FileNotFoundError, match="no run directories"):
        leaderboard.find_run_dirs(sweep / "0" / "checkpoints")


def test_summary_table_sorts_by_metric_and_keeps_differing_overrides(sweep: Path) -> None:
    df = leaderboard.load_runs([sweep])
    table = leaderboard.summary_table(df, metric="val/knn_top1")
    assert table["run"].tolist() == ["1", "0", "2", "10"]  # best first, runs without the metric last
    assert "debug" not in table.columns  # the same in every run
    assert {"loss.temperature", "sampler", "time/wall_s", "error"} <= set(table.columns)
    by_loss = leaderboard.summary_table(df, metric="train/loss")  # a loss: ascending
    assert by_loss["run"].tolist()[:2] == ["1", "0"]
    assert leaderboard.summary_table(df, metric="train/loss", ascending=False)["run"].tolist()[:2] == ["0", "1"]


def test_single_run_shows_all_its_overrides(sweep: Path) -> None:
    table = leaderboard.summary_table(leaderboard.load_runs([sweep / "0"]))
    assert {"loss.temperature", "sampler", "debug"} <= set(table.columns)


def test_print_table_and_files(sweep: Path, tmp_path: Path) -> None:
    df = leaderboard.load_runs([sweep])
    buf = io.StringIO()
    leaderboard.print_table(df, console=Console(file=buf, width=200))
    text = buf.getvalue()
    assert "0.8500" in text and "memory_bank" in text and "run 2 failed: ConfigError: bad" in text
    table = leaderboard.summary_table(df)
    csv_path, md_path = leaderboard.write_table(table, tmp_path / "out")
    assert pd.read_csv(csv_path)["run"].astype(str).tolist() == ["1", "0", "2", "10"]
    md = md_path.read_text().splitlines()
    assert md[0].startswith("| run | status |") and len(md) == 2 + len(df)
    png = leaderboard.plot_runs(df, "val/knn_top1", tmp_path / "out" / "leaderboard.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_defaults_to_latest_sweep(sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    older = tmp_path / "outputs" / "simclr" / "multiruns" / "2024-04-01_10-00-00"
    make_run(older / "0", ["loss.temperature=0.3"], {"val/knn_top1": 0.5})
    monkeypatch.setenv("CONTRASTLAB_OUTPUTS", str(tmp_path / "outputs"))
    assert leaderboard.latest_sweep() == sweep
    (older / "leaderboard.csv").write_text("")  # touching an older sweep does not make it the latest
    assert leaderboard.latest_sweep() == sweep
    buf = io.StringIO()
    table = cli_compare.compare(["--metrics", "trainer/epoch"], console=Console(file=buf, width=200))
    assert len(table) == 4 and table.loc[0, "run"] == "1"
    assert "4 runs from" in buf.getvalue()
    assert {p.name for p in sweep.iterdir()} >= {"compare.csv", "compare.md", "compare.png"}
    both = cli_compare.compare(
        [str(older), str(sweep / "1"), "--no-plot", "--out", str(tmp_path / "c")],
        console=Console(file=io.StringIO()),
    )
    assert both["run"].tolist() == ["1", "0"] and both.loc[0, "loss.temperature"] == 0.5


def test_wandb_runs_build_the_same_table() -> None:
    """The W&B path only fetches; turning API runs into rows is shared with the local path."""
    runs = [
        SimpleNamespace(
            name="temperature=0.1",
            state="finished",
            url="u1",
            config={"overrides": ["loss.temperature=0.1", "logger=wandb"], "seed": 1},
            summary={"val/knn_top1": 0.7, "_step": 3, "_wandb": {"runtime": 4}, "flag": True},
        ),
        SimpleNamespace(
            name="temperature=0.5",
            state="crashed",
            url="u2",
            config={"overrides": ["loss.temperature=0.5", "logger=wandb"]},
            summary={},
        ),
    ]
    df = leaderboard.frame_from_records([leaderboard.record_from_wandb_run(r) for r in runs])
    assert df["status"].tolist() == ["completed", "failed"]
    assert df.attrs["metrics"] == ["val/knn_top1"]
    table = leaderboard.summary_table(df)
    assert table["loss.temperature"].tolist() == [0.1, 0.5] and "logger" not in table.columns


def tick_labels(ax) -> list[str]:
    ax.figure.draw_without_rendering()
    return [t.get_text() for t in ax.get_xticklabels()]


def test_numeric_sweeps_plot_on_a_numeric_axis_log_when_spanning_decades(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    grid = [("1e-4", "in_batch"), ("1e-2", "memory_bank"), ("1e-3", "in_batch")]
    for job, (lr, sampler) in enumerate(grid):
        make_run(root / str(job), [f"optimizer.lr={lr}", f"sampler={sampler}"], {"val/knn_top1": 0.5 + job / 10})
    df = leaderboard.load_runs([root])
    # Hydra reads 1e-3 as a float (YAML would have kept the string "1e-3")
    assert pd.api.types.is_float_dtype(df["optimizer.lr"]) and df["optimizer.lr"].tolist() == [1e-4, 1e-2, 1e-3]
    fig = leaderboard.runs_figure(df, "val/knn_top1")
    lr_ax, sampler_ax = fig.axes
    assert lr_ax.get_xlabel() == "optimizer.lr" and lr_ax.get_xscale() == "log"
    (line,) = lr_ax.lines
    assert list(line.get_xdata()) == [1e-4, 1e-3, 1e-2] and list(line.get_ydata()) == [0.5, 0.7, 0.6]  # sorted
    # a categorical sweep stays categories: one tick per value, on a linear (category) axis
    assert sampler_ax.get_xlabel() == "sampler" and sampler_ax.get_xscale() == "linear"
    assert tick_labels(sampler_ax) == ["in_batch", "memory_bank"]
    table = cli_compare.compare([str(root), "--out", str(tmp_path / "c")], console=Console(file=io.StringIO()))
    assert pd.api.types.is_float_dtype(table["optimizer.lr"])
    assert pd.read_csv(tmp_path / "c" / "compare.csv")["optimizer.lr"].tolist() == [1e-3, 1e-2, 1e-4]  # best first
    assert (tmp_path / "c" / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_numeric_axis_stays_linear_below_two_decades_or_with_non_positive_values(sweep: Path) -> None:
    assert not leaderboard.wants_log_axis(pd.Series([1.0, 99.0]))
    assert leaderboard.wants_log_axis(pd.Series([1.0, 100.0, math.nan]))
    assert not leaderboard.wants_log_axis(pd.Series([-1.0, 1.0, 100.0]))
    assert not leaderboard.is_numeric_param(pd.Series([True, False]))  # booleans are categories
    df = leaderboard.load_runs([sweep])
    temperature_ax, sampler_ax = leaderboard.runs_figure(df, "val/knn_top1").axes[:2]
    assert temperature_ax.get_xscale() == "linear"  # -1, 0.1, 0.5: numeric, not log
    assert list(temperature_ax.lines[0].get_xdata()) == [-1, 0.1, 0.5, 0.5]
    assert tick_labels(sampler_ax) == ["in_batch", "memory_bank"]


def test_curves_come_from_the_runs_own_history(tmp_path: Path) -> None:
    run = make_run(
        tmp_path / "0", ["loss.temperature=0.1"], {"val/knn_top1": 0.8}, curves=[{"step": 0, "train/loss": 9.0}]
    )
    rows = [{"step": 0, "train/loss": 4.0}, {"step": 1, "train/loss": 3.0}, {"step": 1, "val/knn_top1": 0.8}]
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves = leaderboard.read_curves(run)  # history.jsonl first; the CSV logger's file only without it
    assert curves["step"].tolist() == [0, 1, 1] and curves["train/loss"].tolist()[:2] == [4.0, 3.0]
    (run / "history.jsonl").unlink()
    assert leaderboard.read_curves(run)["train/loss"].tolist() == [9.0]
    assert leaderboard.parse_overrides(["~tags", "callbacks=none", "trust_checkpoint=true", "seed=3"]) == {"seed": 3}
