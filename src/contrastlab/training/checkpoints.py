"""Load a checkpoint written by ``contrastlab-train`` back into its objective and datamodule.

Checkpoints carry ``checkpoint["contrastlab"] = {"objective": name, "config": <resolved run config>}``
(see :meth:`contrastlab.objectives.base.ContrastiveObjective.on_save_checkpoint`); the objective and
datamodule are rebuilt from that config with :mod:`contrastlab.config.build` and the weights restored.
Files are read by :func:`read_checkpoint` (also what a resumed training run reads) with
``torch.load(weights_only=True)``: no pickled code runs unless the user says they trust the file
(``trust_checkpoint=true``).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from contrastlab.config import build
from contrastlab.config.checks import ConfigError
from contrastlab.data.base import ContrastiveDataModule
from contrastlab.objectives.base import ContrastiveObjective, check_objective


@dataclass
class LoadedCheckpoint:
    model: ContrastiveObjective  # in eval mode, on ``device``
    datamodule: ContrastiveDataModule  # set up
    config: DictConfig  # the run's resolved config (with any data overrides applied)
    objective: str
    path: Path
    raw: dict[str, Any]  # the checkpoint dict as loaded

    @property
    def run_dir(self) -> Path:
        return run_dir_of(self.path)

    @property
    def global_step(self) -> int:
        return int(self.raw.get("global_step", 0))


def run_dir_of(ckpt_path: str | Path) -> Path:
    """``<run>/checkpoints/x.ckpt`` -> ``<run>``; any other checkpoint -> its folder."""
    p = Path(ckpt_path).resolve()
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def run_overrides(run_dir: str | Path) -> list[str]:
    """The run's command-line overrides from ``<run>/.hydra/overrides.yaml`` ([] when absent)."""
    f = Path(run_dir) / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(f)] if f.exists() else []  # type: ignore[union-attr]


def resolve_device(name: str | None) -> torch.device:
    """``auto`` (CUDA when available, else CPU) or any torch device string."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def read_checkpoint(
    path: str | Path | None, trust: bool = False, key: str = "ckpt_path", mmap: bool = False
) -> dict[str, Any]:
    """The dict of a checkpoint written by ``contrastlab-train`` (the one checkpoint reader).

    Read with ``torch.load(weights_only=True)`` unless ``trust`` (``trust_checkpoint=true``); ``mmap``
    memory-maps the tensors instead of copying them (files too old to map are read normally). Raises
    :class:`ConfigError`, one sentence naming ``key``, for a missing path, a missing, truncated or
    unreadable file, pickled objects without ``trust``, or a file without ``state_dict`` and
    ``contrastlab`` entries.
    """
    if path in (None, "", "???"):
        raise ConfigError(f"{key}= is required: e.g. {key}=outputs/simclr/runs/<run>/checkpoints/last.ckpt")
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise ConfigError(f"{key}={path} does not exist; pass a checkpoint file written by contrastlab-train.")
    try:
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=not trust, mmap=mmap)
        except RuntimeError as err:  # an old (non-zip) file cannot be memory-mapped
            if not mmap or "mmap" not in str(err):
                raise
            ckpt = torch.load(p, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        why = str(err).strip().splitlines()[0]
        raise ConfigError(
            f"{key}={path} holds pickled Python objects that safe loading (weights_only) refuses ({why}); "
            "if you trust this file, add trust_checkpoint=true."
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{key}={path} cannot be read ({why}); it may be truncated: pass an earlier checkpoint."
        ) from err
    for entry in ("state_dict", "contrastlab"):
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get(entry), dict):
            raise ConfigError(
                f"{key}={path} is not a contrastlab checkpoint (no '{entry}' entry); "
                "pass one written by contrastlab-train."
            )
    return ckpt


def load_from_cfg(cfg: DictConfig) -> LoadedCheckpoint:
    """:func:`load_checkpoint` with the keys every checkpoint-reading command shares (``ckpt_path``,
    ``expect_objective``, ``data``, ``batch_size``, ``num_workers``, ``device``, ``trust_checkpoint``; and
    ``random_init`` / ``init_seed`` where the command has them, as ``contrastlab-eval`` does)."""
    return load_checkpoint(
        cfg.ckpt_path,
        expect_objective=cfg.expect_objective,
        data=cfg.get("data"),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        device=cfg.device,
        trust=cfg.trust_checkpoint,
        random_init=bool(cfg.get("random_init", False)),
        init_seed=cfg.get("init_seed"),
    )


def load_checkpoint(
    path: str | Path | None,
    expect_objective: str | None = None,
    data: DictConfig | dict | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | torch.device | None = "auto",
    trust: bool = False,
    random_init: bool = False,
    init_seed: int | None = None,
) -> LoadedCheckpoint:
    """Rebuild the objective and datamodule of ``path`` and restore the weights.

    Args:
        expect_objective: refuse a checkpoint of another objective (e.g. ``clip``).
        data: a ``data`` config replacing the run's (another dataset or split settings).
        batch_size, num_workers: evaluation loader settings (results do not depend on them).
        device: ``auto``, ``cpu``, ``cuda:0``, ...
        trust: allow pickled objects (``torch.load(weights_only=False)``).
        random_init: keep the freshly built weights instead of the checkpoint's: the same architecture
            at initialisation, the baseline of every metric. They are drawn as ``contrastlab-train``
            draws them (``seed_everything(init_seed)``, then datamodule, then objective), so with the
            run's seed (``init_seed=None``) they are the run's initial weights.
    """
    ckpt = read_checkpoint(path, trust)
    meta = ckpt["contrastlab"]
    objective = str(meta.get("objective"))
    if expect_objective:
        check_objective(objective, expect_objective, f"ckpt_path={path}", setting="expect_objective")
    if meta.get("config") is None:
        raise ConfigError(f"ckpt_path={path} carries no run config; it was not written by contrastlab-train")
    cfg = OmegaConf.create(meta["config"])
    if data is not None:
        cfg.data = OmegaConf.create(
            OmegaConf.to_container(data, resolve=True) if isinstance(data, DictConfig) else data
        )
    if batch_size is not None:
        cfg.data.batch_size = int(batch_size)
    if num_workers is not None:
        cfg.data.num_workers = int(num_workers)
    if random_init:
        L.seed_everything(int(cfg.get("seed", 0) if init_seed is None else init_seed), workers=True, verbose=False)
    datamodule = build.build_datamodule(cfg)
    model = build.build_objective(cfg)
    if not random_init:
        model.on_load_checkpoint(ckpt)
        model.load_state_dict(ckpt["state_dict"])
    dm_state = ckpt.get(type(datamodule).__qualname__)
    if dm_state:
        datamodule.load_state_dict(dm_state)
    datamodule.setup("validate")
    model.to(resolve_device(device) if not isinstance(device, torch.device) else device).eval()
    return LoadedCheckpoint(model, datamodule, cfg, objective, Path(str(path)), ckpt)
