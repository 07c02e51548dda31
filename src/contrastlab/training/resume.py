"""Which checkpoint a training run continues from, and whether it is safe and right to load.

* ``ckpt_path=<file>``: that checkpoint.
* ``ckpt_path=last``: the newest ``checkpoints/last.ckpt`` of an earlier run of the **same config**
  (same task and settings; see :func:`run_key`) under ``<paths.log_dir>/<task_name>/``; an error if
  there is none.
* ``resume=auto``: the same search, but a fresh start when nothing is found (for job scripts that
  are simply re-submitted after pre-emption).

Every run writes its key into ``<run_dir>/run_key``. A checkpoint is read by
:func:`contrastlab.training.checkpoints.read_checkpoint` with ``torch.load(weights_only=True)``
(memory-mapped: no tensor is copied) unless ``trust_checkpoint=true``, and one written by another
objective is refused by :func:`contrastlab.objectives.base.check_objective`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from contrastlab.config.checks import ConfigError
from contrastlab.config.overrides import NON_EXPERIMENT_KEYS as KEY_EXCLUDE  # not part of what a run trains
from contrastlab.objectives.base import check_objective
from contrastlab.training.checkpoints import read_checkpoint

RUN_KEY_FILE = "run_key"
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
    meta = read_checkpoint(ckpt, bool(cfg.get("trust_checkpoint", False)), mmap=True)["contrastlab"]
    check_objective(str(meta.get("objective")), objective, f"ckpt_path={ckpt}")
    cfg.ckpt_path = str(ckpt)
    return str(ckpt)
