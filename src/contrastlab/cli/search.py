"""``contrastlab-search``: nearest neighbours in a folder written by ``contrastlab-embed`` (faiss).

    contrastlab-search index=outputs/simclr/runs/<run>/embeddings/val query=idx:12
    contrastlab-search index=... query=photos/cat.png k=10
    contrastlab-search index=<clip embeddings> query="two small red triangles"   # nearest captions
    contrastlab-search index=... query=idx:3 index_type=hnsw                      # approximate, large sets

Vectors are L2-normalised, so the inner product is the cosine similarity. The faiss index is saved
in the folder (``faiss_<target>_<type>.index``) and reused while the embeddings and options are
unchanged. ``flat`` is exact; ``ivf`` (inverted lists, ``nlist`` cells, ``nprobe`` visited) and
``hnsw`` (graph, ``hnsw_m`` links) are approximate and fast on millions of vectors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from contrastlab.cli import boundary
from contrastlab.cli.embed import image_encoder_of, text_encoder_of
from contrastlab.config import build
from contrastlab.config.checks import ConfigError
from contrastlab.data.transforms import to_float_image
from contrastlab.evaluation.embed import embed_loader
from contrastlab.training.checkpoints import load_checkpoint

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
INDEX_TYPES = ("flat", "ivf", "hnsw")


@dataclass
class EmbeddingFolder:
    """The files of a ``contrastlab-embed`` folder."""

    root: Path
    meta: dict[str, Any]
    embeddings: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,)
    ids: np.ndarray  # (N,)
    splits: np.ndarray  # (N,)
    paths: list[str] | None = None
    captions: list[str] | None = None
    caption_rows: np.ndarray | None = None  # (N_captions,) image row of each caption
    text_embeddings: np.ndarray | None = None  # (N_captions, D)
    texts: list[str] | None = None  # text-pair data: the documents (the rows are texts)
    first_caption: dict[int, str] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: str | Path | None) -> EmbeddingFolder:
        if folder in (None, ""):
            raise ConfigError("index= is required: a folder written by contrastlab-embed (it holds embeddings.npy)")
        root = Path(str(folder)).expanduser()
        if not (root / "embeddings.npy").is_file() or not (root / "meta.json").is_file():
            raise ConfigError(f"index={folder} has no embeddings.npy/meta.json; write it with contrastlab-embed first")
        opt = lambda name: root / name if (root / name).exists() else None  # noqa: E731
        out = cls(
            root,
            json.loads((root / "meta.json").read_text()),
            np.load(root / "embeddings.npy"),
            np.load(root / "labels.npy"),
            np.load(root / "ids.npy"),
            np.load(root / "splits.npy"),
        )
        if p := opt("paths.json"):
            out.paths = json.loads(p.read_text())
        if p := opt("captions.json"):
            out.captions = json.loads(p.read_text())
            out.caption_rows = np.load(root / "caption_rows.npy")
            for cap, row in zip(out.captions, out.caption_rows.tolist(), strict=True):
                out.first_caption.setdefault(int(row), cap)
        if p := opt("text_embeddings.npy"):
            out.text_embeddings = np.load(p)
        if p := opt("texts.json"):
            out.texts = json.loads(p.read_text())
        return out


def normalized(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def build_index(vectors: np.ndarray, index_type: str = "flat", nlist: int = 100, hnsw_m: int = 32) -> Any:
    """A faiss inner-product index over L2-normalised ``vectors`` (N, D)."""
    import faiss

    x = normalized(vectors)
    d = x.shape[1]
    if index_type == "flat":
        index = faiss.IndexFlatIP(d)
    elif index_type == "ivf":
        cells = max(1, min(nlist, x.shape[0] // 39))  # faiss wants >= 39 training points per cell
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        raise ConfigError(f"index_type must be one of {', '.join(INDEX_TYPES)}, got {index_type}")
    index.add(x)
    return index


def load_or_build_index(
    folder: EmbeddingFolder, target: str, index_type: str, nlist: int, hnsw_m: int, rebuild: bool = False
) -> Any:
    """The saved index of ``target`` (``image`` | ``text``) when it matches the embeddings and options,
    else a new one (saved next to them)."""
    import faiss

    name = "embeddings.npy" if target == "image" else "text_embeddings.npy"
    vectors = folder.embeddings if target == "image" else folder.text_embeddings
    assert vectors is not None
    path = folder.root / f"faiss_{target}_{index_type}.index"
    sidecar = path.with_suffix(".json")
    key = {
        "n": int(vectors.shape[0]),
        "mtime": (folder.root / name).stat().st_mtime_ns,
        "nlist": nlist,
        "hnsw_m": hnsw_m,
    }
    if not rebuild and path.exists() and sidecar.exists() and json.loads(sidecar.read_text()) == key:
        return faiss.read_index(str(path))
    index = build_index(vectors, index_type, nlist, hnsw_m)
    faiss.write_index(index, str(path))
    sidecar.write_text(json.dumps(key))
    return index


def parse_query(query: Any) -> tuple[str, Any]:
    """``("row", int)`` for ``idx:N``, ``("image", Path)`` for an image file, else ``("text", str)``."""
    if query is None or str(query).strip() == "":
        raise ConfigError(
            'query= is required: idx:<row>, a path to an image, or a text in quotes (query="a red circle")'
        )
    q = str(query)
    if q.startswith("idx:"):
        try:
            return "row", int(q[4:])
        except ValueError as e:
            raise ConfigError(f"query={q}: idx: must be followed by a row number, e.g. query=idx:12") from e
    p = Path(q).expanduser()
    if p.suffix.lower() in IMAGE_SUFFIXES:
        if not p.is_file():
            raise ConfigError(f"query={q} looks like an image path but the file does not exist")
        return "image", p
    return "text", q


def embed_query(folder: EmbeddingFolder, kind: str, value: Any, cfg: DictConfig) -> np.ndarray:
    """The (1, D) query: a row of the folder, or an image/text embedded with the folder's checkpoint."""
    if kind == "row":
        if not 0 <= value < len(folder.embeddings):
            raise ConfigError(f"query=idx:{value} is out of range; the index has rows 0..{len(folder.embeddings) - 1}")
        return folder.embeddings[value : value + 1]
    ckpt = load_checkpoint(
        folder.meta["checkpoint"], data=folder.meta.get("data"), device=cfg.device, trust=cfg.trust_checkpoint
    )
    model, dm = ckpt.model, ckpt.datamodule
    if kind == "image":
        from PIL import Image

        with Image.open(value) as img:
            pixels = to_float_image(img.convert("L" if int(getattr(dm, "channels", 3)) == 1 else "RGB"))
        fn, _ = image_encoder_of(model, folder.meta.get("space", "encoder"))
        batch: Any = dm.eval_transform(pixels)[None]
    else:
        fn = text_encoder_of(model)  # type: ignore[assignment]
        if fn is None:
            raise ConfigError(
                f"query={value!r} is not idx:<row> or an image file, and a {ckpt.objective} checkpoint has "
                "no text tower; text queries need an image-text checkpoint (objective=clip)"
            )
        batch = [value]
    return embed_loader(fn, [batch], key=None, fields=(), module=model)[0].numpy()


def choose_target(folder: EmbeddingFolder, kind: str, target: str) -> str:
    if target not in ("auto", "image", "text"):
        raise ConfigError(f"target must be auto, image or text, got {target}")
    if folder.meta.get("space") == "text":  # documents of a text bi-encoder: every query is a text
        if kind == "image" or target == "text":
            raise ConfigError(f"index={folder.root} holds text documents; query with a text or idx:<row>")
        return "image"
    if kind == "text" and folder.text_embeddings is None and folder.meta.get("space") != "shared":
        raise ConfigError(
            f"a text query needs an image-text checkpoint (objective=clip), but index={folder.root} holds "
            f"{folder.meta.get('objective')} image embeddings; query=idx:<row> or an image path works here"
        )
    if target == "auto":
        target = "text" if kind == "text" and folder.text_embeddings is not None else "image"
    if target == "text" and folder.text_embeddings is None:
        raise ConfigError(
            f"index={folder.root} has no text_embeddings.npy (no captions or no text tower); use target=image"
        )
    cross = (kind == "text") != (target == "text")
    if cross and folder.meta.get("space") != "shared":
        raise ConfigError(
            "comparing texts with images needs embeddings in the shared image-text space; "
            "re-run contrastlab-embed with space=shared on an image-text checkpoint"
        )
    return target


def search(cfg: DictConfig) -> dict[str, Any]:
    """Run one query; returns ``{"query", "target", "results": [{rank, row, score, label, ...}], ...}``."""
    folder = EmbeddingFolder.load(cfg.index)
    kind, value = parse_query(cfg.query)
    target = choose_target(folder, kind, cfg.target)
    if int(cfg.k) < 1:
        raise ConfigError(f"k must be >= 1, got {cfg.k}")
    q = normalized(embed_query(folder, kind, value, cfg))
    index = load_or_build_index(folder, target, cfg.index_type, cfg.nlist, cfg.hnsw_m, cfg.rebuild)
    if cfg.index_type == "ivf":
        index.nprobe = int(cfg.nprobe)
    if cfg.index_type == "hnsw":
        index.hnsw.efSearch = max(int(cfg.ef_search), int(cfg.k) + 1)
    skip_self = kind == "row" and target == "image"
    scores, rows = index.search(q, int(cfg.k) + int(skip_self))
    hits = [(float(s), int(r)) for s, r in zip(scores[0], rows[0], strict=True) if r >= 0]
    if skip_self:
        hits = [h for h in hits if h[1] != value]
    hits = hits[: int(cfg.k)]
    query_label = int(folder.labels[value]) if kind == "row" else None
    results = []
    for rank, (score, row) in enumerate(hits, 1):
        image_row = row if target == "image" else int(folder.caption_rows[row])  # type: ignore[index]
        item: dict[str, Any] = {
            "rank": rank,
            "row": row,
            "score": score,
            "label": int(folder.labels[image_row]),
            "split": str(folder.splits[image_row]),
            "id": int(folder.ids[image_row]),
        }
        if target == "text":
            item["caption"] = folder.captions[row]  # type: ignore[index]
            item["image_row"] = image_row
        elif image_row in folder.first_caption:
            item["caption"] = folder.first_caption[image_row]
        if folder.texts is not None:
            item["text"] = folder.texts[row]
        if folder.paths is not None:
            item["path"] = folder.paths[image_row]
        results.append(item)
    matches = None
    if query_label is not None and query_label >= 0:
        matches = sum(r["label"] == query_label for r in results)
    return {
        "query": str(cfg.query),
        "kind": kind,
        "target": target,
        "space": folder.meta.get("space"),
        "query_label": query_label,
        "matches": matches,
        "results": results,
    }


def print_results(out: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    label = f" (label {out['query_label']})" if out["query_label"] is not None else ""
    what = {"text": "captions", "image": "images"}[out["target"]] if out.get("space") != "text" else "documents"
    table = Table(title=f"nearest {what} to {out['query']}{label}")
    cols = ["rank", "score", "row", "split", "id", "label"]
    extra = [c for c in ("text", "caption", "path") if any(c in r for r in out["results"])]
    for c in cols + extra:
        table.add_column(c, justify="right" if c in ("rank", "score", "row", "id", "label") else "left")
    for r in out["results"]:
        table.add_row(*(f"{r[c]:.4f}" if c == "score" else str(r.get(c, "")) for c in cols + extra))
    console.print(table)
    if out["matches"] is not None:
        console.print(f"{out['matches']}/{len(out['results'])} neighbours share the query's label {out['query_label']}")


@hydra.main(version_base="1.3", config_path=build.CONF_DIR, config_name="search")
def hydra_main(cfg: DictConfig) -> None:
    boundary.run_task(lambda c: print_results(search(c)), cfg)


def main() -> Any:
    """The ``contrastlab-search`` command; bad input ends with one line on stderr and exit status 2."""
    return boundary.run_main(hydra_main)


if __name__ == "__main__":
    main()
