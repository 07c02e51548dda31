"""Run-directory helpers: the resolved config as a rich tree, and ``metrics.json``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.tree import Tree

PRINT_ORDER = (
    "data",
    "augment",
    "encoder",
    "head",
    "objective",
    "loss",
    "sampler",
    "optimizer",
    "scheduler",
    "trainer",
)


def print_config(cfg: DictConfig, console: Console | None = None) -> None:
    """Print the resolved config as a tree: the main groups first, then everything else."""
    console = console or Console()
    tree = Tree("config", guide_style="dim")
    keys = [k for k in PRINT_ORDER if k in cfg] + [k for k in cfg if k not in PRINT_ORDER]
    for key in keys:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(f"[bold]{key}[/bold]").add(Syntax(text, "yaml", background_color="default"))
    console.print(tree)


def to_number(value: Any) -> float | int | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


def write_metrics(path: str | Path, metrics: Mapping[str, Any]) -> dict[str, float | int]:
    """Write the scalar metrics as sorted JSON; returns what was written."""
    clean = {k: v for k, v in ((k, to_number(v)) for k, v in metrics.items()) if v is not None}
    out = dict(sorted(clean.items()))
    Path(path).write_text(json.dumps(out, indent=2) + "\n")
    return out


def print_metrics(
    metrics: Mapping[str, float | int], title: str = "final metrics", console: Console | None = None
) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    (console or Console()).print(table)
