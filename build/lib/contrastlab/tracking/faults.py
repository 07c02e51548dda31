"""W&B faults never stop training: an unreachable server or a failing W&B call falls back to offline
logging into the run directory (say so once), or, if even that fails, to no W&B logging at all.

* before the first ``wandb.init`` of an online run, the server is probed (a TCP connection to
  ``WANDB_BASE_URL``, default ``api.wandb.ai:443``, 5 s): unreachable -> offline at once instead of
  waiting for ``wandb.init``'s own timeout;
* ``wandb.init`` failing online -> retried offline;
* any W&B call failing mid-run (``log_metrics``, ``log_hyperparams``, images, ``finalize``, ...) -> the
  run is re-opened offline with the same id (``resume="allow"``) and the call retried once; a second
  failure disables W&B logging for the rest of the run. Metrics still reach ``metrics.json``.

Offline runs are uploaded later with ``wandb sync <run_dir>/wandb/offline-run-*``.
"""

from __future__ import annotations

import os
import socket
import warnings
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

PROBE_TIMEOUT_S = 5.0


class WandbFallbackWarning(UserWarning):
    """W&B could not be used online (or at all); training continues."""


def unreachable_reason(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the W&B server cannot be reached (None when a TCP connection to it succeeds)."""
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    host = url.hostname or "api.wandb.ai"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return f"{host}:{port}: {err.strerror or err}"


class FaultTolerantWandbLogger(WandbLogger):
    """A :class:`WandbLogger` whose failures fall back to offline, then to nothing (see the module doc)."""

    _ft_disabled = False

    def _say(self, reason: str) -> None:
        if rank_zero_only.rank == 0:
            where = os.path.join(str(self.save_dir or "."), "wandb")
            msg = (
                f"{reason}; W&B logs offline into {where} (upload later with `wandb sync {where}/offline-run-*`); "
                "training continues."
            )
            warnings.warn(msg, WandbFallbackWarning, stacklevel=3)
            print(f"warning: {msg}", flush=True)

    def _go_offline(self, reason: str) -> None:
        self._say(reason)
        self._offline = True
        self._wandb_init["mode"] = "offline"
        self._wandb_init.setdefault("resume", "allow")
        os.environ["WANDB_MODE"] = "offline"
        if self._experiment is not None:
            self._experiment = None
            try:
                import wandb

                wandb.finish(quiet=True)
            except Exception:
                pass

    def _disable(self, err: BaseException) -> None:
        if not self._ft_disabled and rank_zero_only.rank == 0:
            msg = f"W&B logging failed offline too ({type(err).__name__}: {err}); W&B logging is off for this run"
            warnings.warn(msg, WandbFallbackWarning, stacklevel=3)
            print(f"warning: {msg}; training continues.", flush=True)
        self._ft_disabled = True

    @property
    def experiment(self) -> Any:
        if self._ft_disabled:
            return _NullRun()
        if self._experiment is None and not self._offline and rank_zero_only.rank == 0:
            why = unreachable_reason()
            if why is not None:
                self._go_offline(f"W&B is unreachable ({why})")
        try:
            return WandbLogger.experiment.fget(self)  # type: ignore[attr-defined]
        except Exception as err:
            if not self._offline:
                self._go_offline(f"W&B could not start online ({type(err).__name__}: {err})")
                try:
                    return WandbLogger.experiment.fget(self)  # type: ignore[attr-defined]
                except Exception as err2:
                    err = err2
            self._disable(err)
            return _NullRun()


class _NullRun:
    """Accepts any W&B run call and does nothing (W&B disabled after repeated failures)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _guarded(name: str) -> Any:
    base = getattr(WandbLogger, name)

    def method(self: FaultTolerantWandbLogger, *args: Any, **kwargs: Any) -> Any:
        if self._ft_disabled:
            return None
        try:
            return base(self, *args, **kwargs)
        except Exception as err:
            if name == "finalize":
                self._disable(err)
                return None
            self._go_offline(f"W&B {name} failed ({type(err).__name__}: {err})")
            try:
                return base(self, *args, **kwargs)
            except Exception as err2:
                self._disable(err2)
                return None

    method.__name__ = method.__qualname__ = name
    method.__doc__ = base.__doc__
    return method


for _name in (
    "log_hyperparams",
    "log_metrics",
    "log_table",
    "log_text",
    "log_image",
    "log_audio",
    "log_video",
    "after_save_checkpoint",
    "finalize",
    "watch",
):
    setattr(FaultTolerantWandbLogger, _name, _guarded(_name))


def guard_loggers(logger: Any) -> Any:
    """Make every :class:`WandbLogger` in ``logger`` (one logger, a list, or False) fault tolerant."""
    for lg in logger if isinstance(logger, list | tuple) else [logger]:
        if type(lg) is WandbLogger:
            lg.__class__ = FaultTolerantWandbLogger
    return logger
