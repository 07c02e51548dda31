"""Start-up validation: incompatible choices fail before any data is loaded or process spawned,
with one sentence that names the override to change."""

from __future__ import annotations

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
