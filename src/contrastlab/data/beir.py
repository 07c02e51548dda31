"""Retrieval data in the BEIR layout (Thakur et al. 2021) for a text bi-encoder (``data=beir``)::

    <data_dir>/corpus.jsonl          {"_id", "title", "text"} per line
    <data_dir>/queries.jsonl         {"_id", "text"} per line
    <data_dir>/qrels/<split>.tsv     header "query-id<TAB>corpus-id<TAB>score", then one judgment per line

Training pairs are the judgments of ``qrels/<train_split>.tsv`` with ``score > 0`` (the query's text, the
document's text; in-batch negatives), or the rows of a ``train_pairs`` JSONL with hard negatives (what
``contrastlab-mine`` writes), served as :mod:`contrastlab.data.text_pairs` serves its rows. Validation
ranks the whole corpus for every query of ``qrels/<val_split>.tsv`` with a relevant document
(:meth:`contrastlab.objectives.biencoder.BiEncoder.evaluate_metrics`: ``val/ndcg@10``, ``val/mrr@10``, ...); its
pairs also give ``val/loss``. A document reads ``title + " " + text`` (``use_title``). As in BEIR's evaluation, a
document whose id is the query's own id is not retrieved for it (``ignore_identical_ids``; ArguAna, Quora).
Judgments of grade 0 stay in the val qrels (judged non-relevant).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from contrastlab.data.on_disk import DataDirError
from contrastlab.data.text_pairs import TextPairsDataModule, read_pairs

LAYOUT = "a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)"


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataDirError(
                    f"{path}:{line_no} is not JSON ({err.msg}); data.data_dir must be {LAYOUT}."
                ) from err
            if not isinstance(raw, dict) or "_id" not in raw:
                raise DataDirError(f"{path}:{line_no} has no '_id' field; data.data_dir must be {LAYOUT}.")
            yield line_no, raw


def read_corpus(path: Path, use_title: bool = True) -> tuple[list[str], list[str]]:
    """``corpus.jsonl`` -> (ids, texts), in file order; a text is ``title + " " + text`` when ``use_title``."""
    ids, texts = [], []
    for _, raw in _jsonl(path):
        title, text = str(raw.get("title") or "").strip(), str(raw.get("text") or "").strip()
        ids.append(str(raw["_id"]))
        texts.append(f"{title} {text}".strip() if use_title and title else text)
    if not ids:
        raise DataDirError(f"{path} holds no documents; data.data_dir must be {LAYOUT}.")
    return ids, texts


def read_queries(path: Path) -> dict[str, str]:
    """``queries.jsonl`` -> ``{query id: text}``."""
    return {str(raw["_id"]): str(raw.get("text") or "") for _, raw in _jsonl(path)}


def read_qrels(
    path: Path, queries: dict[str, str], corpus_row: dict[str, int], queries_path: Path, corpus_path: Path
) -> list[tuple[str, int, int]]:
    """``qrels/<split>.tsv`` -> ``[(query id, corpus row, grade)]`` in file order. A header line (``query-id ...``)
    is skipped; a query or document id that the other files do not hold is an error naming the file and the id."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip() or (line_no == 1 and line.lower().startswith("query-id")):
                continue
            fields = line.rstrip("\n\r").split("\t")
            try:
                qid, did, grade = fields[0], fields[1], int(float(fields[2]))
            except (IndexError, ValueError) as err:
                raise DataDirError(
                    f"{path}:{line_no} is not 'query-id<TAB>corpus-id<TAB>score'; data.data_dir must be {LAYOUT}."
                ) from err
            if qid not in queries:
                raise DataDirError(
                    f"{path}:{line_no} names query id '{qid}', which {queries_path} does not hold; "
                    f"add the query there or drop its judgments (data.data_dir={path.parent.parent})."
                )
            if did not in corpus_row:
                raise DataDirError(
                    f"{path}:{line_no} names corpus id '{did}', which {corpus_path} does not hold; "
                    f"add the document there or drop its judgments (data.data_dir={path.parent.parent})."
                )
            out.append((qid, corpus_row[did], grade))
    return out


class BeirDataModule(TextPairsDataModule):
    """Args:
    data_dir: the BEIR folder (module docstring).
    train_split: the qrels file of the training pairs (``qrels/<train_split>.tsv``); None: evaluation only.
    train_pairs: a JSONL of ``{"query", "positive", "negatives"}`` (e.g. written by ``contrastlab-mine``) that
        replaces the train qrels as training pairs: hard negatives for training, the BEIR corpus for evaluation.
    num_negatives: hard negatives used per training pair (None: all it has; 0: in-batch negatives only).
    val_split: the qrels file of the evaluated queries; None: ``dev`` when ``qrels/dev.tsv`` exists, else ``test``.
    use_title: prepend each document's title to its text.
    ignore_identical_ids: never retrieve for a query the document with the query's own id (BEIR's default).
    limit_samples: at most this many training pairs and val queries (the corpus is always whole).
    batch_size, num_workers, seed, drop_last, batch_sampler: as for ``data=text_pairs``.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        train_split: str | None = "train",
        val_split: str | None = None,
        train_pairs: str | None = None,
        num_negatives: int | None = None,
        use_title: bool = True,
        ignore_identical_ids: bool = True,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        limit_samples: int | None = None,
        drop_last: bool = True,
        batch_sampler: Any = None,
        augment: Any = None,
    ) -> None:
        if augment is not None:
            raise DataDirError("data=beir has no images to augment; set augment=null.")
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            limit_samples=limit_samples,
            drop_last=drop_last,
            batch_sampler=batch_sampler,
            num_negatives=num_negatives,
        )
        if data_dir in (None, ""):
            raise DataDirError(f"data=beir needs data.data_dir=<{LAYOUT}>.")
        self.root = Path(str(data_dir)).expanduser()
        self.path = self.root
        self.train_split, self.val_split = train_split, val_split
        self.train_pairs = Path(str(train_pairs)).expanduser() if train_pairs not in (None, "") else None
        self.use_title, self.ignore_identical_ids = use_title, ignore_identical_ids
        self.corpus_ids: list[str] | None = None
        self.corpus: list[str] = []
        self.val_query_ids: list[str] = []
        self._val_qrels: list[dict[int, int]] = []
        self.queries: dict[str, str] = {}  # query id -> text
        self.train_judgments: list[tuple[str, int, int]] = []  # (query id, corpus row, grade) of train_split
        self.corpus_row: dict[str, int] = {}  # corpus id -> row

    # --- reading ----------------------------------------------------------------------------------------
    def splits(self) -> list[str]:
        """The qrels files of the folder (``qrels/<split>.tsv``)."""
        folder = self.root / "qrels"
        return sorted(p.stem for p in folder.glob("*.tsv")) if folder.is_dir() else []

    def _qrels_path(self, split: str, key: str) -> Path:
        path = self.root / "qrels" / f"{split}.tsv"
        if not path.is_file():
            have = ", ".join(self.splits())
            extra = ", or data.train_split=null to evaluate only" if key == "train_split" else ""
            raise DataDirError(f"{path} does not exist; set data.{key} to one of the qrels here ({have}){extra}.")
        return path

    def setup(self, stage: str | None = None) -> None:
        if self.corpus_ids is not None:
            return
        if not self.root.is_dir():
            raise DataDirError(f"data.data_dir={self.root} is not a folder; set data.data_dir to {LAYOUT}.")
        corpus_path, queries_path = self.root / "corpus.jsonl", self.root / "queries.jsonl"
        for path in (corpus_path, queries_path):
            if not path.is_file():
                raise DataDirError(f"{path} does not exist; data.data_dir must be {LAYOUT}.")
        if not self.splits():
            raise DataDirError(f"{self.root}/qrels holds no <split>.tsv file; data.data_dir must be {LAYOUT}.")
        val_split = self.val_split
        if val_split is None:
            val_split = "dev" if (self.root / "qrels" / "dev.tsv").is_file() else "test"
        val_path = self._qrels_path(val_split, "val_split")
        if self.train_pairs is not None and not self.train_pairs.is_file():
            raise DataDirError(f"data.train_pairs={self.train_pairs} does not exist; set it to a JSONL of pairs.")
        use_qrels = self.train_split is not None and self.train_pairs is None
        train_path = self._qrels_path(self.train_split, "train_split") if use_qrels else None

        ids, texts = read_corpus(corpus_path, self.use_title)
        row: dict[str, int] = {}
        for i, doc_id in enumerate(ids):
            row.setdefault(doc_id, i)
        self.queries = read_queries(queries_path)
        args = (self.queries, row, queries_path, corpus_path)
        train = read_qrels(train_path, *args) if train_path is not None else []
        val = read_qrels(val_path, *args)

        judged: dict[str, dict[int, int]] = {}
        for qid, doc, grade in val:
            judged.setdefault(qid, {})[doc] = grade
        val_ids = [q for q, rel in judged.items() if any(g > 0 for g in rel.values())]
        if not val_ids:
            raise DataDirError(f"{val_path} judges no document relevant (score > 0); set data.val_split to another.")
        if self.train_pairs is not None:
            train_rows = read_pairs(self.train_pairs, "query", "positive", "negatives")
        else:
            train_rows = [self._pair(qid, texts[doc]) for qid, doc, grade in train if grade > 0]
        if self.limit_samples:
            train_rows, val_ids = train_rows[: self.limit_samples], val_ids[: self.limit_samples]
        chosen = set(val_ids)
        self.corpus_ids, self.corpus, self.corpus_row = ids, texts, row
        self.train_judgments = train
        self.val_query_ids = val_ids
        self._val_qrels = [judged[q] for q in val_ids]
        self.train_rows = train_rows
        self.val_rows = [self._pair(qid, texts[doc]) for qid, doc, grade in val if grade > 0 and qid in chosen]

    def _pair(self, qid: str, document: str) -> dict[str, Any]:
        return {"query": self.queries[qid], "positive": document, "negatives": []}

    # --- what evaluation reads ---------------------------------------------------------------------------
    def corpus_texts(self) -> list[str]:
        """Every document of the corpus (the rows the qrels' indices point at)."""
        self.setup()
        return self.corpus

    def val_queries(self) -> list[str]:
        self.setup()
        return [self.queries[q] for q in self.val_query_ids]

    def val_qrels(self) -> list[dict[int, int]]:
        """One ``{corpus row: grade}`` per val query (aligned with :meth:`val_queries`)."""
        self.setup()
        return self._val_qrels

    def val_excluded(self) -> Tensor | None:
        """(Q,) long: the corpus row with each val query's own id (-1: none); None when ids are not ignored."""
        self.setup()
        if not self.ignore_identical_ids:
            return None
        return torch.tensor([self.corpus_row.get(q, -1) for q in self.val_query_ids], dtype=torch.long)

    def val_documents(self) -> tuple[list[str], Tensor]:
        """The corpus, and for each document the first val query it is relevant to (-1: none), as
        ``data=text_pairs`` gives its documents (``contrastlab-embed`` exports them)."""
        self.setup()
        owner = torch.full((len(self.corpus),), -1, dtype=torch.long)
        for q in reversed(range(len(self._val_qrels))):
            for doc, grade in self._val_qrels[q].items():
                if grade > 0:
                    owner[doc] = q
        return self.corpus, owner

    def train_dataloader(self) -> DataLoader:
        self.setup()
        if not self.train_rows:
            raise DataDirError(
                f"{self.root} gives no training pairs (data.train_split={self.train_split}); "
                "set data.train_split to a qrels file with judgments of score > 0 (or data.train_pairs to a JSONL)."
            )
        return super().train_dataloader()
