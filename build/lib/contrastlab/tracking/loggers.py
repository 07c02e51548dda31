"""Experiment tracking: a W&B logger that never prompts, never needs the network, and organises runs.

* online when credentials exist (``WANDB_API_KEY`` or a ``~/.netrc`` entry for W&B) and
  ``WANDB_MODE`` is not ``offline``/``disabled``; otherwise offline into the run directory;
* each run is **named after its overrides** (``loss.temperature=0.1 sampler=memory_bank`` ->
  ``temperature=0.1,sampler=memory_bank``), **grouped by sweep** (the multirun directory's name),
  **tagged** with its objective/encoder/sampler/data choices, and typed ``train`` or ``eval``;
* the run id is stored in ``<run_dir>/wandb_run_id``. Resuming from a checkpoint of an earlier run
  (``ckpt_path=<old run>/checkpoints/last.ckpt``) continues *that* W&B run: the new run directory
  (Hydra makes one per invocation) gets the same id, and ``<run_dir>/resumed_from`` records the
  earlier run directory. ``wandb sync`` of both offline folders appends to the one run.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # lightning (and torch) load only when a logger is made: compare.py stays light
    from lightning.pytorch.loggers import WandbLogger

RUN_ID_FILE = "wandb_run_id"
RESUMED_FROM_FILE = "resumed_from"
# overrides that say where or how a run is logged, not what it is: left out of run names
NAME_EXCLUDE = (
    "hydra",
    "paths",
    "ckpt_path",
    "print_config",
    "logger",
    "tags",
    "task_name",
    "hparams_search",
    "optimized_metric",
)
TAG_GROUPS = ("objective", "encoder", "sampler", "data")


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def wandb_mode() -> str:
    """``online`` | ``offline`` | ``disabled``, decided without any network call or prompt."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in {"offline", "dryrun"}:
        return "offline"
    if mode == "disabled":
        return "disabled"
    return "online" if wandb_has_credentials() else "offline"


def new_run_id() -> str:
    """A fresh W&B run id: 8 lowercase alphanumerics (made here so no private wandb API is needed)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def override_key(override: str) -> str:
    """``+loss.temperature=0.1`` -> ``loss.temperature``; ``~tags`` -> ``tags``."""
    return override.split("=", 1)[0].lstrip("+~")


def is_excluded(key: str, exclude: Iterable[str]) -> bool:
    return any(key == ex or key.startswith((ex + ".", ex + "/")) for ex in exclude)


def short_value(text: str) -> str:
    """A float written with many digits (an Optuna trial's ``0.15355286838886856``) -> 4 significant."""
    try:
        value = float(text)
    except ValueError:
        return text
    return f"{value:.4g}" if "." in text and len(text) > 6 else text


def run_name_from_overrides(overrides: Sequence[str], exclude: Iterable[str] = NAME_EXCLUDE) -> str | None:
    """A short run name from command-line overrides, or ``None`` when there are none.

    Each ``a.b.key=value`` becomes ``key=value`` (the full key when two overrides share a last part;
    long floats cut to 4 significant digits); overrides whose key is in (or under) ``exclude`` are
    left out.
    """
    pairs = []
    for ov in overrides:
        if "=" not in ov or is_excluded(override_key(ov), exclude):
            continue
        pairs.append((override_key(ov), short_value(ov.split("=", 1)[1])))
    shorts = [k.rsplit(".", 1)[-1] for k, _ in pairs]
    parts = [f"{s if shorts.count(s) == 1 else k}={v}" for s, (k, v) in zip(shorts, pairs, strict=True)]
    return ",".join(parts) or None


def choice_tags(choices: Mapping[str, Any], groups: Iterable[str] = TAG_GROUPS) -> list[str]:
    """``{"objective": "simclr", ...}`` -> ``["objective:simclr", ...]`` for the chosen config groups."""
    return [f"{g}:{choices[g]}" for g in groups if choices.get(g) is not None]


def hydra_job_info() -> dict[str, Any]:
    """What the running Hydra job knows about itself (empty outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return {
        "overrides": list(OmegaConf.to_container(hc.overrides.task)),  # type: ignore[arg-type]
        "choices": dict(hc.runtime.choices),
        "job_name": hc.job.name,
        "sweep_dir": str(hc.sweep.dir) if multirun else None,
    }


def find_run_dir(path: str | os.PathLike | None) -> Path | None:
    """The nearest directory at or above ``path`` that holds a ``wandb_run_id`` file, if any."""
    if not path:
        return None
    p = Path(path).expanduser().resolve()
    for d in (p, *p.parents):
        if (d / RUN_ID_FILE).is_file():
            return d
    return None


def resolve_run_id(save_dir: Path, resume_from: str | os.PathLike | None = None) -> tuple[str, Path | None]:
    """The W&B run id for a run in ``save_dir``, and the earlier run directory it continues (or None).

    Priority: the run that ``resume_from`` (a checkpoint path) lives in, then an id already saved in
    ``save_dir`` (a restarted job, a DDP child process), then a new id.
    """
    earlier = find_run_dir(resume_from)
    if earlier is not None and earlier != save_dir.resolve():
        return (earlier / RUN_ID_FILE).read_text().strip(), earlier
    id_file = save_dir / RUN_ID_FILE
    if id_file.is_file():
        return id_file.read_text().strip(), None
    return new_run_id(), None


def wandb_logger(
    save_dir: str,
    project: str = "contrastlab",
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] | None = None,
    job_type: str | None = None,
    resume_from: str | None = None,
    name_exclude: Sequence[str] = NAME_EXCLUDE,
    tag_groups: Sequence[str] = TAG_GROUPS,
    **kwargs: Any,
) -> WandbLogger:
    """A :class:`WandbLogger` writing under ``save_dir`` (the run directory).

    ``name``/``group``/``job_type`` left ``None`` are filled from the Hydra job: name from the
    overrides, group from the sweep directory, job type ``eval`` for ``contrastlab-eval`` else
    ``train``; ``tags`` gets the config-group choices added. ``resume_from`` (the run's ``ckpt_path``)
    selects the W&B run to continue. Other keyword arguments go to ``wandb.init``.
    """
    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.utilities import rank_zero_only

    mode = wandb_mode()
    os.environ["WANDB_MODE"] = mode  # child processes (DDP ranks) and wandb itself agree
    os.environ.setdefault("WANDB_SILENT", "true")
    out = Path(save_dir)
    out.mkdir(parents=True, exist_ok=True)
    job = hydra_job_info()

    if kwargs.get("id") is None:
        kwargs["id"], earlier = resolve_run_id(out, resume_from)
        if earlier is not None and rank_zero_only.rank == 0:
            (out / RESUMED_FROM_FILE).write_text(f"{earlier}\n")
    if rank_zero_only.rank == 0:
        (out / RUN_ID_FILE).write_text(f"{kwargs['id']}\n")
    if name is None:
        name = run_name_from_overrides(job.get("overrides", []), name_exclude)
    if group is None and job.get("sweep_dir"):
        group = Path(job["sweep_dir"]).name
    if job_type is None:
        job_type = "eval" if str(job.get("job_name", "")).startswith("eval") else "train"
    all_tags = list(dict.fromkeys([*(tags or []), *choice_tags(job.get("choices", {}), tag_groups)]))
    config = {
        "overrides": job.get("overrides", []),
        "run_dir": str(out.resolve()),
        **kwargs.pop("config", {}),
    }
    kwargs.setdefault("resume", "allow")
    return WandbLogger(
        save_dir=save_dir,
        project=project,
        name=name,
        group=group,
        tags=all_tags or None,
        job_type=job_type,
        config=config,
        offline=mode != "online",
        **kwargs,
    )


# ----------------------------------------------------------------------------- offline W&B files
# An offline run is ``<run_dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb``: a 7-byte header
# (``:W&B``, magic 0xBEE1, version) then LevelDB-log records (crc32 u32, length u16, type u8, data)
# in 32 KiB blocks, each data a ``wandb_internal_pb2.Record`` protobuf. ``wandb sync`` uploads them.

_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_offline_records(wandb_file: str | os.PathLike) -> Iterator[Any]:
    """The protobuf records of an offline ``.wandb`` file; a truncated tail (a killed run) is skipped."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(wandb_file).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{wandb_file} is not a W&B run file (no :W&B header).")
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        pos += 7
        if kind == 0 or pos + length > len(data):
            break
        chunk, pos = data[pos : pos + length], pos + length
        if kind in (_FIRST, _MIDDLE):
            pending = (b"" if kind == _FIRST else pending) + chunk
            continue
        payload = pending + chunk if kind == _LAST else chunk
        pending = b""
        record = pb.Record()
        record.ParseFromString(payload)
        yield record


def offline_runs(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """What each offline W&B run of ``run_dir`` recorded: id, name, group, tags, job_type, project, history.

    ``history`` is a list of ``{metric: value}`` rows (``_step`` included), in logging order.
    """
    out = []
    for f in sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")):
        info: dict[str, Any] = {"file": str(f), "history": []}
        for rec in read_offline_records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "run" and "id" not in info:
                r = rec.run
                info.update(
                    id=r.run_id,
                    name=r.display_name,
                    group=r.run_group,
                    tags=list(r.tags),
                    job_type=r.job_type,
                    project=r.project,
                )
            elif kind == "history":
                row = {}
                for item in rec.history.item:
                    key = item.key or "/".join(item.nested_key)
                    try:
                        row[key] = json.loads(item.value_json)
                    except ValueError:
                        continue
                out_row = {k: v for k, v in row.items() if isinstance(v, int | float)}
                if out_row:
                    info["history"].append(out_row)
        out.append(info)
    return out
