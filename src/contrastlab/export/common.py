"""What every exporter needs: the towers of a loaded checkpoint, sample inputs, and the two errors.

An exporter is a plain function ``export(ckpt, output_dir, **options) -> dict`` (the summary the command
prints), chosen by ``format=<name>`` through ``conf/format/<name>.yaml``'s ``_target_``; this module holds
nothing format-specific, so each format's module stands alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastlab.errors import BadInputError, RunFailure

SAMPLE_TEXTS = (
    "how do I reverse a list in python",
    "a small red circle on the left",
    "return the sum of two numbers",
    "the quick brown fox jumps over the lazy dog and keeps on running far away",
    "ok",
)


class ExportFormatError(BadInputError, ValueError):
    """The chosen ``format`` (or ``format.tower``) does not fit the checkpoint; the message says what does."""


class ExportCheckFailed(RunFailure):
    """The exported model does not reproduce the checkpoint's embeddings within tolerance."""


@dataclass
class TextTower:
    """One text tower of a checkpoint: ``normalize(projection(encoder(**encoder.tokenize(texts))))`` is the
    embedding the checkpoint's model computes (``name``: text, query or document)."""

    name: str
    encoder: nn.Module
    projection: nn.Module

    @torch.no_grad()
    def embed(self, texts: list[str]) -> Tensor:
        """(B, D) L2-normalised, float32 on CPU."""
        device = next(self.encoder.parameters()).device
        tokens = {k: v.to(device) for k, v in self.encoder.tokenize(texts).items()}  # type: ignore[operator]
        return F.normalize(self.projection(self.encoder(**tokens)), dim=1).float().cpu()

    @property
    def has_projection(self) -> bool:
        return not isinstance(self.projection, nn.Identity)


@dataclass
class ImageTower:
    """The image tower of a checkpoint: ``fn(images (B, C, H, W)) -> (B, D)`` (``space``: ``shared`` =
    CLIP's normalised joint space, ``encoder`` = the encoder output, as ``contrastlab-embed`` writes them)."""

    fn: Callable[[Tensor], Tensor]
    space: str
    module: nn.Module


def _objective(ckpt: Any) -> str:
    return str(getattr(ckpt, "objective", None) or getattr(ckpt.model, "objective_name", "?"))


def text_towers(ckpt: Any, which: str = "auto", fmt: str = "?") -> list[TextTower]:
    """The checkpoint's text towers that ``which`` names: ``auto`` (every one), ``text`` (the one shared
    tower), ``query`` or ``document`` (a bi-encoder's). Raises :class:`ExportFormatError` when there is none."""
    model, objective = ckpt.model, _objective(ckpt)
    encoder = getattr(model, "text_encoder", None)
    if encoder is None:
        raise ExportFormatError(
            f"format={fmt} exports a text tower and this objective={objective} checkpoint has none; "
            + ("use format=onnx (its image tower)." if fmt != "onnx" else "set format.tower=image.")
        )
    if hasattr(model, "query_projection"):  # a bi-encoder
        if getattr(model, "shared", True):
            towers = {"text": TextTower("text", encoder, model.query_projection)}
            towers["query"] = towers["document"] = towers["text"]
            pick = ["text"] if which == "auto" else [which]
        else:
            towers = {
                "query": TextTower("query", encoder, model.query_projection),
                "document": TextTower("document", model.doc_encoder, model.doc_projection),
            }
            if which == "text":
                raise ExportFormatError(
                    f"this bi-encoder has two text towers (objective.shared=false); set format.tower=query or "
                    f"format.tower=document{' (or auto: both)' if fmt == 'onnx' else ''}."
                )
            pick = ["query", "document"] if which == "auto" else [which]
    else:  # CLIP: one text tower and its projection
        towers = {"text": TextTower("text", encoder, model.text_projection)}
        if which in ("query", "document"):
            raise ExportFormatError(f"objective={objective} has one text tower; set format.tower=text.")
        pick = ["text"]
    if any(p not in towers for p in pick):
        raise ExportFormatError(
            f"format.tower={which} is not a text tower; set format.tower=auto, text, query or document."
        )
    return [towers[p] for p in pick]


def one_hf_tower(ckpt: Any, which: str, fmt: str, two_towers_why: str = "") -> TextTower:
    """The single Hugging Face text tower a one-model format (``hf``, ``sentence_transformers``) writes:
    :func:`text_towers` narrowed to one, refusing a bi-encoder's two towers (``two_towers_why`` is added to
    that message) and a tower that is not ``text_encoder=hf``."""
    from contrastlab.encoders.text import HFTextEncoder  # here: exporting an image tower never loads transformers

    picked = text_towers(ckpt, which, fmt)
    if len(picked) > 1:
        raise ExportFormatError(
            f"this bi-encoder has two text towers (objective.shared=false){two_towers_why}; set format.tower=query "
            "or format.tower=document."
        )
    chosen = picked[0]
    if not isinstance(chosen.encoder, HFTextEncoder):
        raise ExportFormatError(
            f"format={fmt} needs a Hugging Face text tower (text_encoder=hf); this checkpoint's is "
            f"{type(chosen.encoder).__name__}; use format=onnx instead."
        )
    return chosen


def image_tower(ckpt: Any, fmt: str = "?") -> ImageTower:
    model, objective = ckpt.model, _objective(ckpt)
    if getattr(model, "encoder", None) is None:
        raise ExportFormatError(
            f"objective={objective} has no image tower; set format.tower=text (or auto) to export its text tower."
        )
    if hasattr(model, "encode_image"):
        return ImageTower(model.encode_image, "shared", model)
    return ImageTower(model.embed, "encoder", model)


def sample_texts(ckpt: Any, n: int = 8) -> list[str]:
    """Up to ``n`` texts of the checkpoint's validation data (queries or captions), else fixed samples."""
    dm = ckpt.datamodule
    texts: list[str] = []
    for attr in ("val_queries", "val_captions"):
        fn = getattr(dm, attr, None)
        if fn is None:
            continue
        try:
            got = fn()
        except Exception:  # no validation texts here: the fixed samples do
            continue
        texts = list(got[0] if isinstance(got, tuple) else got)
        break
    texts = [t for t in texts if t][:n]
    return texts + list(SAMPLE_TEXTS[: max(0, n - len(texts))])


def sample_images(ckpt: Any, n: int = 4) -> Tensor:
    """(n, C, H, W) validation images of the checkpoint's data, as the evaluation transform makes them."""
    dm = ckpt.datamodule
    loader = (getattr(dm, "val_image_dataloader", None) or dm.val_dataloader)()
    images: list[Tensor] = []
    for batch in loader:
        x = batch["image"] if isinstance(batch, dict) else batch[0]
        images.append(x)
        if sum(len(i) for i in images) >= n:
            break
    if not images:
        raise ExportFormatError("the checkpoint's data has no validation images to trace the image tower with.")
    x = torch.cat(images)[:n]
    return x if len(x) >= n else x.repeat((n + len(x) - 1) // len(x), 1, 1, 1)[:n]


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().max())
