"""The shared base of every objective: optimiser + schedule, embedding hook, config in checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor, nn

from contrastlab.errors import ConfigError, check_choice
from contrastlab.negatives.kinds import BindsEncoder, NegativeSampler
from contrastlab.objectives.grad_cache import GradCache
from contrastlab.objectives.optim import LrScaling, param_groups, scaled_lr


class CheckpointMismatchError(ConfigError):
    """A checkpoint written by another objective (the message says which, and what to change)."""


def check_objective(trained: str, expected: str, source: str = "the checkpoint", setting: str = "objective") -> None:
    """The one "written by another objective" check: :class:`CheckpointMismatchError` unless the
    checkpoint's objective ``trained`` is ``expected``.

    ``source`` names the checkpoint (``ckpt_path=<file>``); ``setting`` is the override that asked for
    ``expected``: ``objective`` (a run continuing the checkpoint) or e.g. ``expect_objective`` (an
    evaluation that only accepts ``expected``), and decides the advice.
    """
    if trained == expected:
        return
    if setting == "objective":
        wanted, fix = f"but this run is objective={expected}", f"set objective={trained} to continue it"
    else:
        wanted, fix = f"not {expected}", f"drop {setting}={expected}"
    raise CheckpointMismatchError(
        f"{source} was trained with objective={trained}, {wanted}; pass a {expected} checkpoint, or {fix}."
    )


def _channels_last_input(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: a 4-D image batch enters in the channels-last layout (a copy only when it is not)."""
    if args and isinstance(args[0], Tensor) and args[0].ndim == 4:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return None


class ContrastiveObjective(L.LightningModule):
    """Base LightningModule.

    Args:
        encoder: image tower, (B, C, H, W) -> (B, encoder.out_dim); evaluation uses its output.
        head: projection head on top of the encoder; the loss sees its output.
        loss: a loss module from :mod:`contrastlab.losses`.
        negatives: a strategy from :mod:`contrastlab.negatives` of the kind ``sampler_kind`` (see
            :mod:`contrastlab.negatives.kinds`); one that :class:`~contrastlab.negatives.kinds.BindsEncoder`
            is bound to ``(encoder, head)``.
        optimizer: ``partial`` of a ``torch.optim.Optimizer`` (Hydra ``_partial_: true``).
        scheduler: ``partial`` taking ``(optimizer, total_steps)``, or None.
        batch_size: per-process batch size, for learning-rate scaling.
        lr_scaling: ``none`` | ``linear`` | ``sqrt`` in the global batch
            (``batch_size * world_size * accumulate_grad_batches``) relative to ``base_batch_size``.
        grad_cache: ``{"micro_batch_size": m}`` embeds training batches in micro-batches of ``m`` rows
            with gradient caching (:mod:`contrastlab.objectives.grad_cache`); ``None``/``m=None``: off.
            Only objectives with ``supports_grad_cache`` accept it.
        compile_encoder: ``torch.compile`` the towers (``encoder`` and any text towers) in place at fit
            start (:meth:`configure_model`); state-dict keys are unchanged.
        channels_last: store the image encoder's weights and feed it images in the channels-last memory
            layout (NHWC; faster convolutions on GPUs with tensor cores), from fit start; values unchanged.
    """

    #: name written into checkpoints; ``contrastlab-eval`` refuses a checkpoint of another objective.
    objective_name = "base"
    #: whether training_step embeds through ``self.grad_cache`` (SimCLR, CLIP, bi-encoder)
    supports_grad_cache = False
    #: what the loss scores: ``candidates`` (InfoNCE), ``triplets`` or ``pairs`` (two towers); None: unchecked
    consumes: ClassVar[str | None] = None
    #: the kind of sampler the objective drives (config/checks.py refuses another before start-up)
    sampler_kind: ClassVar[type[NegativeSampler]] = NegativeSampler

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module,
        loss: nn.Module,
        negatives: NegativeSampler,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        batch_size: int = 256,
        lr_scaling: LrScaling = "none",
        base_batch_size: int = 256,
        grad_cache: Mapping[str, Any] | GradCache | None = None,
        compile_encoder: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.encoder, self.head, self.loss, self.negatives = encoder, head, loss, negatives
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        check_choice(lr_scaling, LrScaling, "objective.lr_scaling")
        self.batch_size, self.lr_scaling, self.base_batch_size = batch_size, lr_scaling, base_batch_size
        self.grad_cache = GradCache.from_config(grad_cache)
        if self.grad_cache.enabled and not self.supports_grad_cache:
            raise ValueError(
                f"objective={self.objective_name} does not support gradient caching; "
                "set objective.grad_cache.micro_batch_size=null."
            )
        if not isinstance(negatives, self.sampler_kind):
            kind = self.sampler_kind
            raise ConfigError(
                f"objective={self.objective_name} needs a {kind.role} sampler, got {type(negatives).__name__}; "
                f"set sampler={kind.choices}."
            )
        if isinstance(negatives, BindsEncoder):  # e.g. a momentum key encoder copies (encoder, head)
            negatives.bind(encoder, head)
        self.compile_encoder, self.channels_last = compile_encoder, channels_last
        self.run_config: dict | None = None  # the resolved Hydra config, set by train.py, saved in checkpoints

    # --- embeddings -----------------------------------------------------------------------------
    def embed(self, x: Tensor) -> Tensor:
        """Representation used downstream (encoder output, before the head): (B, encoder.out_dim)."""
        return self.encoder(x)

    def project(self, x: Tensor) -> Tensor:
        """What the loss sees: head(encoder(x))."""
        return self.head(self.encoder(x))

    # --- logging without reading the device ----------------------------------------------------------
    def log_number(self, name: str, value: float, **kwargs: Any) -> None:
        """``self.log`` of a host number as a tensor filled on the module's device. Lightning turns a Python
        number into ``torch.tensor(value, device=...)``, a copy from host memory that waits for the device's
        queued work; a fill is one more queued kernel. (Lightning reads logged tensors only when it writes
        them, every ``log_every_n_steps``.)"""
        self.log(name, torch.full((), float(value), device=self.device), **kwargs)

    def log_candidates(self, keys: Tensor, key_mask: Tensor | None) -> None:
        """``train/num_candidates``: the keys a query is scored against (those of ``key_mask``, when given)."""
        if key_mask is None:
            self.log_number("train/num_candidates", keys.shape[0])
        else:
            self.log("train/num_candidates", key_mask.sum().float())

    # --- validation: embedding spread (collapse indicator) ----------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        z = torch.nn.functional.normalize(self.embed(batch["image"]).float(), dim=1)
        self.log("val/embedding_std", z.std(0).mean(), sync_dist=True, batch_size=len(z))

    # --- towers compiled at fit start ---------------------------------------------------------------
    def compile_targets(self) -> list[nn.Module]:
        """The towers ``compile_encoder`` compiles: the image encoder and any text towers."""
        names = ("encoder", "text_encoder", "doc_encoder")
        return [m for m in (getattr(self, n, None) for n in names) if isinstance(m, nn.Module)]

    def configure_model(self) -> None:
        encoder = getattr(self, "encoder", None)
        if self.channels_last and isinstance(encoder, nn.Module) and not getattr(encoder, "_channels_last", False):
            encoder.to(memory_format=torch.channels_last)  # 4-D weights only; the rest is unchanged
            encoder.register_forward_pre_hook(_channels_last_input)
            encoder._channels_last = True
        if self.compile_encoder:
            for tower in self.compile_targets():
                if getattr(tower, "_compiled_call_impl", None) is None:
                    tower.compile()  # nn.Module.compile: in place, parameter names unchanged

    # --- optimisation -------------------------------------------------------------------------------
    def global_batch_size(self) -> int:
        """Samples per optimizer step: ``batch_size * world_size * accumulate_grad_batches``."""
        if self._trainer is None:
            return self.batch_size
        return self.batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def optimizer_groups(self, weight_decay: float, lr_factor: float = 1.0) -> list[dict]:
        """The optimizer's parameter groups (:func:`~contrastlab.objectives.optim.param_groups`); an objective
        that gives some parameters their own learning rate scales it by ``lr_factor`` like the base rate."""
        return param_groups(self, weight_decay)

    def configure_optimizers(self) -> Any:
        base_lr = self.optimizer_factory.keywords.get("lr", 1e-3)  # type: ignore[attr-defined]
        weight_decay = self.optimizer_factory.keywords.get("weight_decay", 0.0)  # type: ignore[attr-defined]
        lr = scaled_lr(base_lr, self.global_batch_size(), self.lr_scaling, self.base_batch_size)
        optimizer = self.optimizer_factory(self.optimizer_groups(weight_decay, lr / base_lr), lr=lr)
        if self.scheduler_factory is None:
            return optimizer
        total = self.trainer.estimated_stepping_batches
        scheduler = self.scheduler_factory(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- checkpoints carry the config that built them -----------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["contrastlab"] = {"objective": self.objective_name, "config": self.run_config}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another objective (its weights would not fit, or fit wrongly)."""
        trained = (checkpoint.get("contrastlab") or {}).get("objective")
        if trained is not None:
            check_objective(str(trained), self.objective_name)
