"""Start-up checks of single values and of files, devices and batch splits (part of
:func:`contrastlab.config.checks.check_config`): each failure is one :class:`ConfigError` sentence
naming the key, what it accepts and an example. No torch or Lightning import: these run in
milliseconds, before anything heavy loads.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from contrastlab.errors import ConfigError

# key, type, accepted (predicate, words), example
NumberRule = tuple[str, type, Callable[[Any], bool], str, str]
NUMBER_RULES: tuple[NumberRule, ...] = (
    ("loss.temperature", float, lambda v: v > 0, "> 0", "0.1"),
    ("loss.margin", float, lambda v: v >= 0, ">= 0", "0.2"),
    ("optimizer.lr", float, lambda v: v > 0, "> 0", "1e-3"),
    ("optimizer.weight_decay", float, lambda v: v >= 0, ">= 0", "1e-4"),
    ("data.batch_size", int, lambda v: v >= 1, "a whole number >= 1", "256"),
    ("data.num_workers", int, lambda v: v >= 0, "a whole number >= 0", "4"),
    ("data.views", int, lambda v: v >= 1, "a whole number >= 1", "2"),
    ("data.batch_sampler.k", int, lambda v: v >= 1, "a whole number >= 1", "4"),
    ("sampler.size", int, lambda v: v >= 1, "a whole number >= 1", "4096"),
    ("trainer.max_epochs", int, lambda v: v >= 1 or v == -1, "a whole number >= 1 (or -1: no limit)", "30"),
    ("trainer.accumulate_grad_batches", int, lambda v: v >= 1, "a whole number >= 1", "1"),
    ("callbacks.nan_guard.max_consecutive", int, lambda v: v >= 1, "a whole number >= 1", "10"),
    ("callbacks.step_checkpoint.every_n_train_steps", int, lambda v: v >= 0, "a whole number >= 0", "500"),
    ("objective.grad_cache.micro_batch_size", int, lambda v: v >= 1, "a whole number >= 1", "32"),
)


def _as(kind: type, value: Any) -> Any:
    """``value`` as ``kind`` (int or float), or raise ValueError; bools and fractional ints refused."""
    if isinstance(value, bool):
        raise ValueError(value)
    number = float(value)
    if kind is int:
        if number != int(number):
            raise ValueError(value)
        return int(number)
    return number


def missing_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys whose value is ``???``, found without resolving any interpolation (unlike
    ``OmegaConf.missing_keys``: ``${hydra:...}`` or keys of another data group may not resolve yet)."""
    out: list[str] = []
    for key in node.keys():  # noqa: SIM118 (a DictConfig: keys() does not resolve values)
        full = f"{prefix}{key}"
        if full == "hydra":
            continue
        if OmegaConf.is_missing(node, key):
            out.append(full)
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_interpolation():
            out += missing_keys(child, f"{full}.")
    return out


def _select(cfg: DictConfig, key: str) -> Any:
    """``cfg``'s value at ``key`` (None when absent, missing or not resolvable here)."""
    try:
        return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    except Exception:  # an interpolation into a group this run does not have: not ours to report
        return None


def check_values(cfg: DictConfig) -> None:
    """Required keys (``???``) are set, and the numbers in :data:`NUMBER_RULES` are numbers in range."""
    missing = missing_keys(cfg)
    if missing:
        key = missing[0]
        raise ConfigError(f"{key} is required (it has no default); set {key}=<value>.")
    for key, kind, ok, accepted, example in NUMBER_RULES:
        value = _select(cfg, key)
        if value is None or isinstance(value, DictConfig):
            continue
        try:
            number = _as(kind, value)
        except (TypeError, ValueError):
            number = None
        if number is None or not ok(number):
            raise ConfigError(f"{key} must be {accepted}, got {value!r}; set e.g. {key}={example}.")


def check_distributed(cfg: DictConfig) -> None:
    """Cross-rank negatives need every rank to hold a batch of the same size: under DDP (more than one
    process), ``sampler.gather_across_ranks=true`` needs ``data.drop_last=true``."""
    data, sampler = cfg.get("data") or {}, cfg.get("sampler") or {}
    world = world_size(cfg.get("trainer") or {})
    if world > 1 and bool(sampler.get("gather_across_ranks", False)) and not bool(data.get("drop_last", True)):
        raise ConfigError(
            f"data.drop_last=false with sampler.gather_across_ranks=true on {world} processes: the last batch "
            "of an epoch differs in size across ranks and the gather fails; set data.drop_last=true "
            "(or sampler.gather_across_ranks=false)."
        )


def check_grad_cache(cfg: DictConfig) -> None:
    """GradCache splits each batch into micro-batches: ``objective.grad_cache.micro_batch_size`` must
    divide ``data.batch_size``."""
    grad_cache = (cfg.get("objective") or {}).get("grad_cache")
    if not isinstance(grad_cache, DictConfig) or grad_cache.get("enabled", True) is False:
        return
    micro = grad_cache.get("micro_batch_size")
    batch = (cfg.get("data") or {}).get("batch_size")
    if micro is None or batch is None:
        return
    micro, batch = int(micro), int(batch)
    if batch % micro:
        fit = max(d for d in range(1, micro + 1) if batch % d == 0)
        raise ConfigError(
            f"objective.grad_cache.micro_batch_size={micro} does not divide data.batch_size={batch}; "
            f"set it to a divisor of {batch} (e.g. {fit})."
        )


def _table_columns(path: Path, fmt: str | None) -> list[str]:
    """The column names of a CSV / TSV (header row) or JSONL (keys of the first row) table."""
    fmt = fmt or {".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}.get(path.suffix.lower(), "csv")
    with path.open(newline="", encoding="utf-8") as f:
        if fmt == "jsonl":
            first = next((ln for ln in f if ln.strip()), "")
            try:
                row = json.loads(first) if first else {}
            except json.JSONDecodeError as err:
                raise ConfigError(f"data.path={path}: the first line is not JSON ({err}); pass a JSONL table.") from err
            return list(row) if isinstance(row, dict) else []
        return next(csv.reader(f, delimiter="\t" if fmt == "tsv" else ","), [])


def check_tables(cfg: DictConfig) -> None:
    """Datasets listed in a table (``data.path``, ``data.val_path``): the files exist, and an
    image-caption table has the columns named by ``data.filepath_key`` / ``caption_key`` / ``label_key``."""
    data = cfg.get("data") or {}
    for key in ("path", "val_path"):
        value = data.get(key) if key in data else None
        if value in (None, ""):
            continue
        path = Path(str(value)).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"data.{key}={value} does not exist; set data.{key} to your table "
                f"({'image paths and captions' if 'caption_key' in data else 'of rows'}, CSV / TSV / JSONL)."
            )
        if "filepath_key" not in data or "caption_key" not in data:
            continue
        columns = _table_columns(path, data.get("format"))
        for col_key in ("filepath_key", "caption_key", "label_key"):
            col = data.get(col_key)
            if col is not None and str(col) not in columns:
                raise ConfigError(
                    f"data.{key}={value} has no column '{col}' (columns: {', '.join(columns) or 'none'}); "
                    f"set data.{col_key} to one of them."
                )


def world_size(trainer: Any) -> int:
    """Processes a trainer config asks for: ``devices`` (a count or a list) x ``num_nodes``."""
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    n = len(devices) if isinstance(devices, list | tuple) else devices if isinstance(devices, int) else 1
    return max(1, n) * max(1, int(nodes or 1))
