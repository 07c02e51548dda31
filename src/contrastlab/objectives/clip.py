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

from contrastlab import distributed
from contrastlab.data.base import capabilities
from contrastlab.data.templates import resolve_templates
from contrastlab.encoders.open_clip_towers import residual_blocks, split_by_order
from contrastlab.errors import ConfigError
from contrastlab.evaluation.callbacks import init_metrics, log_at_start
from contrastlab.evaluation.cross_modal import cross_modal_retrieval
from contrastlab.evaluation.embed_cache import embed_across_ranks
from contrastlab.evaluation.zero_shot import zero_shot_classifier, zero_shot_metrics
from contrastlab.negatives.kinds import PairKeys
from contrastlab.objectives.base import ContrastiveObjective
from contrastlab.objectives.optim import param_groups


class DualEncoderObjective(ContrastiveObjective):
    """Two towers, a learnable ``logit_scale`` and a pair loss.

    Args (beyond :class:`ContrastiveObjective`'s):
        text_encoder: a text tower from :mod:`contrastlab.encoders.text` (owns its tokenizer).
        freeze_text: lock the text tower's weights (LiT-style; its projection still trains).
        init_temperature: start ``logit_scale`` at ``log(1/init_temperature)``; None: the loss's choice.
        learn_logit_scale: train ``logit_scale`` (else it stays at its initial value).
        max_logit_scale: clamp ``exp(logit_scale)`` to at most this after every optimizer step.
        eval_batch_size, eval_chunk_size: texts per forward pass / queries per similarity block in evaluation.
        log_init: log :meth:`evaluate_metrics` of the starting weights once before the first step, each name
            with an ``_init`` suffix (the baseline fine-tuning is measured against).

    The sampler is a :class:`~contrastlab.negatives.kinds.PairKeys` (``sampler=in_batch``): the keys of
    :meth:`pair_loss`.
    """

    consumes = "pairs"
    sampler_kind = PairKeys
    negatives: PairKeys

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
        log_init: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.log_init = log_init
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
        """(len(texts), D) float32 CPU, ``eval_batch_size`` texts per pass. Under data parallelism (a collective
        call: every rank makes it) each rank encodes its contiguous share and the shares are gathered."""
        step = self.eval_batch_size
        start, end = distributed.shard_bounds(len(texts)) if len(texts) >= distributed.world_size() else (0, None)
        mine = texts[start:end]
        parts = [
            self.encode_texts(mine[i : i + step], tower, projection).float().cpu() for i in range(0, len(mine), step)
        ]
        return torch.cat(parts) if end is None else distributed.gather_rows(torch.cat(parts))

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
            prog = name.endswith(("zero_shot_top1", "mean_recall", "ndcg@10"))
            self.log(name, value, prog_bar=prog, sync_dist=False, rank_zero_only=False)

    def on_train_start(self) -> None:
        """The pretrained (or random) baseline: :meth:`evaluate_metrics` of the starting weights, logged once
        before the first step as ``<name>_init`` (``val/q2d_recall@1_init``, ``val/ndcg@10_init``, ...; chance
        levels left out). Skipped on a resumed run (its first run logged them) and when validation is off."""
        trainer = self.trainer
        dm = getattr(trainer, "datamodule", None)
        if not self.log_init or dm is None or trainer.global_step > 0 or not trainer.limit_val_batches:
            return
        log_at_start(trainer, init_metrics(self.evaluate_metrics(dm)))


class CLIP(DualEncoderObjective):
    """Image tower ``head(encoder(.))`` and text tower ``text_projection(text_encoder(.))``.

    Args (beyond :class:`DualEncoderObjective`'s):
        freeze_image: lock the image encoder (LiT: a pretrained image tower, a text tower trained to match
            it); the head still trains.
        unfreeze_last_n: on each locked tower (``freeze_image`` / ``freeze_text``), train its last ``N``
            residual blocks again and everything after them (final norm, pooling, projection); 0: locked
            towers stay fully locked. A partly unlocked tower stays in training mode.
        image_lr, text_lr: learning rate of the image side (encoder and head) / the text side (text encoder
            and projection); None: the optimizer's. Scaled like it under ``lr_scaling``.
        templates: zero-shot prompt templates for evaluation: a list, ``default``, ``openai_imagenet`` or a
            file (:mod:`contrastlab.data.templates`); None: the datamodule's.

    A joint image-text model as ``encoder`` (``encoder=open_clip``, which carries ``paired_text_tower``)
    brings its own text tower and projections: the objective takes that tower as ``text_encoder`` (the
    ``text_encoder`` group is not used), adds no head or text projection (so ``encode_image`` and
    ``encode_text`` are open_clip's, L2-normalised), and starts ``logit_scale`` (and a SigLIP loss's bias)
    at the model's values unless ``init_temperature`` is set.
    Batches: ``{"image": (B, C, H, W), "text": list[str], ...}``.
    """

    objective_name = "clip"
    supports_grad_cache = True

    def __init__(
        self,
        *args: Any,
        freeze_image: bool = False,
        unfreeze_last_n: int = 0,
        image_lr: float | None = None,
        text_lr: float | None = None,
        templates: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        encoder = kwargs.get("encoder", args[0] if args else None)
        paired = getattr(encoder, "paired_text_tower", None)
        if paired is not None:  # a joint model: its own text tower replaces any text_encoder given
            kwargs["text_encoder"] = paired
        super().__init__(*args, **kwargs)
        self.joint = paired is not None
        self.freeze_image = freeze_image
        if freeze_image:
            self.encoder.requires_grad_(False)
        if self.joint:
            self.head = nn.Identity()  # the model's own projections map both towers into the shared space
            self.text_projection: nn.Module = nn.Identity()
            if kwargs.get("init_temperature") is None:
                with torch.no_grad():
                    self.logit_scale.fill_(float(encoder.init_logit_scale))
                    bias = getattr(encoder, "init_logit_bias", None)
                    if bias is not None and isinstance(getattr(self.loss, "logit_bias", None), Tensor):
                        self.loss.logit_bias.fill_(float(bias))
        else:
            embed_dim = getattr(self.head, "out_dim", None) or self.encoder.out_dim
            self.text_projection = nn.Linear(self.text_encoder.out_dim, embed_dim, bias=False)
            nn.init.normal_(self.text_projection.weight, std=self.text_encoder.out_dim**-0.5)
        self.image_lr, self.text_lr, self.templates = image_lr, text_lr, templates
        self.unfreeze_last_n = int(unfreeze_last_n)
        if self.unfreeze_last_n:
            self.unfreeze_blocks(self.unfreeze_last_n)
        self.train()

    # --- fine-tuning modes -------------------------------------------------------------------------------
    def locked_towers(self) -> dict[str, nn.Module]:
        towers = {"image": self.encoder} if self.freeze_image else {}
        return towers | ({"text": self.text_encoder} if self.freeze_text else {})

    def unfreeze_blocks(self, n: int) -> None:
        """Train the last ``n`` residual blocks of every locked tower again, and what follows them."""
        locked = self.locked_towers()
        if not locked:
            raise ConfigError(
                f"objective.unfreeze_last_n={n} unlocks blocks of a locked tower, and none is locked; set "
                "objective.freeze_image=true or objective.freeze_text=true (or objective.unfreeze_last_n=0)."
            )
        for side, tower in locked.items():
            _, blocks, after = layer_groups(tower)
            if not 0 <= n <= len(blocks):
                raise ConfigError(
                    f"objective.unfreeze_last_n={n} but the {side} tower has {len(blocks)} residual blocks; "
                    f"set objective.unfreeze_last_n between 0 and {len(blocks)}."
                )
            for p in [*(p for b in blocks[len(blocks) - n :] for p in b.parameters()), *after]:
                p.requires_grad_(True)

    def optimizer_groups(self, weight_decay: float, lr_factor: float = 1.0) -> list[dict]:
        """:func:`param_groups` with ``image_lr`` on ``encoder.``/``head.`` and ``text_lr`` on
        ``text_encoder.``/``text_projection.`` parameters (times ``lr_factor``)."""
        lrs: dict[str, float] = {}
        for lr, prefixes in (
            (self.image_lr, ("encoder.", "head.")),
            (self.text_lr, ("text_encoder.", "text_projection.")),
        ):
            if lr is not None:
                lrs.update(dict.fromkeys(prefixes, float(lr) * lr_factor))
        return param_groups(self, weight_decay, lrs)

    def frozen_modules(self) -> list[nn.Module]:
        """Fully locked towers (kept in eval mode); a tower partly unlocked by ``unfreeze_last_n`` is not one."""
        if getattr(self, "unfreeze_last_n", 0):
            return []
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
    def evaluate_metrics(self, datamodule: Any, templates: str | Sequence[str] | None = None) -> dict[str, float]:
        """Zero-shot classification and image↔text retrieval on the datamodule's validation split, as
        clip_benchmark reports them.

        Image-caption data: ``val/i2t_recall@{1,5,10}`` (a hit: any of the image's captions),
        ``val/t2i_recall@{1,5,10}`` (with ``_chance``), ``val/{i2t,t2i}_median_rank`` and ``val/mean_recall``.
        Labelled data with class names (an image-caption table with a label column, or an image folder:
        its class folders, ``_`` read as a space): ``val/zero_shot_top1``, ``val/zero_shot_top5`` (more
        than 5 classes) and ``val/zero_shot_mean_per_class_recall``, with prompts from ``templates``
        (default: the objective's ``templates``, else the datamodule's, else the ``default`` set). The same
        numbers are logged at every validation and recomputed by ``contrastlab-eval`` from a checkpoint.
        """
        datamodule.setup("validate")
        self.prepare_text(datamodule)
        was_training = self.training
        self.eval()
        try:
            loader = getattr(datamodule, "val_image_dataloader", None) or datamodule.val_dataloader
            images, labels = embed_across_ranks(self.encode_image, loader(), self.device)  # each rank: its share
            out: dict[str, float] = {}
            if capabilities(datamodule).has_captions:
                captions, owner = datamodule.val_captions()
                texts = self.encode_texts_batched(captions, self.text_encoder, self.text_projection)
                out.update(cross_modal_retrieval(images, texts, owner, ("i2t", "t2i"), chunk_size=self.eval_chunk_size))
            names = class_names_of(datamodule)
            if names and bool((labels >= 0).any()):
                chosen = next((t for t in (templates, self.templates) if t is not None), None)
                key = "eval.objective.templates" if templates is not None else "objective.templates"
                if chosen is None:
                    chosen, key = getattr(datamodule, "templates", None), "data.templates"
                prompts = resolve_templates(chosen, key)
                encode = lambda p: self.encode_texts_batched(p, self.text_encoder, self.text_projection)  # noqa: E731
                classifier = zero_shot_classifier(encode, names, prompts)
                out.update({f"zero_shot_{k}": v for k, v in zero_shot_metrics(images, labels, classifier).items()})
        finally:
            self.train(was_training)
        return {f"val/{k}": v for k, v in out.items()}


def class_names_of(datamodule: Any) -> list[str] | None:
    """The datamodule's ``class_names``, or its class folders (``classes``) with ``_`` read as a space."""
    names = getattr(datamodule, "class_names", None)
    if names:
        return list(names)
    folders = getattr(datamodule, "classes", None)
    return [str(c).replace("_", " ") for c in folders] if folders else None


def layer_groups(tower: nn.Module) -> tuple[list[nn.Parameter], list[nn.Module], list[nn.Parameter]]:
    """``(before the blocks, the residual blocks, after them)`` of a tower: its own ``layer_groups()`` when
    it has one (open_clip towers), else the largest ``ModuleList``/``Sequential`` of same-type children as
    the blocks, and the parameters registered after the last of them as what follows."""
    own = getattr(tower, "layer_groups", None)
    return own() if own is not None else split_by_order(tower, residual_blocks(tower))
