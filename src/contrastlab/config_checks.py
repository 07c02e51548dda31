"""Start-up validation: incompatible choices fail before any data is loaded or process spawned,
with one sentence that names the override to change."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


class ConfigError(ValueError):
    """An invalid or incompatible configuration; the message names the key to change."""


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first problem found."""
    loss = cfg.get("loss") or {}
    if "temperature" in loss and loss.temperature is not None and float(loss.temperature) <= 0:
        raise ConfigError(f"loss.temperature must be > 0, got {loss.temperature}; set e.g. loss.temperature=0.1.")
    data = cfg.get("data") or {}
    if int(data.get("batch_size", 2)) < 2:
        raise ConfigError(
            f"data.batch_size={data.batch_size} leaves no in-batch negatives; set data.batch_size to at least 2."
        )
    check_data_dir(data)


def check_data_dir(data: DictConfig | dict) -> None:
    """A dataset read from ``data.data_dir`` (set, not null) without ``data.download=true`` needs that
    folder to exist and not be empty. (Datasets that read no files keep ``data_dir: null``.)"""
    data_dir = data.get("data_dir")
    if data_dir is None or bool(data.get("download", False)):
        return
    root = Path(str(data_dir)).expanduser()
    can_download = "download" in data
    fetch = ", or set data.download=true to fetch the dataset" if can_download else ""
    if not root.is_dir():
        why = " and data.download=false" if can_download else ""
        raise ConfigError(
            f"data.data_dir={root} does not exist{why}; set data.data_dir to the dataset's folder{fetch}."
        )
    if next(root.iterdir(), None) is None:
        raise ConfigError(
            f"data.data_dir={root} is an empty folder; set data.data_dir to the dataset's folder{fetch}."
        )
