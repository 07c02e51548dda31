"""Every training run ends with a validation pass, whatever ``check_val_every_n_epoch`` or ``max_steps`` say.

Without it, ``trainer.max_epochs=4`` with ``check_val_every_n_epoch=5`` never validates: ``metrics.json`` has no
``val/*`` metric, no best checkpoint is chosen, and the run cannot be compared with anything. This callback
changes only when Lightning's own validation loop runs, so every callback that runs on validation (kNN and
collapse monitors, embedding plots, the best checkpoint) runs on the final pass too:

* at the start of the last epoch (``current_epoch == max_epochs - 1``), validation is switched on for that
  epoch (``check_val_every_n_epoch = 1``): the pass at its end is the final one;
* when ``max_steps`` ends the run inside an epoch, the step that reaches it asks Lightning to stop
  (``trainer.should_stop``), which validates after that step.

A last epoch that already validates is left alone: the final pass happens once, never twice. A run with
validation switched off (``limit_val_batches=0``, no validation data) stays without one.
"""

from __future__ import annotations

from typing import Any

import lightning as L


class FinalValidation(L.Callback):
    """Make the run's last optimizer step or last epoch a validation point (see the module docstring)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last_epoch = trainer.max_epochs is not None and trainer.max_epochs >= 0
        if last_epoch and trainer.current_epoch == trainer.max_epochs - 1 and trainer.check_val_every_n_epoch:
            trainer.check_val_every_n_epoch = 1

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.max_steps is None or trainer.max_steps < 0 or trainer.global_step < trainer.max_steps:
            return
        if trainer.check_val_every_n_epoch:
            trainer.check_val_every_n_epoch = 1
        trainer.should_stop = True  # the run ends here anyway; stopping "early" makes Lightning validate first
