"""Start-up checks of single values and of files, devices and batch splits (part of
:func:`contrastlab.config.checks.check_config`): each failure is one :class:`ConfigError` sentence
naming the key, what it accepts and an example. No torch or Lightning import: these run in
milliseconds, before anything heavy loads.

Every value of a run's config is held to two declarative rules:

* **range** (:data:`NUMBER_RULES`): a number's accepted values (a learning rate > 0, a probability in
  [0, 1], a size a whole number >= 1, ...), matched by the key's name; applied to every number in the config;
* **type** (:func:`check_types`): a value set on the command line has the kind of the value it replaces,
  the config group's default (a flag stays true/false, a choice stays text, a list stays a list), unless
  :data:`ALSO_ACCEPTS` says the key takes more (``trainer.devices=auto``, ``trainer.precision=16``).
  Keys whose default is null take anything; so do the few of :data:`ANY_VALUE`.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from contrastlab.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """The numbers a key accepts: ``lo <= v <= hi`` (``<`` where open; a missing bound is no limit),
    whole numbers only if ``whole``, plus the special values ``also`` (``-1``: no limit), or exactly
    ``choices``. ``example`` is a value to suggest (default: the config's own default, when valid)."""

    lo: float | None = None
    hi: float | None = None
    whole: bool = False
    lo_open: bool = False
    hi_open: bool = False
    also: tuple[int, ...] = ()
    note: str = ""  # what the special values in ``also`` mean
    choices: tuple[int, ...] = ()
    example: str | None = None

    def accepts(self, number: float) -> bool:
        if not math.isfinite(number):
            return False
        if self.choices:
            return number in self.choices
        if number in self.also:
            return True
        if self.whole and number != int(number):
            return False
        if self.lo is not None and (number <= self.lo if self.lo_open else number < self.lo):
            return False
        return self.hi is None or (number < self.hi if self.hi_open else number <= self.hi)

    def words(self) -> str:
        """``> 0``, ``in [0, 1]``, ``a whole number >= 1 (or -1: no limit)``, ..."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        lo, hi = _num_text(self.lo), _num_text(self.hi)
        if self.lo is not None and self.hi is not None:
            span = f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            span = f"{'>' if self.lo_open else '>='} {lo}"
        elif self.hi is not None:
            span = f"{'<' if self.hi_open else '<='} {hi}"
        else:
            span = ""
        text = f"a whole number {span}".strip() if self.whole else (span or "a finite number")
        if self.also:
            text += f" (or {', '.join(map(str, self.also))}: {self.note})"
        return text

    def sample(self) -> str:
        """A value this range accepts, for the message's "set e.g." when neither an example nor a valid
        default is known."""
        if self.choices:
            return str(self.choices[0])
        lo = self.lo if self.lo is not None else 0.0
        if self.hi is not None:
            value = (lo + self.hi) / 2 if not self.whole else math.ceil(lo + (1 if self.lo_open else 0))
        else:
            value = lo + 1 if self.lo_open else lo
        return _num_text(int(value) if self.whole else value)


def _num_text(value: float | None) -> str:
    return "" if value is None else str(int(value)) if float(value).is_integer() else repr(float(value))


POSITIVE = Range(lo=0, lo_open=True)
NON_NEGATIVE = Range(lo=0)
FRACTION = Range(lo=0, hi=1)
COUNT = Range(lo=1, whole=True)  # sizes, dimensions, counts
COUNT_OR_NONE = Range(lo=0, whole=True)  # counts where 0 means "none" / "off"
SEED = Range(lo=0, hi=2**32 - 1, whole=True)  # numpy's and Lightning's seed range

#: (key pattern, accepted numbers): ``fnmatch`` patterns on the full key, the FIRST match applies; exact
#: keys first (their meaning differs from what their name suggests), then patterns by name. A key with no
#: rule here has no range check (tests/config/test_config_walk.py requires one for every number in conf/).
NUMBER_RULES: tuple[tuple[str, Range], ...] = (
    # Lightning's and a few keys whose name says less than their meaning
    ("trainer.max_epochs", Range(lo=1, whole=True, also=(-1,), note="no limit", example="30")),
    ("trainer.max_steps", Range(lo=1, whole=True, also=(-1,), note="no limit", example="1000")),
    ("trainer.min_*", COUNT_OR_NONE),
    ("trainer.num_sanity_val_steps", Range(lo=0, whole=True, also=(-1,), note="all batches", example="0")),
    ("trainer.devices", Range(lo=1, whole=True, also=(-1,), note="every visible device", example="1")),
    ("trainer.precision", Range(choices=(16, 32, 64), example="32")),  # as a number; text: Lightning's names
    ("trainer.check_val_every_n_epoch", COUNT),
    ("trainer.log_every_n_steps", COUNT_OR_NONE),  # 0: no logging within epochs
    ("trainer.limit_*_batches", NON_NEGATIVE),  # a fraction of the batches or a whole number of them
    ("trainer.val_check_interval", POSITIVE),
    ("trainer.gradient_clip_val", NON_NEGATIVE),
    ("callbacks.*.save_top_k", Range(lo=-1, whole=True, example="1")),  # -1: keep every checkpoint
    ("sampler.num_negatives", COUNT),  # mined negatives per item (data.num_negatives=0: in-batch only)
    ("*.holdout_offset", Range(lo=0, hi=5, whole=True)),  # which shape-colour diagonal (0..5)
    ("*.val_fraction", Range(lo=0, hi=1, lo_open=True, hi_open=True, example="0.2")),
    ("*.dropout", Range(lo=0, hi=1, hi_open=True, example="0.1")),
    ("*.momentum", Range(lo=0, hi=1, hi_open=True, example="0.9")),  # SGD / LARS, momentum key encoder
    ("*.mlp_ratio", POSITIVE),
    ("*.rotation", Range(lo=0, hi=180)),  # degrees, +-
    ("*.init_bias", Range()),  # SigLIP's logit bias: any finite number
    ("*.max_logit_scale", POSITIVE),
    ("*.trust_coeff", POSITIVE),
    ("*.init_timeout", POSITIVE),  # seconds
    ("*.collapse_threshold", NON_NEGATIVE),
    ("*.jitter_strength", NON_NEGATIVE),
    ("*seed", SEED),
    # by name
    ("*.lr", Range(lo=0, lo_open=True, example="1e-3")),
    ("*_lr", POSITIVE),  # objective.image_lr, text_lr
    ("*.weight_decay", Range(lo=0, example="1e-4")),
    ("*.temperature", Range(lo=0, lo_open=True, example="0.1")),
    ("*_temperature", POSITIVE),  # init_temperature
    ("*.margin", Range(lo=0, example="0.2")),
    ("*_p", FRACTION),  # probabilities: hflip_p, jitter_p, ...
    ("*fraction", FRACTION),
    ("*_ratio", FRACTION),  # min_lr_ratio
    ("*.num_workers", Range(lo=0, whole=True, example="4")),
    ("*.prefetch_factor", Range(lo=1, whole=True, example="4")),  # batches ready per loader worker
    ("*num_negatives", COUNT_OR_NONE),  # data.num_negatives: 0 = in-batch negatives only
    ("*.num_layers", COUNT_OR_NONE),  # head: 0 = no projection
    ("*.unfreeze_last_n", COUNT_OR_NONE),
    ("*.warmup_steps", COUNT_OR_NONE),
    ("*.alignment_pairs", COUNT_OR_NONE),  # 0: skip alignment
    ("*.shuffle_buffer", COUNT_OR_NONE),
    ("*.every_n_train_steps", Range(lo=0, whole=True, example="500")),  # 0: only at epoch ends
    ("*.every_n_epochs", COUNT_OR_NONE),  # 0: only at the end
    # sizes, dimensions and counts: whole numbers >= 1 (names as in conf/; a pattern no wider than needed, so a
    # Lightning or user key that merely ends alike, e.g. trainer.max_time or reload_dataloaders_every_n_epochs,
    # is not caught)
    ("*.batch_size", Range(lo=1, whole=True, example="256")),
    ("*.k", Range(lo=1, whole=True, example="4")),
    ("*.max_consecutive", Range(lo=1, whole=True, example="10")),
    ("*.micro_batch_size", Range(lo=1, whole=True, example="32")),
    ("*_size", COUNT),  # image_size, vocab_size, eval_batch_size, chunk_size, ...
    ("*.size", COUNT),  # sampler.size (memory bank rows)
    ("*_dim", COUNT),
    ("*.dim", COUNT),
    ("*.num_*", COUNT),  # num_classes, num_train, num_val, num_nodes, ...
    ("*.max_length", COUNT),
    ("*.max_samples", COUNT),
    ("*.max_points", COUNT),
    ("*.views", Range(lo=1, whole=True, example="2")),
    ("*.accumulate_grad_batches", Range(lo=1, whole=True, example="1")),
    ("*.width", COUNT),
    ("*.depth", COUNT),
    ("*.heads", COUNT),
    ("*.stages", COUNT),
    ("*.channels", COUNT),
    ("*.in_chans", COUNT),
    ("*.captions_per_image", COUNT),
    ("*.umap_epochs", COUNT),
    ("*.refresh_every_n_epochs", COUNT),
    ("*.tsne_iter", COUNT),
    ("*.rank_min", COUNT),
    ("*.rank_max", COUNT),
    ("*.limit_samples", COUNT),
    ("*.eval_train_samples", COUNT),
)

#: (key pattern, kinds the key takes besides its default's): Lightning's unions and settings that name a
#: file or a built-in set as well as taking a list. Kinds: bool, number, text, list, dict.
ALSO_ACCEPTS: tuple[tuple[str, frozenset[str]], ...] = (
    ("trainer.devices", frozenset({"text", "list"})),  # auto, "0,1", [0, 1]
    ("trainer.precision", frozenset({"text", "number"})),  # "bf16-mixed", "32-true", ... or 16, 32, 64
    ("trainer.strategy", frozenset({"text", "dict"})),
    ("logger.version", frozenset({"number"})),  # Lightning loggers: a version number or a name
    ("*.templates", frozenset({"text", "list"})),  # a list, a built-in set's name or a file
    ("*.on_device", frozenset({"bool"})),  # augment.on_device: true/false, or an accelerator name
)

#: text a key takes, where it is not free text: (key pattern, regular expression, words)
TEXT_FORMS: tuple[tuple[str, str, str], ...] = (
    ("trainer.devices", r"auto|-1|\d+|\d+(\s*,\s*\d+)*\s*,?", "a count, -1, auto or device ids such as 0,1"),
)

#: keys that take any value: Hydra's class paths (checked when instantiated) and the run's folder name
ANY_VALUE: tuple[str, ...] = ("*._target_", "_target_", "task_name")


def _first(patterns: Any, key: str) -> Any:
    return next((rest for pattern, *rest in patterns if fnmatchcase(key, pattern)), None)


@functools.cache
def number_rule(key: str) -> Range | None:
    """The :data:`NUMBER_RULES` range of ``key`` (the first pattern that matches), or None."""
    found = _first(NUMBER_RULES, key)
    return found[0] if found else None


@functools.cache
def kinds_of(key: str, default_kind: str) -> frozenset[str]:
    """The kinds of value ``key`` takes when its default is of ``default_kind``."""
    extra = _first(ALSO_ACCEPTS, key)
    return frozenset({default_kind}) | (extra[0] if extra else frozenset())


def kind(value: Any) -> str | None:
    """bool, number, text, list or dict (None for None)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list | tuple | ListConfig):
        return "list"
    if isinstance(value, dict | DictConfig):
        return "dict"
    return type(value).__name__


def as_override(value: Any) -> str:
    """``value`` as a command-line override writes it: ``true``, ``null``, ``[a,b]``, ``0.1``."""
    if isinstance(value, ListConfig | DictConfig):
        value = OmegaConf.to_container(value, resolve=False)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(as_override(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{as_override(v)}" for k, v in value.items()) + "}"
    return str(value)


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


def leaves(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(key, value)`` of every value set in ``node`` itself: interpolations (``${data.batch_size}``)
    are left out (their target is checked where it is set), lists are values, ``hydra`` is skipped."""
    for key in node.keys():  # noqa: SIM118 (a DictConfig: keys() does not resolve values)
        full = f"{prefix}{key}"
        child = node._get_node(key)
        if full == "hydra" or child is None or child._is_interpolation() or child._is_missing():
            continue
        if isinstance(child, DictConfig):
            if not child._is_none():
                yield from leaves(child, f"{full}.")
        elif isinstance(child, ListConfig):
            yield full, None if child._is_none() else child
        else:
            yield full, child._value()


def _select(cfg: DictConfig, key: str) -> Any:
    """``cfg``'s value at ``key`` (None when absent, missing or not resolvable here)."""
    try:
        return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    except Exception:  # an interpolation into a group this run does not have: not ours to report
        return None


def _example(key: str, rule: Range, reference: DictConfig | None) -> str:
    """A value to suggest for ``key``: the rule's example, else the config's default when the rule
    accepts it, else a value inside the range."""
    if rule.example is not None:
        return rule.example
    default = _select(reference, key) if reference is not None else None
    if kind(default) == "number" and rule.accepts(float(default)):
        return as_override(default)
    return rule.sample()


def check_numbers(cfg: DictConfig, reference: DictConfig | None = None) -> None:
    """Every number of ``cfg`` with a :data:`NUMBER_RULES` range is a number in that range (a key that
    also takes text, per :data:`ALSO_ACCEPTS`, is checked only when given a number; a number given as text
    or true/false fails here, a list or dict in :func:`check_types`)."""
    for key, value in leaves(cfg):
        rule = number_rule(key)
        if rule is None or value is None:
            continue
        value_kind = kind(value)
        if value_kind in ("list", "dict") or (value_kind != "number" and value_kind in kinds_of(key, "number")):
            continue  # a list of numbers (crop_ratio) or text / a list a key also takes: check_types' part
        number = float(value) if value_kind == "number" else None
        if number is None or not rule.accepts(number):
            example = _example(key, rule, reference)
            raise ConfigError(f"{key} must be {rule.words()}, got {value!r}; set e.g. {key}={example}.")


def _value_overrides() -> tuple[str, list[str], list[str]] | None:
    """(config name, overrides that choose config groups, keys that overrides set a value of) of the
    running Hydra job, or None outside one. Group overrides are those whose key is a group of the run
    (``data=cifar10``, ``+data/batch_sampler=pk``, ``~encoder``), as Hydra itself tells them apart."""
    from hydra.core.hydra_config import HydraConfig

    from contrastlab.config.overrides import override_key, parse_overrides

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    choices = set(hc.runtime.choices)
    groups, keys = [], []
    lines = [str(line) for line in hc.overrides.task]
    for line, override in zip(lines, parse_overrides(lines), strict=True):
        if override.key_or_group in choices or override.package:
            groups.append(line)
        elif not override.is_delete() and not override.is_sweep_override():
            keys.append(override_key(override))
    groups += [str(line) for line in hc.overrides.hydra if str(line).startswith("hydra.searchpath")]
    return str(hc.job.config_name or "train"), groups, keys


@functools.lru_cache(maxsize=16)
def _compose_reference(config_name: str, groups: tuple[str, ...], sources: tuple[str, ...]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name, overrides=list(groups))
    from contrastlab.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):  # e.g. api.compose's config
        return compose(config_name, overrides=list(groups))


def reference_config(config_name: str, groups: list[str]) -> DictConfig | None:
    """The config ``config_name`` composes to with only the config-group overrides ``groups``: the
    defaults of the run's groups (cached per process; None when it cannot be composed here)."""
    from hydra.core.global_hydra import GlobalHydra

    gh = GlobalHydra.instance()
    sources = tuple(f"{s.provider}:{s.path}" for s in gh.config_loader().get_sources()) if gh.is_initialized() else ()
    try:
        return _compose_reference(config_name, tuple(groups), sources)
    except Exception:  # the run itself composed; a failure here is not the user's to fix
        return None


def check_types(cfg: DictConfig, reference: DictConfig | None, keys: list[str]) -> None:
    """Each of ``keys`` (set by an override) holds a value of its default's kind in ``reference`` (or
    one :data:`ALSO_ACCEPTS` allows for it, in the form :data:`TEXT_FORMS` asks); keys whose default is null
    or that are in :data:`ANY_VALUE` take anything. Null turns a group of settings off (``callbacks.knn=null``);
    a parameter of a ``_target_`` takes null where its annotation says so (``checks.check_parameters``); any
    other key whose default is a value (``seed``, ``paths.log_dir``) does not."""
    if reference is None:
        return
    for key in keys:
        if any(fnmatchcase(key, pattern) for pattern in ANY_VALUE):
            continue
        default, value = _select(reference, key), _select(cfg, key)
        default_kind, value_kind = kind(default), kind(value)
        if value_kind is None and default_kind not in (None, "dict") and not _in_target_node(cfg, key):
            raise ConfigError(f"{key} cannot be null; set e.g. {key}={as_override(default)} or drop the override.")
        if default_kind is None or value_kind is None:
            continue
        if value_kind in kinds_of(key, default_kind):
            form = _first(TEXT_FORMS, key) if value_kind == "text" else None
            if form is None or re.fullmatch(form[0], value):
                continue
            raise ConfigError(f"{key} must be {form[1]}, got {value!r}; set e.g. {key}={as_override(default)}.")
        shown = as_override(default)
        if default_kind == "bool":
            raise ConfigError(f"{key} must be true or false, got {value!r}; set e.g. {key}={shown}.")
        if default_kind == "text":
            raise ConfigError(
                f"{key} takes text (default {default!r}), got {value!r}; set e.g. {key}={shown} "
                f"(quote text that reads as another kind: {key}='{as_override(value)}')."
            )
        if default_kind == "list":
            raise ConfigError(f"{key} takes a list (default {shown}), got {value!r}; set e.g. {key}={shown}.")
        if default_kind == "dict":
            raise ConfigError(
                f"{key} is a group of settings, got {value!r}; set its keys ({key}.<name>=...) or {key}=null."
            )
        raise ConfigError(f"{key} must be a {default_kind}, got {value!r}; set e.g. {key}={shown}.")


def _in_target_node(cfg: DictConfig, key: str) -> bool:
    """``key`` is a parameter of a ``_target_`` node (``optimizer.lr``), not a plain setting (``seed``) or one
    of Hydra's own flags there (``optimizer._partial_``)."""
    parent, _, name = key.rpartition(".")
    if name.startswith("_"):
        return False
    node = _select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and "_target_" in node


def overridden_keys() -> frozenset[str]:
    """The keys the running Hydra job's command line sets a value of (empty outside a Hydra run)."""
    job = _value_overrides()
    return frozenset(job[2]) if job is not None else frozenset()


def check_values(cfg: DictConfig) -> None:
    """Required keys (``???``) are set, every number is in its :data:`NUMBER_RULES` range, and every value
    set on the command line has the kind of its default (:func:`check_types`)."""
    missing = missing_keys(cfg)
    if missing:
        key = missing[0]
        raise ConfigError(f"{key} is required (it has no default); set {key}=<value>.")
    job = _value_overrides()
    reference = reference_config(job[0], job[1]) if job is not None and job[2] else None
    check_numbers(cfg, reference)
    if job is not None:
        check_types(cfg, reference, job[2])


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
