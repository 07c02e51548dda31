"""Which checkpoint a training run continues from, and whether it is safe and right to load.

* ``ckpt_path=<file>``: that checkpoint.
* ``ckpt_path=last``: the newest ``checkpoints/last.ckpt`` of an earlier run of the **same config**
  (same task and settings; see :func:`run_key`) under ``<paths.log_dir>/<task_name>/``; an error if
  there is none.
* ``resume=auto``: the same search, but a fresh start when nothing is found (for job scripts that
  are simply re-submitted after pre-emption).

Every run writes its key into ``<run_dir>/run_key``. A checkpoint is read with
``torch.load(weights_only=True)`` (memory-mapped: no tensor is copied) unless
``trust_checkpoint=true``, and one written by another objective is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from contrastlab.config.checks import ConfigError
from contrastlab.objectives.base import CheckpointMismatchError

RUN_KEY_FILE = "run_key"
#: top-level keys that say where or how a run is logged or resumed, not what it trains
KEY_EXCLUDE = (
    "ckpt_path",
    "resume",
    "trust_checkpoint",
    "paths",
    "hydra",
    "print_config",
    "logger",
    "callbacks",
    "tags",
    "optimized_metric",
)
#: trainer keys a resumed run may change (train longer, show less)
TRAINER_EXCLUDE = ("max_epochs", "max_steps", "default_root_dir", "enable_progress_bar", "enable_model_summary")
#: the resolved checkpoint of a DDP parent, for its child processes
ENV_RESUME = "CONTRASTLAB_RESUME_FROM"


def run_key(cfg: DictConfig) -> str:
    """A hash of what the run trains: the resolved config without :data:`KEY_EXCLUDE` (and the trainer
    keys in :data:`TRAINER_EXCLUDE`)."""
    kept: dict[str, Any] = {}
    for key in cfg:
        if key in KEY_EXCLUDE:
            continue
        node = cfg[key]
        kept[str(key)] = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    if isinstance(kept.get("trainer"), dict):
        kept["trainer"] = {k: v for k, v in kept["trainer"].items() if k not in TRAINER_EXCLUDE}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def write_run_key(cfg: DictConfig, run_dir: Path) -> None:
    (run_dir / RUN_KEY_FILE).write_text(run_key(cfg) + "\n")


def search_root(cfg: DictConfig) -> Path:
    return Path(str(cfg.paths.log_dir)).expanduser() / str(cfg.task_name)


def find_last_checkpoint(cfg: DictConfig, exclude: Path | None = None) -> Path | None:
    """The newest ``<run>/checkpoints/last.ckpt`` of a run (single or sweep job) under
    :func:`search_root` whose ``run_key`` equals this config's; ``exclude`` is the current run."""
    root, key = search_root(cfg), run_key(cfg)
    found: list[Path] = []
    for key_file in itertools.chain(root.glob(f"runs/*/{RUN_KEY_FILE}"), root.glob(f"multiruns/*/*/{RUN_KEY_FILE}")):
        run = key_file.parent
        if exclude is not None and run.resolve() == exclude.resolve():
            continue
        last = run / "checkpoints" / "last.ckpt"
        if last.is_file() and key_file.read_text().strip() == key:
            found.append(last)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def read_checkpoint_meta(path: str | Path, trust: bool = False, key: str = "ckpt_path") -> dict[str, Any]:
    """``checkpoint["contrastlab"]`` of a training checkpoint, read safely; :class:`ConfigError` (naming
    ``key``) for a missing, unreadable, pickled (unless ``trust``) or foreign file."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise ConfigError(f"{key}={path} does not exist; pass a checkpoint written by contrastlab-train.")
    try:
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=not trust, mmap=True)
        except RuntimeError as err:  # an old (non-zip) file cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            ckpt = torch.load(p, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        why = str(err).strip().splitlines()[0]
        raise ConfigError(
            f"{key}={path} holds pickled Python objects that safe loading (weights_only) refuses ({why}); "
            "if you trust this file, add trust_checkpoint=true."
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        why = str(err).strip().splitlines()[0]
        raise ConfigError(
            f"{key}={path} cannot be read ({why}); it may be truncated: pass an earlier checkpoint."
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"{key}={path} is not a Lightning checkpoint; pass one written by contrastlab-train.")
    meta = ckpt.get("contrastlab")
    if not isinstance(meta, dict):
        raise ConfigError(
            f"{key}={path} was not written by contrastlab-train (no 'contrastlab' entry); pass one that was."
        )
    return meta


def check_objective(meta: dict[str, Any], objective: str, path: str | Path, key: str = "ckpt_path") -> None:
    trained = str(meta.get("objective"))
    if trained != objective:
        raise CheckpointMismatchError(
            f"{key}={path} was trained with objective={trained}, but this run is objective={objective}; "
            f"pass a {objective} checkpoint, or set objective={trained} to continue it."
        )


def resolve_ckpt_path(cfg: DictConfig, objective: str, run_dir: Path, rank: int = 0) -> str | None:
    """The checkpoint this run continues from (None: a fresh start), checked; ``cfg.ckpt_path`` is set
    to it so the logger resumes the earlier W&B run. Prints what was found on rank 0."""
    ckpt, mode = cfg.get("ckpt_path"), cfg.get("resume")
    if mode not in (None, False, "auto"):
        raise ConfigError(f"resume={mode} is not an option; set resume=auto (or leave it null).")
    if rank != 0 and os.environ.get(ENV_RESUME) and (ckpt == "last" or mode == "auto"):
        ckpt = os.environ[ENV_RESUME]  # a DDP child: the parent already chose
    elif ckpt == "last" or (ckpt in (None, "") and mode == "auto"):
        found = find_last_checkpoint(cfg, exclude=run_dir)
        if found is None:
            if ckpt == "last":
                raise ConfigError(
                    f"ckpt_path=last: no run with this config has a checkpoints/last.ckpt under "
                    f"{search_root(cfg)}; pass ckpt_path=<file> (or resume=auto to start fresh when none)."
                )
            if rank == 0:
                print(f"resume=auto: no checkpoint of this config under {search_root(cfg)}; starting fresh.")
            os.environ.pop(ENV_RESUME, None)
            return None
        ckpt = str(found)
        os.environ[ENV_RESUME] = ckpt
        if rank == 0:
            print(f"resuming from {ckpt}")
    else:
        os.environ.pop(ENV_RESUME, None)
    if ckpt in (None, ""):
        return None
    check_objective(read_checkpoint_meta(ckpt, bool(cfg.get("trust_checkpoint", False))), objective, ckpt)
    cfg.ckpt_path = str(ckpt)
    return str(ckpt)
