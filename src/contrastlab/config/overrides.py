"""Command-line overrides: read with Hydra's own parser, and which keys are not experiment settings.

``loss.temperature=0.1``, ``+callbacks.x={a:1}``, ``~tags``, ``optimizer.lr=1e-3``: Hydra's
:class:`~hydra.core.override_parser.overrides_parser.OverridesParser` gives each one's key and its typed
value exactly as Hydra applies it (``1e-3`` is the float 0.001, ``'1e-3'`` the string, ``true`` a bool).
Run names, the leaderboard, the resume key and the launcher ranks all read overrides through here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override

#: top-level config keys (and config groups) that say where or how a run is logged, resumed, swept or
#: shown, not what it trains: left out of run names, leaderboard columns and the resume key
NON_EXPERIMENT_KEYS: tuple[str, ...] = (
    "hydra",
    "paths",
    "output_dir",  # the output folder of contrastlab-eval, -embed and -export
    "print_config",
    "ckpt_path",
    "resume",
    "trust_checkpoint",
    "logger",
    "callbacks",
    "tags",
    "task_name",
    "hparams_search",
    "optimized_metric",
)


def is_experiment_key(key: str, non_experiment: Iterable[str] = NON_EXPERIMENT_KEYS) -> bool:
    """False for a key equal to, or under, one of ``non_experiment`` (``hydra.run.dir``, ``hydra/launcher``)."""
    return not any(key == ex or key.startswith((ex + ".", ex + "/")) for ex in non_experiment)


def parse_overrides(lines: Iterable[str]) -> list[Override]:
    """Hydra's parse of ``lines`` (raises Hydra's ``OverrideParseException`` for one it rejects)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(lines))


def override_key(override: Override) -> str:
    """``+loss.temperature=0.1`` -> ``loss.temperature``; ``~tags`` -> ``tags``; ``db@pkg=x`` -> ``db@pkg``."""
    return override.key_or_group + (f"@{override.package}" if override.package else "")


def override_value(override: Override) -> Any:
    """The value an override sets: a scalar as Hydra types it (int, float, bool, str, None); a list or
    dict as its text (``[a,b]``); ``None`` for a deletion (``~key``) or a sweep (not one value)."""
    if override.is_delete() or override.is_sweep_override():
        return None
    value = override.value()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return override.get_value_element_as_str()


def given_keys(args: Iterable[str]) -> set[str]:
    """The keys that the overrides among command-line ``args`` set; flags (``-m``, ``--config-name x``)
    and anything else Hydra would not take as an override are skipped (Hydra reports those itself)."""
    from hydra.errors import OverrideParseException

    keys = set()
    for arg in args:
        if arg.startswith("-"):
            continue
        try:
            (override,) = parse_overrides([arg])
        except OverrideParseException:
            continue
        keys.add(override_key(override))
    return keys
