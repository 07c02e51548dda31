"""Experiment tracking: a W&B logger that never prompts and never needs the network.

* online when credentials exist (``WANDB_API_KEY`` or a ``~/.netrc`` entry for W&B) and
  ``WANDB_MODE`` is not ``offline``/``disabled``; otherwise offline into the run directory;
* the run id is stored in ``<run_dir>/wandb_run_id`` so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

RUN_ID_FILE = "wandb_run_id"


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


def wandb_logger(save_dir: str, project: str = "contrastlab", **kwargs: Any) -> WandbLogger:
    """A :class:`WandbLogger` writing under ``save_dir`` (the run directory).

    Re-uses the run id saved in ``save_dir`` (resume) or creates and saves a new one.
    """
    mode = wandb_mode()
    os.environ["WANDB_MODE"] = mode  # child processes (DDP ranks) and wandb itself agree
    os.environ.setdefault("WANDB_SILENT", "true")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    id_file = Path(save_dir) / RUN_ID_FILE
    if "id" not in kwargs or kwargs["id"] is None:
        if id_file.exists():
            kwargs["id"] = id_file.read_text().strip()
        else:
            # W&B ids are 8 lowercase alphanumerics; made here so no private wandb API is needed.
            kwargs["id"] = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    id_file.write_text(str(kwargs["id"]))
    kwargs.setdefault("resume", "allow")
    return WandbLogger(save_dir=save_dir, project=project, offline=mode != "online", **kwargs)
