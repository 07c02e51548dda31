"""Experiment tracking: every run's own metric history, and a W&B logger that never prompts, never stops a
run, and organises runs.

:class:`HistoryLogger` writes ``<run_dir>/history.jsonl`` for every training run (see
:mod:`contrastlab.tracking.history`). :class:`WandbRunLogger` (``conf/logger/wandb.yaml``) is Lightning's
``WandbLogger`` with:

* the mode decided without any network call: online when credentials exist (``WANDB_API_KEY`` or a
  ``~/.netrc`` entry for W&B) and ``WANDB_MODE`` is not ``offline``/``disabled``; otherwise offline into
  the run directory (upload later with ``wandb sync <run_dir>/wandb/offline-run-*``);
* W&B's own settings bounding the start: ``wandb.init`` waits at most ``init_timeout`` seconds; an online
  start that fails (server unreachable, timeout, refused key) is retried offline, and if that fails too
  W&B is off for the run. A W&B call failing later (``log_metrics``, images, ``finalize``, ...) turns W&B
  off for the rest of the run. Either way the run goes on, says so once (:class:`WandbFallbackWarning`),
  and its metrics still reach ``history.jsonl`` and ``metrics.json``;
* each run **named after its overrides** (``loss.temperature=0.1 sampler=memory_bank`` ->
  ``temperature=0.1,sampler=memory_bank``), **grouped by sweep** (the multirun directory's name),
  **tagged** with its objective/encoder/sampler/data choices, and typed ``train`` or ``eval``;
* the run id stored in ``<run_dir>/wandb_run_id``. Resuming from a checkpoint of an earlier run
  (``ckpt_path=<old run>/checkpoints/last.ckpt``) continues *that* W&B run: the new run directory
  (Hydra makes one per invocation) gets the same id, and ``<run_dir>/resumed_from`` records the
  earlier run directory. ``wandb sync`` of both offline folders appends to the one run;
* what W&B made of the run in ``<run_dir>/wandb_run.json``, read from the live run's public attributes:
  id, name, group, tags, job type, project, mode and the folder to ``wandb sync``; at the end also the
  run's summary and how many ``log`` calls it received. It describes the latest W&B session in that
  directory (``contrastlab-eval ... logger=wandb``, which continues the run's W&B run, rewrites it).
"""

from __future__ import annotations

import json
import os
import secrets
import string
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.loggers.logger import DummyLogger
from lightning.pytorch.utilities import rank_zero_only

from contrastlab.config.overrides import (
    NON_EXPERIMENT_KEYS,
    is_experiment_key,
    override_key,
    override_value,
    parse_overrides,
)
from contrastlab.errors import ContrastlabWarning
from contrastlab.tracking.history import HISTORY_FILE, append_row, drop_from, history_row

RUN_ID_FILE = "wandb_run_id"
RESUMED_FROM_FILE = "resumed_from"
RUN_INFO_FILE = "wandb_run.json"
TAG_GROUPS = ("objective", "encoder", "sampler", "data")
INIT_TIMEOUT_S = 60.0


class WandbFallbackWarning(ContrastlabWarning):
    """W&B could not be used online (or at all); training continues."""


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


def short_value(value: Any) -> str:
    """How an override's value (:func:`~contrastlab.config.overrides.override_value`) appears in a run name:
    floats to 4 significant digits (an Optuna trial's ``0.15355286838886856`` -> ``0.1536``, ``1e-3`` ->
    ``0.001``), booleans and null as Hydra writes them, the rest as they are."""
    if isinstance(value, bool) or value is None:
        return "null" if value is None else str(value).lower()
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_name_from_overrides(overrides: Sequence[str], exclude: Iterable[str] = NON_EXPERIMENT_KEYS) -> str | None:
    """A short run name from command-line overrides, or ``None`` when there are none.

    Each ``a.b.key=value`` becomes ``key=value`` (the full key when two overrides share a last part);
    deletions (``~key``) and overrides whose key is in (or under) ``exclude`` are left out.
    """
    exclude = tuple(exclude)
    pairs = [
        (override_key(ov), short_value(override_value(ov)))
        for ov in parse_overrides(overrides)
        if not ov.is_delete() and not ov.is_sweep_override() and is_experiment_key(override_key(ov), exclude)
    ]
    shorts = [k.rsplit(".", 1)[-1].rsplit("/", 1)[-1] for k, _ in pairs]
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


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``<run_dir>/wandb_run.json`` (see the module doc), or ``None`` when W&B never started there."""
    path = Path(run_dir) / RUN_INFO_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class HistoryLogger(Logger):
    """Appends every logged scalar to ``<save_dir>/history.jsonl`` on rank 0 (format:
    :mod:`contrastlab.tracking.history`). Lightning calls it at each logging interval, as every logger.

    Args:
        save_dir: the run directory.
    """

    def __init__(self, save_dir: str | os.PathLike) -> None:
        super().__init__()
        self._save_dir = Path(save_dir)
        self._started = False

    @property
    def path(self) -> Path:
        return self._save_dir / HISTORY_FILE

    @property
    def name(self) -> str:
        return ""  # alone (logger=null), Lightning's default paths stay <run_dir>/... with no sub-folder

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self._save_dir)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The hyper-parameters are in ``.hydra/config.yaml`` already."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        row = history_row(metrics, step)
        if not row:
            return
        if not self._started:  # this process's first row: a continued run re-logs from `step` on
            self._started = True
            self._save_dir.mkdir(parents=True, exist_ok=True)
            if step is not None:
                drop_from(self.path, step)
        append_row(self.path, row)


def with_history(logger: Any, run_dir: str | os.PathLike) -> list[Logger]:
    """The configured logger(s) (one, a list, or ``False``/``None`` for ``logger=null``) plus the run's
    :class:`HistoryLogger`: what a training run gives its Trainer."""
    given = list(logger) if isinstance(logger, list | tuple) else [logger] if logger else []
    return [*given, HistoryLogger(run_dir)]


class WandbRunLogger(WandbLogger):
    """A :class:`~lightning.pytorch.loggers.WandbLogger` writing under ``save_dir`` (the run directory);
    see the module doc for the mode, the fallbacks and the run organisation.

    ``name``/``group``/``job_type`` left ``None`` are filled from the Hydra job: name from the overrides
    (without ``name_exclude``), group from the sweep directory, job type ``eval`` for ``contrastlab-eval``
    else ``train``; ``tags`` gets the ``tag_groups`` choices added. ``resume_from`` (the run's
    ``ckpt_path``) selects the W&B run to continue. ``init_timeout`` (seconds) is W&B's own setting for
    how long ``wandb.init`` may take. Other keyword arguments go to ``wandb.init``.
    """

    def __init__(
        self,
        save_dir: str,
        project: str = "contrastlab",
        name: str | None = None,
        group: str | None = None,
        tags: Sequence[str] | None = None,
        job_type: str | None = None,
        resume_from: str | None = None,
        name_exclude: Sequence[str] = NON_EXPERIMENT_KEYS,
        tag_groups: Sequence[str] = TAG_GROUPS,
        init_timeout: float = INIT_TIMEOUT_S,
        silent: bool = True,
        **kwargs: Any,
    ) -> None:
        import wandb

        mode = wandb_mode()
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
        config = {"overrides": job.get("overrides", []), "run_dir": str(out.resolve()), **kwargs.pop("config", {})}
        kwargs.setdefault("resume", "allow")
        kwargs.setdefault("settings", wandb.Settings(init_timeout=init_timeout, silent=silent))
        super().__init__(
            save_dir=save_dir,
            project=project,
            name=name,
            group=group,
            tags=all_tags or None,
            job_type=job_type,
            config=config,
            offline=mode == "offline",
            mode=mode,
            **kwargs,
        )
        self._wandb_off = False

    # ------------------------------------------------------------------ starting the W&B run
    @property
    def experiment(self) -> Any:
        """The W&B run (started on first use); a no-op stand-in once W&B is off (see the module doc)."""
        if self._wandb_off:
            return DummyLogger().experiment
        if self._experiment is not None:
            return self._experiment
        try:
            run = super().experiment  # rank 0 starts the run; other ranks get Lightning's no-op experiment
        except Exception as err:
            if self._wandb_init.get("mode") != "online":
                # offline needs no network: a failed start is wandb's local service (slow to come up on a
                # loaded machine); free what it holds and try once more before W&B is turned off
                import wandb

                wandb.teardown()
                try:
                    run = super().experiment
                except Exception as err2:
                    self._turn_off("W&B could not start", err2)
                    return DummyLogger().experiment
                self._write_run_info(run)
                return run
            self._go_offline(err)
            try:
                run = super().experiment
            except Exception as err2:
                self._turn_off("W&B could not start offline either", err2)
                return DummyLogger().experiment
        if self._experiment is not None:
            self._write_run_info(run)
        return run

    def _go_offline(self, err: BaseException) -> None:
        """A failed online start: free what wandb holds for it (the run id stays reserved in its service
        otherwise), then start offline with the same id."""
        import wandb

        wandb.teardown()
        self._offline = True
        self._wandb_init["mode"] = "offline"
        where = Path(str(self.save_dir or ".")) / "wandb"
        self._say(
            f"W&B could not start online ({type(err).__name__}: {err}); W&B logs offline into {where} "
            f"(upload later with `wandb sync {where}/offline-run-*`); training continues."
        )

    def _turn_off(self, what: str, err: BaseException) -> None:
        if not self._wandb_off:
            self._say(
                f"{what} ({type(err).__name__}: {err}); W&B logging is off for the rest of this run "
                "(metrics still go to history.jsonl and metrics.json); training continues."
            )
        self._wandb_off = True

    @staticmethod
    def _say(message: str) -> None:
        if rank_zero_only.rank == 0:
            warnings.warn(message, WandbFallbackWarning, stacklevel=4)
            print(f"warning: {message}", flush=True)

    def _write_run_info(self, run: Any, **extra: Any) -> None:
        """What W&B made of this run, from the run's public attributes, into ``<save_dir>/wandb_run.json``."""
        info = {
            "id": run.id,
            "name": run.name,
            "group": run.group or None,
            "tags": list(run.tags),
            "job_type": run.job_type,
            "project": run.project,
            "mode": run.settings.mode,
            "sync_dir": run.settings.sync_dir,
            **extra,
        }
        path = Path(str(self.save_dir)) / RUN_INFO_FILE
        partial = path.with_suffix(".json.partial")  # written whole, then renamed: a kill never leaves half a file
        partial.write_text(json.dumps(info, indent=2, default=str) + "\n")
        partial.replace(path)

    # ------------------------------------------------------------------ W&B calls that never raise
    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self._wandb_off:
            return None
        try:
            return getattr(super(), name)(*args, **kwargs)
        except Exception as err:
            self._turn_off(f"W&B {name} failed", err)
            return None

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        self._call("log_hyperparams", *args, **kwargs)

    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        self._call("log_metrics", *args, **kwargs)

    def log_table(self, *args: Any, **kwargs: Any) -> None:
        self._call("log_table", *args, **kwargs)

    def log_text(self, *args: Any, **kwargs: Any) -> None:
        self._call("log_text", *args, **kwargs)

    def log_image(self, *args: Any, **kwargs: Any) -> None:
        self._call("log_image", *args, **kwargs)

    def log_audio(self, *args: Any, **kwargs: Any) -> None:
        self._call("log_audio", *args, **kwargs)

    def log_video(self, *args: Any, **kwargs: Any) -> None:
        self._call("log_video", *args, **kwargs)

    def watch(self, *args: Any, **kwargs: Any) -> None:
        self._call("watch", *args, **kwargs)

    def after_save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        self._call("after_save_checkpoint", *args, **kwargs)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Lightning's end of the run (checkpoint upload when ``log_model``), then the run's summary and
        ``log`` call count into ``wandb_run.json``. The W&B run itself is closed by
        :func:`contrastlab.training.fit.finish_tracking` (each sweep job closes its own)."""
        self._call("finalize", status)
        run = self._experiment
        if self._wandb_off or run is None:
            return
        try:
            summary = {k: v for k, v in dict(run.summary).items() if not k.startswith("_wandb")}
            self._write_run_info(run, status=status, logged_steps=run.step, summary=summary)
        except Exception as err:
            self._turn_off("W&B finalize failed", err)
