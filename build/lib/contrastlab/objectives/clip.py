"""CLIP (Radford et al. 2021): an image tower and a text tower trained into one embedding space.

``u = normalize(head(encoder(image)))`` and ``v = normalize(W_t text_encoder(caption))`` (a linear
projection to the head's width); the loss (CLIP's symmetric cross-entropy or SigLIP) scores the
batch's ``u vᵀ`` scaled by ``s = exp(logit_scale)``, a learnable parameter initialised to
``log(1 / loss.init_temperature)`` (CLIP: ``log(1/0.07)``) and clamped to ``s <= max_logit_scale``
(100) after every optimizer step. Under DDP each rank's pairs are contrasted with every rank's.

The shared two-tower machinery (scale, clamp, tokenizer fitting, frozen towers; the keys come from
the in-batch sampler, gathered across ranks) is
:class:`DualEncoderObjective`; the text–text bi-encoder builds on it too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastlab.evaluation.cross_modal import cross_modal_retrieval
from contrastlab.evaluation.embed import embed_loader
from contrastlab.evaluation.zero_shot import zero_shot_accuracy, zero_shot_classifier
from contrastlab.objectives.base import ContrastiveObjective


class DualEncoderObjective(ContrastiveObjective):
    """Two towers, a learnable ``logit_scale`` and a pair loss.

    Args (beyond :class:`ContrastiveObjective`'s):
        text_encoder: a text tower from :mod:`contrastlab.encoders.text` (owns its tokenizer).
        freeze_text: lock the text tower's weights (LiT-style; its projection still trains).
        init_temperature: start ``logit_scale`` at ``log(1/init_temperature)``; None: the loss's choice.
        learn_logit_scale: train ``logit_scale`` (else it stays at its initial value).
        max_logit_scale: clamp ``exp(logit_scale)`` to at most this after every optimizer step.
        eval_batch_size, eval_chunk_size: texts per forward pass / queries per similarity block in evaluation.
    """

    def __init__(
        self,
        *args: Any,
        text_encoder: nn.Module | None = None,
        freeze_text: bool = False,
        init_temperature: float | None = None,
        learn_logit_scale: bool = True,
        max_logit_scale: float = 100.0,
        eval_batch_size: int = 512,
        eval_chunk_size: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if text_encoder is None:
            raise ValueError(
                f"objective={self.objective_name} needs a text tower: set text_encoder=transformer (or hf)."
            )
        self.text_encoder = text_encoder
        self.freeze_text = freeze_text
        if freeze_text:
            text_encoder.requires_grad_(False)
        init = getattr(self.loss, "init_logit_scale", math.log(1 / 0.07))
        if init_temperature is not None:
            init = math.log(1.0 / init_temperature)
        self.logit_scale = nn.Parameter(torch.tensor(float(init)), requires_grad=learn_logit_scale)
        self.max_logit_scale = max_logit_scale
        self.eval_batch_size, self.eval_chunk_size = eval_batch_size, eval_chunk_size
        self.train()  # puts locked towers in eval mode (Lightning does not call train() at fit start)

    # --- towers ---------------------------------------------------------------------------------------
    def text_towers(self) -> list[nn.Module]:
        return [self.text_encoder]

    def frozen_modules(self) -> list[nn.Module]:
        return [self.text_encoder] if self.freeze_text else []

    def train(self, mode: bool = True) -> DualEncoderObjective:
        super().train(mode)
        for m in self.frozen_modules():  # locked towers keep eval behaviour (BatchNorm statistics, dropout)
            m.eval()
        return self

    def prepare_text(self, datamodule: Any) -> None:
        """Build offline tokenizer vocabularies from the datamodule's training texts (once)."""
        towers = [t for t in self.text_towers() if getattr(t, "needs_fit", False)]
        if towers:
            texts = datamodule.train_texts()
            for t in towers:
                t.fit_tokenizer(texts)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None:  # runs before a checkpoint is restored, which then overwrites the vocabulary
            self.prepare_text(dm)

    def tokens(self, tower: nn.Module, texts: Sequence[str]) -> dict[str, Tensor]:
        return {k: v.to(self.device) for k, v in tower.tokenize(list(texts)).items()}  # type: ignore[operator]

    def encode_texts(self, texts: Sequence[str], tower: nn.Module, projection: nn.Module) -> Tensor:
        """Raw strings -> (B, D) L2-normalised embeddings through ``tower`` and ``projection``."""
        return F.normalize(projection(tower(**self.tokens(tower, texts))), dim=1)

    @torch.no_grad()
    def encode_texts_batched(self, texts: Sequence[str], tower: nn.Module, projection: nn.Module) -> Tensor:
        step = self.eval_batch_size
        parts = [
            self.encode_texts(texts[i : i + step], tower, projection).float().cpu() for i in range(0, len(texts), step)
        ]
        return torch.cat(parts)

    # --- loss ------------------------------------------------------------------------------------------
    def pair_loss(self, a: Tensor, b: Tensor, b_negatives: Tensor | None = None) -> Tensor:
        """Loss of matched rows ``a`` (N, D), ``b`` (N, D) at scale ``exp(logit_scale)``; under DDP the
        keys are the pairs of every rank (the in-batch sampler gathers them)."""
        return self.loss(a, b, self.logit_scale.exp(), **self.negatives.two_tower_keys(a, b, b_negatives))

    def log_step(self, loss: Tensor, batch_size: int) -> None:
        self.log("train/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch_size)
        self.log("train/logit_scale", self.logit_scale.detach().exp(), batch_size=batch_size)
        if hasattr(self.loss, "logit_bias"):
            self.log("train/logit_bias", self.loss.logit_bias.detach(), batch_size=batch_size)

    # --- the temperature clamp -------------------------------------------------------------------------
    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        self.logit_scale.clamp_(max=math.log(self.max_logit_scale))

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.clamp_logit_scale()

    # --- evaluation --------------------------------------------------------------------------------------
    def evaluate_metrics(self, datamodule: Any) -> dict[str, float]:
        raise NotImplementedError

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        for name, value in self.evaluate_metrics(self.trainer.datamodule).items():  # type: ignore[attr-defined]
            prog = name.endswith(("zero_shot_top1", "mean_recall"))
            self.log(name, value, prog_bar=prog, sync_dist=False, rank_zero_only=False)


class CLIP(DualEncoderObjective):
    """Image tower ``head(encoder(.))`` and text tower ``text_projection(text_encoder(.))``.

    Args (beyond :class:`DualEncoderObjective`'s): ``freeze_image`` locks the image encoder (LiT:
    a pretrained image tower, a text tower trained to match it); the head still trains.
    Batches: ``{"image": (B, C, H, W), "text": list[str], ...}``.
    """

    objective_name = "clip"
    supports_grad_cache = True

    def __init__(self, *args: Any, freeze_image: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.freeze_image = freeze_image
        if freeze_image:
            self.encoder.requires_grad_(False)
        embed_dim = getattr(self.head, "out_dim", None) or self.encoder.out_dim
        self.text_projection = nn.Linear(self.text_encoder.out_dim, embed_dim, bias=False)
        nn.init.normal_(self.text_projection.weight, std=self.text_encoder.out_dim**-0.5)
        self.train()

    def frozen_modules(self) -> list[nn.Module]:
        return super().frozen_modules() + ([self.encoder] if getattr(self, "freeze_image", False) else [])

    def encode_image(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, D) L2-normalised."""
        return F.normalize(self.head(self.encoder(x)), dim=1)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """list of B strings -> (B, D) L2-normalised."""
        return self.encode_texts(texts, self.text_encoder, self.text_projection)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        streams = [(self.encode_image, batch["image"]), (self.encode_text, batch["text"])]
        images, texts = self.grad_cache(self, streams)  # = encode_image(...), encode_text(...)
        loss = self.pair_loss(images, texts)
        self.log_step(loss, len(batch["text"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        loss = self.pair_loss(self.encode_image(batch["image"]), self.encode_text(batch["text"]))
        self.log("val/loss", loss, sync_dist=True, batch_size=len(batch["text"]))

    @torch.no_grad()
    def evaluate_metrics(self, datamodule: Any) -> dict[str, float]:
        """Zero-shot classification and image↔text retrieval on the datamodule's validation split.

        Returns ``val/i2t_recall@{1,5,10}``, ``val/t2i_recall@{1,5,10}`` (with ``_chance``),
        ``val/{i2t,t2i}_median_rank``, ``val/mean_recall`` and, for labelled data with class names,
        ``val/zero_shot_top1`` (and ``top5`` with more than 5 classes). The same numbers are logged at
        every validation and recomputed by ``contrastlab-eval`` from a checkpoint.
        """
        datamodule.setup("validate")
        self.prepare_text(datamodule)
        was_training = self.training
        self.eval()
        try:
            images, labels = embed_loader(self.encode_image, datamodule.val_image_dataloader(), self.device)
            captions, owner = datamodule.val_captions()
            texts = self.encode_texts_batched(captions, self.text_encoder, self.text_projection)
            out = cross_modal_retrieval(images, texts, owner, ("i2t", "t2i"), chunk_size=self.eval_chunk_size)
            names = getattr(datamodule, "class_names", None)
            if names and bool((labels >= 0).any()):
                encode = lambda prompts: self.encode_texts_batched(prompts, self.text_encoder, self.text_projection)  # noqa: E731
                classifier = zero_shot_classifier(encode, names, datamodule.templates)
                acc = zero_shot_accuracy(images, labels, classifier, top=(1, 5) if len(names) > 5 else (1,))
                out.update({f"zero_shot_top{k}": v for k, v in acc.items()})
        finally:
            self.train(was_training)
        return {f"val/{k}": v for k, v in out.items()}
