"""``contrastlab-mine``: hard negatives for text pairs, mined with a trained (or pretrained-start) bi-encoder.

    contrastlab-mine ckpt_path=outputs/biencoder/runs/<run>/checkpoints/last.ckpt input=pairs.jsonl
    contrastlab-mine ckpt_path=... input=~/beir/scifact split=train output=scifact-mined.jsonl
    contrastlab-train experiment=biencoder_text_pairs data.path=scifact-mined.jsonl     # train on them

The corpus is every document of the input: the positives and negatives of a JSONL of pairs (deduplicated), or
a BEIR folder's ``corpus.jsonl``. It is embedded with the document tower in batches (float32; memory-mapped to
a ``.npy`` file past ``memmap_over`` documents); then, ``query_chunk`` pairs at a time, the queries are embedded
with the query tower, their top ``rank_max`` neighbours found by an exact search in ``query_chunk x doc_chunk``
blocks, and the negatives chosen by :func:`contrastlab.negatives.text_mining.select_negatives` (rank window,
positives dropped, false-negative margin). Memory stays bounded for a million documents.

The output is a JSONL, one line per pair: ``{"query", "positive", "negatives": [str, ...]}`` (what
``data=text_pairs`` reads; mined negatives replace any the input had), plus ``query_id``, ``positive_id`` and
``negative_ids`` for BEIR input.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from rich.progress import Progress
from torch import Tensor

from contrastlab.cli import boundary
from contrastlab.config import build
from contrastlab.config.checks import ConfigError
from contrastlab.data.beir import BeirDataModule
from contrastlab.data.text_pairs import read_pairs
from contrastlab.errors import BadInputError
from contrastlab.evaluation.ir_metrics import iter_topk
from contrastlab.negatives.text_mining import check_window, positive_mask, select_negatives
from contrastlab.training.checkpoints import load_checkpoint


@dataclass
class MiningInput:
    """What to mine: the corpus and one entry per pair (query text, its positive's corpus row, every corpus row
    not to mine for it, and the fields the output line starts from)."""

    corpus: list[str]
    queries: list[str] = field(default_factory=list)
    positive: list[int] = field(default_factory=list)
    positives: list[list[int]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    corpus_ids: list[str] | None = None


def read_jsonl_input(path: Path, query_key: str, positive_key: str, negatives_key: str) -> MiningInput:
    """Pairs of a JSONL; the corpus is their positives and negatives (each text once)."""
    try:
        pairs = read_pairs(path, query_key, positive_key, negatives_key)
    except ValueError as err:  # its advice names data.<key>; here the keys are top-level
        raise ConfigError(str(err).replace("data.", "")) from err
    row: dict[str, int] = {}
    for p in pairs:
        for text in (p["positive"], *p["negatives"]):
            row.setdefault(text, len(row))
    by_query: dict[str, set[int]] = {}
    for p in pairs:
        by_query.setdefault(p["query"], set()).add(row[p["positive"]])
    out = MiningInput(corpus=list(row))
    for p in pairs:
        out.queries.append(p["query"])
        out.positive.append(row[p["positive"]])
        out.positives.append(sorted(by_query[p["query"]]))
        out.rows.append({"query": p["query"], "positive": p["positive"]})
    return out


def read_beir_input(root: Path, split: str, use_title: bool) -> MiningInput:
    """The judgments of ``qrels/<split>.tsv`` with score > 0 against the folder's corpus; the document with the
    query's own id, when there is one, is never a negative (BEIR's identical-id rule)."""
    dm = BeirDataModule(data_dir=str(root), train_split=split, val_split=split, use_title=use_title)
    if not (root / "qrels" / f"{split}.tsv").is_file():
        have = ", ".join(dm.splits()) or "none"
        raise ConfigError(f"input={root} has no qrels/{split}.tsv (qrels there: {have}); set split to one of them.")
    try:
        dm.setup()
    except BadInputError as err:  # its advice names data.data_dir; here the folder is input=
        raise ConfigError(str(err).replace("data.data_dir", "input")) from err
    assert dm.corpus_ids is not None
    relevant: dict[str, set[int]] = {}
    for qid, doc, grade in dm.train_judgments:
        if grade > 0:
            relevant.setdefault(qid, set()).add(doc)
    for qid, docs in relevant.items():
        if qid in dm.corpus_row:
            docs.add(dm.corpus_row[qid])
    out = MiningInput(corpus=dm.corpus, corpus_ids=dm.corpus_ids)
    for qid, doc, grade in dm.train_judgments:
        if grade <= 0:
            continue
        out.queries.append(dm.queries[qid])
        out.positive.append(doc)
        out.positives.append(sorted(relevant[qid]))
        pair = {"query": dm.queries[qid], "positive": dm.corpus[doc]}
        out.rows.append({**pair, "query_id": qid, "positive_id": dm.corpus_ids[doc]})
    return out


def read_input(cfg: DictConfig) -> MiningInput:
    if cfg.input in (None, ""):
        raise ConfigError("input= is required: a JSONL of query/positive pairs or a BEIR folder (corpus.jsonl, ...)")
    path = Path(str(cfg.input)).expanduser()
    if path.is_dir():
        return read_beir_input(path, str(cfg.split), bool(cfg.use_title))
    if not path.is_file():
        raise ConfigError(f"input={cfg.input} does not exist; pass a JSONL of query/positive pairs or a BEIR folder.")
    return read_jsonl_input(path, cfg.query_key, cfg.positive_key, cfg.negatives_key)


@torch.no_grad()
def embed_batched(fn: Callable[[list[str]], Tensor], texts: Sequence[str], batch_size: int) -> Tensor:
    """(len(texts), D) float32 on the model's device."""
    return torch.cat([fn(list(texts[i : i + batch_size])).float() for i in range(0, len(texts), batch_size)])


@torch.no_grad()
def embed_corpus(
    fn: Callable[[list[str]], Tensor],
    texts: Sequence[str],
    batch_size: int,
    memmap_path: Path | None,
    progress: Progress | None = None,
) -> np.ndarray:
    """(N, D) float32: in memory, or written batch by batch into the ``.npy`` file ``memmap_path``."""
    out: np.ndarray | None = None
    task = progress.add_task("embedding the corpus", total=len(texts)) if progress is not None else None
    for i in range(0, len(texts), batch_size):
        part = fn(list(texts[i : i + batch_size])).float().cpu().numpy()
        if out is None:
            shape = (len(texts), part.shape[1])
            if memmap_path is not None:
                memmap_path.parent.mkdir(parents=True, exist_ok=True)
                out = np.lib.format.open_memmap(memmap_path, mode="w+", dtype=np.float32, shape=shape)
            else:
                out = np.empty(shape, dtype=np.float32)
        out[i : i + len(part)] = part
        if progress is not None and task is not None:
            progress.advance(task, len(part))
    assert out is not None
    if isinstance(out, np.memmap):
        out.flush()
    return out


def mine(model: Any, data: MiningInput, cfg: DictConfig, output: Path) -> dict[str, Any]:
    """Embed, search and select (module docstring); writes ``output``; returns counts."""
    rank_min, rank_max = int(cfg.rank_min), int(cfg.rank_max)
    num = None if cfg.num_negatives is None else int(cfg.num_negatives)
    check_window(rank_min, rank_max, num, str(cfg.sampling))
    encode_query = model.encode_query
    encode_doc = getattr(model, "encode_document", encode_query)
    max_ratio = None if cfg.max_ratio is None else float(cfg.max_ratio)
    window = {"rank_min": rank_min, "rank_max": rank_max, "margin": float(cfg.margin), "max_ratio": max_ratio}
    n = len(data.corpus)
    keep_file = cfg.embeddings_path not in (None, "")
    memmap_path = Path(str(cfg.embeddings_path)).expanduser() if keep_file else None
    if memmap_path is None and n > int(cfg.memmap_over):
        memmap_path = output.with_name(output.stem + ".corpus.npy")
    generator = torch.Generator().manual_seed(int(cfg.seed))
    batch, chunk = int(cfg.batch_size), int(cfg.query_chunk)
    found, short = 0, 0
    want = num if num is not None else 0
    model.eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with Progress(transient=True, disable=not cfg.progress) as progress:
            corpus = embed_corpus(encode_doc, data.corpus, batch, memmap_path, progress if cfg.progress else None)
            task = progress.add_task("mining", total=len(data.queries))
            with open(output, "w", encoding="utf-8") as fh:
                for start in range(0, len(data.queries), chunk):
                    end = min(start + chunk, len(data.queries))
                    q = embed_batched(encode_query, data.queries[start:end], batch)
                    pos = torch.from_numpy(corpus[np.asarray(data.positive[start:end])]).to(q.device)
                    pos_scores = (q * pos).sum(1)
                    _, scores, idx = next(iter_topk(q, corpus, rank_max, len(q), int(cfg.doc_chunk)))
                    mask = positive_mask(idx, data.positives[start:end])
                    picked = select_negatives(
                        scores.cpu(), idx.cpu(), pos_scores.cpu(), mask.cpu(), **window,
                        num_negatives=num, sampling=str(cfg.sampling), generator=generator,
                    )  # fmt: skip
                    for r, negs in enumerate(picked.tolist()):
                        negs = [j for j in negs if j >= 0]
                        found += len(negs)
                        short += int(len(negs) < want)
                        line = {**data.rows[start + r], "negatives": [data.corpus[j] for j in negs]}
                        if data.corpus_ids is not None:
                            line["negative_ids"] = [data.corpus_ids[j] for j in negs]
                        fh.write(json.dumps(line, ensure_ascii=False) + "\n")
                    progress.advance(task, end - start)
    finally:
        if memmap_path is not None and not keep_file:
            memmap_path.unlink(missing_ok=True)
    return {"pairs": len(data.queries), "documents": n, "negatives": found, "short": short, "output": str(output)}


def run_mine(cfg: DictConfig) -> dict[str, Any]:
    num = None if cfg.num_negatives is None else int(cfg.num_negatives)
    check_window(int(cfg.rank_min), int(cfg.rank_max), num, str(cfg.sampling))  # before anything is read
    data = read_input(cfg)
    ckpt = load_checkpoint(
        cfg.ckpt_path,
        expect_objective="biencoder",
        data=cfg.get("data"),
        num_workers=0,
        device=cfg.device,
        trust=cfg.trust_checkpoint,
    )
    name = Path(str(cfg.input)).expanduser()
    output = Path(str(cfg.output)).expanduser() if cfg.output else ckpt.run_dir / "mined" / f"{name.stem}.jsonl"
    if name.is_file() and output.resolve() == name.resolve():
        raise ConfigError(f"output={cfg.output} is the input file; set output to another path.")
    stats = mine(ckpt.model, data, cfg, output)
    per_pair = stats["negatives"] / max(1, stats["pairs"])
    short = f"; {stats['short']} pair(s) got fewer than num_negatives={cfg.num_negatives}" if stats["short"] else ""
    print(
        f"mined {stats['negatives']} negatives for {stats['pairs']} pairs ({per_pair:.2f} per pair) among "
        f"{stats['documents']} documents{short}; wrote {output}"
    )
    print(f"train on them: contrastlab-train experiment=biencoder_text_pairs data.path={output}")
    return stats


@hydra.main(version_base="1.3", config_path=build.CONF_DIR, config_name="mine")
def hydra_main(cfg: DictConfig) -> None:
    boundary.run_task(run_mine, cfg)


def main() -> Any:
    """The ``contrastlab-mine`` command; bad input ends with one line on stderr and exit status 2."""
    return boundary.run_main(hydra_main)


if __name__ == "__main__":
    main()
