"""``contrastlab-embed``: export a checkpoint's embeddings of a dataset split to a folder.

    contrastlab-embed ckpt_path=outputs/simclr/runs/<run>/checkpoints/last.ckpt   # the run's val split
    contrastlab-embed ckpt_path=... split=all data=imagefolder data.data_dir=~/photos output_dir=emb/photos

Writes into ``output_dir`` (default ``<run>/embeddings/<split>``):

* ``embeddings.npy`` (N, D) float32: one row per image (not normalised);
* ``ids.npy`` (N,) int64: each row's index in its split, ``labels.npy`` (N,) int64 (-1: unlabelled),
  ``splits.npy`` (N,) the split name of each row;
* ``paths.json`` when the images come from files; for image–text data ``captions.json`` (every
  caption), ``caption_rows.npy`` (the image row of each caption) and, when the checkpoint has a
  text tower, ``text_embeddings.npy`` (one row per caption, in the shared space);
* ``meta.json``: the checkpoint, objective, embedding space, data config and row counts.

For text-pair data (a text bi-encoder) the rows are the documents instead (``texts.json``; ``labels.npy``:
the query each answers, -1 for hard negatives), embedded with the document tower (``space`` ``text``).

``space=encoder`` is the encoder output (``model.embed``, what kNN and the probes use);
``space=shared`` the image tower's output in the image–text space (``model.encode_image``, CLIP), so
text queries can be compared with images. ``auto``: shared when the model has a text tower.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from contrastlab.cli import boundary
from contrastlab.config import build
from contrastlab.config.checks import ConfigError
from contrastlab.data.base import capabilities
from contrastlab.evaluation.embed import embed_loader
from contrastlab.training.checkpoints import LoadedCheckpoint, load_from_cfg

SPLITS = ("train", "val")


def text_encoder_of(model: Any) -> Callable[[list[str]], Tensor] | None:
    """The model's ``list[str] -> (B, D)`` text embedding (``encode_text`` or ``embed_text``), if any."""
    return getattr(model, "encode_text", None) or getattr(model, "embed_text", None)


def image_encoder_of(model: Any, space: str) -> tuple[Callable[[Tensor], Tensor], str]:
    """``(model.embed, "encoder")`` or ``(model.encode_image, "shared")``; ``auto`` picks shared for
    two-tower (image-text) models."""
    if space not in ("auto", "encoder", "shared"):
        raise ConfigError(f"space must be auto, encoder or shared, got {space}")
    shared = getattr(model, "encode_image", None)
    two_tower = shared is not None and text_encoder_of(model) is not None
    if space == "shared" and not two_tower:
        raise ConfigError("space=shared needs an image-text checkpoint (e.g. objective=clip); use space=encoder")
    if space == "shared" or (space == "auto" and two_tower):
        return shared, "shared"  # type: ignore[return-value]
    return model.embed, "encoder"


def image_loader(datamodule: Any, split: str) -> DataLoader:
    """Evaluation-transform loader of the unique images of ``split`` (``{"image", "label", "index"}``)."""
    if split == "train":
        return datamodule.eval_train_dataloader()
    fn = getattr(datamodule, "val_image_dataloader", None) or datamodule.val_dataloader
    return fn()


def item_paths(dataset: Dataset | None) -> list[str] | None:
    """File paths of a dataset's items when it reads files (``samples``/``imgs``, or an image-text split's
    image paths), looking through ``Subset`` wrappers; None otherwise."""
    indices: list[int] | None = None
    while isinstance(dataset, Subset):
        idx = list(dataset.indices)
        indices = idx if indices is None else [idx[i] for i in indices]
        dataset = dataset.dataset
    paths: list[Any] | None = None
    for attr in ("samples", "imgs"):
        items = getattr(dataset, attr, None)
        if isinstance(items, list) and items and isinstance(items[0], tuple | list):
            paths = [str(p) for p, *_ in items]
            break
    split = getattr(dataset, "split", None)
    if paths is None and split is not None:
        images = getattr(split, "images", None)
        if isinstance(images, list) and images and isinstance(images[0], str | Path):
            paths = [str(p) for p in images]
    if paths is None:
        return None
    return paths if indices is None else [paths[i] for i in indices]


def split_captions(datamodule: Any, split: str) -> list[list[str]] | None:
    """Captions of each image of ``split`` for image-text data, else None."""
    if not capabilities(datamodule).has_captions:
        return None
    data = getattr(datamodule, f"{split}_split", None)
    caps = getattr(data, "captions", None)
    return [list(c) for c in caps] if caps is not None else None


def _track(items: Iterable, total: int, description: str, progress: Progress | None) -> Iterable:
    if progress is None:
        yield from items
        return
    task = progress.add_task(description, total=total)
    for item in items:
        yield item
        progress.advance(task)


def _image_of(batch: dict[str, Any]) -> Tensor:
    if "image" not in batch:
        raise ConfigError("this data has no images to embed; choose an image dataset with data=<name>")
    return batch["image"]


def embed_images(
    fn: Callable[[Tensor], Tensor],
    loader: DataLoader,
    device: torch.device,
    progress: Progress | None,
    what: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(embeddings (N, D) float32, ids (N,), labels (N,))`` over ``loader`` (-1 where a batch has no
    ``index``/``label``), by :func:`~contrastlab.evaluation.embed.embed_loader`."""
    batches = _track(loader, len(loader), f"embedding {what}", progress)
    feats, ids, labels = embed_loader(fn, batches, device, key=_image_of, fields=("index", "label"), fill=-1)
    return feats.numpy(), ids.numpy().astype(np.int64), labels.numpy().astype(np.int64)


def embed_texts(
    fn: Callable[[list[str]], Tensor], texts: list[str], batch_size: int, progress: Progress | None
) -> np.ndarray:
    """(N, D) float32 embeddings of ``texts`` in chunks of ``batch_size``, by
    :func:`~contrastlab.evaluation.embed.embed_loader`."""
    chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    (feats,) = embed_loader(fn, _track(chunks, len(chunks), "embedding captions", progress), key=None, fields=())
    return feats.numpy()


def export_embeddings(
    ckpt: LoadedCheckpoint, split: str, out_dir: Path, space: str = "auto", show_progress: bool = True
) -> dict[str, Any]:
    """Write the files listed in the module docstring; returns the ``meta.json`` content."""
    if split not in (*SPLITS, "all"):
        raise ConfigError(f"split must be train, val or all, got {split}")
    model, dm = ckpt.model, ckpt.datamodule
    if not capabilities(dm).has_images:
        return export_documents(ckpt, split, out_dir, show_progress)
    device = next(model.parameters()).device
    image_fn, space_name = image_encoder_of(model, space)
    text_fn = text_encoder_of(model)
    chosen = list(SPLITS) if split == "all" else [split]
    feats, ids, labels, names, paths, captions, caption_rows = [], [], [], [], [], [], []
    any_paths = True
    with Progress(transient=False, disable=not show_progress) as progress:
        for s in chosen:
            f, i, y = embed_images(image_fn, image_loader(dm, s), device, progress, s)
            offset = sum(len(a) for a in feats)
            feats.append(f)
            ids.append(i)
            labels.append(y)
            names += [s] * len(f)
            base = dm.train_base if s == "train" else dm.val_base
            p = item_paths(base)
            any_paths = any_paths and p is not None and len(p) == len(f)
            if any_paths:
                paths += p  # type: ignore[operator]
            caps = split_captions(dm, s)
            if caps is not None:
                for row, cs in enumerate(caps[: len(f)]):
                    captions += cs
                    caption_rows += [offset + row] * len(cs)
        out_dir.mkdir(parents=True, exist_ok=True)
        emb = np.concatenate(feats).astype(np.float32)
        np.save(out_dir / "embeddings.npy", emb)
        np.save(out_dir / "ids.npy", np.concatenate(ids))
        np.save(out_dir / "labels.npy", np.concatenate(labels))
        np.save(out_dir / "splits.npy", np.asarray(names))
        files = ["embeddings.npy", "ids.npy", "labels.npy", "splits.npy"]
        if any_paths and paths:
            (out_dir / "paths.json").write_text(json.dumps(paths))
            files.append("paths.json")
        if captions:
            (out_dir / "captions.json").write_text(json.dumps(captions))
            np.save(out_dir / "caption_rows.npy", np.asarray(caption_rows, dtype=np.int64))
            files += ["captions.json", "caption_rows.npy"]
            if text_fn is not None:
                text = embed_texts(text_fn, captions, int(ckpt.config.data.get("batch_size", 256)), progress)
                np.save(out_dir / "text_embeddings.npy", text.astype(np.float32))
                files.append("text_embeddings.npy")
    meta = {
        "checkpoint": str(ckpt.path.resolve()),
        "objective": ckpt.objective,
        "global_step": ckpt.global_step,
        "space": space_name,
        "split": split,
        "rows": {s: names.count(s) for s in chosen},
        "dim": int(emb.shape[1]),
        "count": int(emb.shape[0]),
        "data": OmegaConf.to_container(ckpt.config.data, resolve=True),
        "files": files,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def split_documents(datamodule: Any, split: str) -> tuple[list[str], list[int]]:
    """Text-pair data: the documents of ``split`` (positives, then hard negatives) and the query row each
    answers (-1 for a negative)."""
    if split == "val" and hasattr(datamodule, "val_documents"):
        docs, owner = datamodule.val_documents()
        return list(docs), [int(o) for o in owner]
    rows = getattr(datamodule, "train_rows" if split == "train" else "val_rows", None)
    if rows is None:
        raise ConfigError("this data has neither images nor documents to embed; choose another data=<name>")
    docs, owner = [r["positive"] for r in rows], list(range(len(rows)))
    for r in rows:
        docs += list(r.get("negatives", []))
        owner += [-1] * len(r.get("negatives", []))
    return docs, owner


def export_documents(ckpt: LoadedCheckpoint, split: str, out_dir: Path, show_progress: bool = True) -> dict[str, Any]:
    """Text-only data (a text bi-encoder): the documents embedded with the document tower, searchable
    by text queries embedded with the query tower. ``texts.json`` holds the documents, ``labels.npy``
    the query row each document answers (-1: a hard negative)."""
    model, dm = ckpt.model, ckpt.datamodule
    doc_fn = getattr(model, "encode_document", None) or text_encoder_of(model)
    if doc_fn is None:
        raise ConfigError(f"data has no images and objective={ckpt.objective} has no text tower; nothing to embed")
    chosen = list(SPLITS) if split == "all" else [split]
    texts, owners, names = [], [], []
    for s in chosen:
        docs, owner = split_documents(dm, s)
        texts += docs
        owners += owner
        names += [s] * len(docs)
    with Progress(transient=False, disable=not show_progress) as progress:
        emb = embed_texts(doc_fn, texts, int(ckpt.config.data.get("batch_size", 256)), progress).astype(np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "embeddings.npy", emb)
    np.save(out_dir / "ids.npy", np.arange(len(texts), dtype=np.int64))
    np.save(out_dir / "labels.npy", np.asarray(owners, dtype=np.int64))
    np.save(out_dir / "splits.npy", np.asarray(names))
    (out_dir / "texts.json").write_text(json.dumps(texts))
    meta = {
        "checkpoint": str(ckpt.path.resolve()),
        "objective": ckpt.objective,
        "global_step": ckpt.global_step,
        "space": "text",
        "split": split,
        "rows": {s: names.count(s) for s in chosen},
        "dim": int(emb.shape[1]),
        "count": int(emb.shape[0]),
        "data": OmegaConf.to_container(ckpt.config.data, resolve=True),
        "files": ["embeddings.npy", "ids.npy", "labels.npy", "splits.npy", "texts.json"],
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def run_embed(cfg: DictConfig) -> dict[str, Any]:
    ckpt = load_from_cfg(cfg)
    out_dir = Path(cfg.output_dir) if cfg.output_dir else ckpt.run_dir / "embeddings" / cfg.split
    meta = export_embeddings(ckpt, cfg.split, out_dir, cfg.space, cfg.progress)
    rows = ", ".join(f"{v} {k}" for k, v in meta["rows"].items())
    print(f"wrote {meta['count']} embeddings ({rows}; dim {meta['dim']}, {meta['space']} space) to {out_dir}")
    print(f"search them: contrastlab-search index={out_dir} query=idx:0")
    return meta


@hydra.main(version_base="1.3", config_path=build.CONF_DIR, config_name="embed")
def hydra_main(cfg: DictConfig) -> None:
    boundary.run_task(run_embed, cfg)


def main() -> Any:
    """The ``contrastlab-embed`` command; bad input ends with one line on stderr and exit status 2."""
    return boundary.run_main(hydra_main)


if __name__ == "__main__":
    main()
