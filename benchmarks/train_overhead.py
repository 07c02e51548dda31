"""Training-loop overhead: one epoch through Lightning vs a bare PyTorch loop, same model and data.

Both sides train the default SimCLR recipe (``contrastlab-train`` with no overrides: small CNN +
MLP head, NT-Xent over in-batch negatives, AdamW, digits with the batched on-device augmentation),
built from the same Hydra config and the same initial weights, for the same steps over the same
batches (the RNG is re-seeded before each epoch, so both draw the same augmentations):

* ``lightning``: ``Trainer.fit`` for one epoch with the objective's ``training_step`` (including its
  ``self.log`` calls), no logger, checkpointing, progress bar, model summary, validation or callbacks
  of ours; the epoch is timed from ``on_train_epoch_start`` to ``on_train_epoch_end``, and the whole
  ``fit`` call (set-up included) is reported beside it;
* ``bare``: ``for batch in loader: augment; loss = nt_xent(...); zero_grad; backward; step``.

Each side is warmed up with one epoch, then the two alternate for ``--repeats`` epochs; the minimum
is reported (the machine is shared and noisy). The target is an epoch ratio lightning/bare <= 1.05.

    python benchmarks/train_overhead.py                      # 5 repeats, 1 thread, the default batch (256)
    python benchmarks/train_overhead.py --repeats 9 --threads 2 --epoch-steps 10
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from contrastlab.config import build

TARGET_RATIO = 1.05


def config(overrides: list[str]) -> Any:
    """The composed ``contrastlab-train`` config, as a job sees it."""
    with initialize_config_dir(build.CONF_DIR, version_base="1.3"):
        # no schedule (the bare loop would need the trainer's step count), no callbacks (kNN monitor ...)
        extra = ["~scheduler", "callbacks=none", "logger=csv", *overrides]
        cfg = compose("train", overrides=extra, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} keys resolve as in a run
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


class EpochTimer(L.Callback):
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.start


def lightning_epoch(cfg: Any, state: dict, steps: int, seed: int) -> tuple[float, float, float]:
    """(epoch seconds, fit seconds, last loss) of one epoch through ``Trainer.fit``."""
    datamodule, model = build.build_datamodule(cfg), build.build_objective(cfg)
    model.load_state_dict(state)
    timer = EpochTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    torch.manual_seed(seed)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit = time.perf_counter() - start
    return timer.seconds, fit, float(trainer.callback_metrics["train/loss"])


def bare_epoch(cfg: Any, state: dict, steps: int, seed: int) -> tuple[float, float]:
    """(epoch seconds, last loss) of the same epoch in a plain PyTorch loop."""
    datamodule, model = build.build_datamodule(cfg), build.build_objective(cfg)
    model.load_state_dict(state)
    datamodule.setup("fit")
    optimizer = model.configure_optimizers()  # the same AdamW and parameter groups
    model.train()
    torch.manual_seed(seed)
    start = time.perf_counter()
    for i, batch in enumerate(datamodule.train_dataloader()):
        if i == steps:
            break
        batch = datamodule.on_after_batch_transfer(batch, 0)  # the batched augmentation
        x1, x2 = batch["views"][:2]
        cands = model.negatives(model.project(x1), model.project(x2))
        loss = model.loss(cands.queries, cands.keys, **cands.loss_kwargs())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start, float(loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: least noise)")
    parser.add_argument("--epoch-steps", type=int, default=5, help="steps per epoch (digits: 5 of 256)")
    parser.add_argument("overrides", nargs="*", help="contrastlab-train overrides, e.g. data.batch_size=128")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    cfg = config(args.overrides)
    torch.manual_seed(0)
    state = build.build_objective(cfg).state_dict()
    steps, seed = args.epoch_steps, 1

    lightning_epoch(cfg, state, steps, seed)  # warm-up (allocator, kernels, imports inside Lightning)
    bare_epoch(cfg, state, steps, seed)
    light, fits, bare = [], [], []
    for _ in range(args.repeats):  # alternate, so slow phases of a shared machine hit both
        epoch, fit, loss_l = lightning_epoch(cfg, state, steps, seed)
        light.append(epoch)
        fits.append(fit)
        seconds, loss_b = bare_epoch(cfg, state, steps, seed)
        bare.append(seconds)

    print(f"SimCLR on digits, batch {cfg.data.batch_size}, {steps} steps per epoch, {args.threads} thread(s)")
    print(f"last loss: lightning {loss_l:.6f}, bare {loss_b:.6f} (same model, data and augmentations)")
    print(f"{'':<22}{'min s':>9}{'median s':>10}{'ms/step':>9}")
    for name, times in (("bare PyTorch epoch", bare), ("Lightning epoch", light), ("Lightning fit()", fits)):
        print(f"{name:<22}{min(times):>9.3f}{statistics.median(times):>10.3f}{1000 * min(times) / steps:>9.1f}")
    ratio = min(light) / min(bare)
    verdict = "OK" if ratio <= TARGET_RATIO else "ABOVE TARGET"
    print(f"epoch ratio lightning/bare: {ratio:.3f} (target <= {TARGET_RATIO}) {verdict}")
    print(f"fit() ratio lightning/bare: {min(fits) / min(bare):.3f} (set-up and tear-down included)")


if __name__ == "__main__":
    main()
