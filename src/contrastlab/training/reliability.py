"""Faults that must not cost a run: non-finite steps, pre-emption, a failing checkpoint write.

* :class:`NonFiniteGuard` (``callbacks.nan_guard``): a step whose loss or gradients are not finite
  is skipped (no parameter update; the module's buffers, e.g. memory-bank queues and BatchNorm
  statistics, are put back as they were before the step) and counted (``train/skipped_steps``);
  ``max_consecutive`` skipped steps in a row stop the run with one sentence and ``last.ckpt``
  holding the last good weights.
* :class:`PreemptionCheckpoint` (always on): on ``SIGTERM`` (SLURM pre-emption, ``kill``) the run
  saves ``last.ckpt`` at the end of the current step and exits with status 143 and one line saying
  how to resume (``ckpt_path=last`` or ``resume=auto``).
* :class:`AtomicCheckpointIO` (always on): a checkpoint is written to a temporary file in the same
  folder, flushed to disk, then renamed over the old one; a failed write (disk full) raises
  :class:`CheckpointWriteError` and leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from contrastlab.errors import EXIT_PREEMPTED, ContrastlabWarning, RunFailure


class NonFiniteLossError(RunFailure, RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient; the run stopped."""


class CheckpointWriteError(RunFailure, RuntimeError):
    """A checkpoint could not be written (the previous one at that path is unchanged)."""


class NonFiniteStepWarning(ContrastlabWarning):
    """A training step had a non-finite loss or gradient and was skipped."""


class Preempted(SystemExit):
    """The run stopped on SIGTERM after saving its checkpoint (exit status 143)."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_PREEMPTED)
        self.message = message


# ----------------------------------------------------------------------------------- checkpoints
def save_last(trainer: L.Trainer) -> Path:
    """Save the current state as the run's ``last.ckpt`` and return its path: through the
    ``ModelCheckpoint`` that keeps ``last`` (so its bookkeeping stays right), else into
    ``<default_root_dir>/checkpoints/last.ckpt``."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath:
            cb._save_last_checkpoint(trainer, cb._monitor_candidates(trainer))
            return Path(cb.last_model_path)
    path = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` optimizer steps (0: never) and at the end of every
    training epoch (Lightning's ``ModelCheckpoint`` takes one of the two triggers only)."""

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int = 500, **kwargs: Any) -> None:
        kwargs.update(save_top_k=0, save_last=True, save_on_train_epoch_end=True)
        super().__init__(dirpath=dirpath, every_n_train_steps=every_n_train_steps, **kwargs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # skipped when a step save just ran
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def _os_error_in(err: BaseException | None) -> OSError | None:
    """The OSError behind ``err`` (itself, or in its cause/context chain: ``torch.save`` turns a failed
    ``write`` into a RuntimeError), or None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into ``.<name>.tmp-<pid>`` next to the target, ``fsync``, then ``os.replace``:
    a reader (or a resumed run) sees the old checkpoint or the new one, never half a file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            os_error = _os_error_in(err)
            if os_error is not None:
                why = os_error.strerror or str(os_error)
                raise CheckpointWriteError(
                    f"could not write checkpoint {target} ({why}); the previous checkpoint there is unchanged. "
                    "Free disk space or point callbacks.step_checkpoint.dirpath at another disk, then resume "
                    "with ckpt_path=last."
                ) from err
            raise
        try:  # make the rename itself durable
            fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass


# ------------------------------------------------------------------------------ non-finite steps
class NonFiniteGuard(L.Callback):
    """Skip (and count) optimizer steps whose loss or gradients are NaN/Inf.

    Args:
        max_consecutive: stop the run after this many skipped steps in a row.
        check_gradients: also test the gradients (under a fp16 ``GradScaler``, which skips overflowing
            steps itself, only the loss is tested).
        restore_buffers: put the module's buffers back to their values before a skipped step.

    A skipped step updates no parameter (their ``.grad`` is cleared before ``optimizer.step``, so the
    optimizer leaves them and their state alone); the learning-rate schedule still advances. Under
    DDP the decision is shared by all ranks.
    """

    def __init__(self, max_consecutive: int = 10, check_gradients: bool = True, restore_buffers: bool = True) -> None:
        if int(max_consecutive) < 1:
            raise ValueError(f"callbacks.nan_guard.max_consecutive must be >= 1, got {max_consecutive}.")
        self.max_consecutive, self.check_gradients = int(max_consecutive), check_gradients
        self.restore_buffers = restore_buffers
        self.skipped = 0
        self.consecutive = 0
        self.stop_message: str | None = None
        self._bad_loss: Tensor | None = None
        self._buffers: dict[str, Tensor] | None = None
        self._stop_now = False

    # --- checkpoint state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))

    # --- one step -----------------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.restore_buffers and self._buffers is None:  # first micro-batch of an optimizer step
            self._buffers = {name: b.detach().clone() for name, b in pl_module.named_buffers()}

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()).all()
        self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        flag = None if self._bad_loss is None else self._bad_loss.reshape(())
        grads = [p.grad for p in params if p.grad is not None]
        if self.check_gradients and grads and getattr(trainer.precision_plugin, "scaler", None) is None:
            # one fused pass over every gradient (as AMP's scaler does): the sum of the per-tensor norms is
            # finite exactly when every entry is; float32 norms so that large finite bf16 gradients pass
            norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
            bad_grad = ~torch.isfinite(torch.stack([n.to(norms[0].device) for n in norms]).sum())
            flag = bad_grad if flag is None else flag | bad_grad.to(flag.device)
        self._bad_loss = None
        bad = bool(flag) if flag is not None else False  # the step's one host synchronisation
        bad = bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        if not bad:
            self.consecutive, self._buffers = 0, None
            return
        for p in params:
            p.grad = None
        self._put_back_buffers(pl_module)
        self.skipped += 1
        self.consecutive += 1
        if trainer.is_global_zero:
            warnings.warn(
                f"step {trainer.global_step}: non-finite loss or gradient; the step is skipped "
                f"({self.consecutive} in a row, {self.skipped} in all; the run stops at "
                f"callbacks.nan_guard.max_consecutive={self.max_consecutive} in a row).",
                NonFiniteStepWarning,
                stacklevel=2,
            )
        self._stop_now = self.consecutive >= self.max_consecutive

    def _put_back_buffers(self, pl_module: L.LightningModule) -> None:
        saved, self._buffers = self._buffers, None
        if not saved:
            return
        with torch.no_grad():
            for name, value in saved.items():
                module_path, _, leaf = name.rpartition(".")
                owner = pl_module.get_submodule(module_path) if module_path else pl_module
                current = getattr(owner, leaf, None)
                if isinstance(current, Tensor) and current.shape == value.shape:
                    current.copy_(value)
                else:  # a lazily sized buffer (e.g. a memory bank's first enqueue) was replaced
                    setattr(owner, leaf, value)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # a tensor filled on the device: a Python number would be copied from the host, which waits for the device
        pl_module.log("train/skipped_steps", torch.full((), float(self.skipped), device=pl_module.device))
        if not self._stop_now:
            return
        self._stop_now = False
        path = save_last(trainer)
        self.stop_message = (
            f"training stopped at step {trainer.global_step}: {self.consecutive} steps in a row had a "
            f"non-finite loss or gradient ({self.skipped} skipped in all); the last good weights are in "
            f"{path}. Lower optimizer.lr, set trainer.gradient_clip_val or check the data "
            "(callbacks.nan_guard.max_consecutive sets the limit)."
        )
        trainer.should_stop = True


# ------------------------------------------------------------------------------------ pre-emption
class PreemptionCheckpoint(L.Callback):
    """On SIGTERM save ``last.ckpt`` (see :func:`save_last`): at the end of the running step on a single
    process; under DDP when Lightning raises ``SIGTERMException`` on every rank at the next step."""

    def __init__(self) -> None:
        self.saved: Path | None = None
        self._step: int | None = None

    def _save(self, trainer: L.Trainer) -> None:
        if self._step == trainer.global_step and self.saved is not None:
            return
        self.saved, self._step = save_last(trainer), trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.received_sigterm and trainer.world_size == 1:
            self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.global_step > 0:
            self._save(trainer)

    def message(self, trainer: L.Trainer) -> str:
        where = f"saved {self.saved}" if self.saved is not None else "no checkpoint was saved (no step finished)"
        return (
            f"stopped by SIGTERM at step {trainer.global_step}: {where}; continue with the same command "
            "plus ckpt_path=last (or resume=auto)."
        )


def find_callback(trainer: L.Trainer, cls: type) -> Any:
    return next((cb for cb in trainer.callbacks if isinstance(cb, cls)), None)  # type: ignore[attr-defined]


def run_callbacks() -> list[L.Callback]:
    """The callbacks every training run gets, whatever the ``callbacks`` group says: the SIGTERM checkpoint and
    the final validation pass (:class:`~contrastlab.training.final_validation.FinalValidation`)."""
    from contrastlab.training.final_validation import FinalValidation

    return [PreemptionCheckpoint(), FinalValidation()]


def trainer_plugins(trainer_cfg: Any) -> list[Any]:
    """``trainer.plugins`` from the config (if any) plus :class:`AtomicCheckpointIO` (unless the config
    brings its own checkpoint writer)."""
    from hydra.utils import instantiate
    from lightning.fabric.plugins import CheckpointIO

    configured = trainer_cfg.get("plugins") if trainer_cfg is not None else None
    plugins = list(instantiate(configured)) if configured else []
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


def raise_if_stopped(trainer: L.Trainer) -> None:
    """Raise :class:`NonFiniteLossError` if the :class:`NonFiniteGuard` stopped the run."""
    guard = find_callback(trainer, NonFiniteGuard)
    if guard is not None and guard.stop_message:
        raise NonFiniteLossError(guard.stop_message)
