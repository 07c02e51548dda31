"""``contrastlab-compare``: a leaderboard of runs, from run directories or from W&B.

    contrastlab-compare                                   # the latest sweep under outputs/
    contrastlab-compare outputs/simclr/multiruns/2024-05-01_10-00-00 outputs/simclr/runs/2024-05-02_09-00-00
    contrastlab-compare --metric train/loss               # sorted ascending (a loss)
    contrastlab-compare --wandb my-team/contrastlab --group 2024-05-01_10-00-00

The table is printed, written as ``compare.csv`` and ``compare.md`` and plotted in ``compare.png`` (the
metric against each swept parameter, and the training curves); see :mod:`contrastlab.tracking.leaderboard`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console

from contrastlab.tracking.leaderboard import (
    DEFAULT_METRIC,
    latest_sweep,
    load_runs,
    load_wandb_runs,
    make_console,
    plot_runs,
    print_table,
    write_table,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="contrastlab-compare", description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="*", help="sweep or run directories (default: the latest sweep under outputs/)")
    p.add_argument("--metric", default=DEFAULT_METRIC, help=f"sort by this metric (default {DEFAULT_METRIC})")
    p.add_argument("--metrics", default="", help="extra metric columns, comma-separated")
    order = p.add_mutually_exclusive_group()
    order.add_argument("--ascending", dest="ascending", action="store_true", default=None)
    order.add_argument("--descending", dest="ascending", action="store_false")
    p.add_argument("--out", default=None, help="where compare.csv/.md/.png go (default: the first directory)")
    p.add_argument(
        "--outputs",
        default=None,
        help="outputs root for the default (default $CONTRASTLAB_OUTPUTS or outputs)",
    )
    p.add_argument("--no-plot", action="store_true", help="skip compare.png")
    p.add_argument("--wandb", default=None, metavar="ENTITY/PROJECT", help="read runs from W&B instead (online)")
    p.add_argument("--group", default=None, help="with --wandb: the W&B group (a sweep's directory name)")
    return p.parse_args(argv)


def compare(argv: Sequence[str] | None = None, console: Console | None = None) -> pd.DataFrame:
    """Run the command line (``argv`` as for ``contrastlab-compare``); returns the printed table."""
    args = parse_args(argv)
    console = console or make_console()
    if args.wandb:
        df = load_wandb_runs(args.wandb, args.group)
        out_dir = Path(
            args.out
            or Path(args.outputs or os.environ.get("CONTRASTLAB_OUTPUTS", "outputs"))
            / "compare"
            / (args.group or args.wandb.replace("/", "_"))
        )
        source = f"W&B {args.wandb}" + (f" group {args.group}" if args.group else "")
    else:
        paths = [Path(p) for p in args.paths] or [latest_sweep(args.outputs)]
        df = load_runs(paths)
        out_dir = Path(args.out or paths[0])
        source = ", ".join(map(str, paths))
    if df.empty:
        raise SystemExit(f"no runs found in {source}.")
    extra = [m for m in args.metrics.split(",") if m]
    table_df = print_table(
        df, args.metric, extra, args.ascending, title=f"{len(df)} runs from {source}", console=console
    )
    csv_path, md_path = write_table(table_df, out_dir)
    written = [csv_path, md_path]
    if not args.no_plot:
        written.append(plot_runs(df, args.metric, out_dir / "compare.png"))
    console.print("wrote " + ", ".join(map(str, written)))
    return table_df


def main(argv: Sequence[str] | None = None) -> None:
    compare(argv)


if __name__ == "__main__":
    main()
