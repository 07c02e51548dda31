"""Text pairs for a text–text bi-encoder (semantic search): a JSONL of ``{"query", "positive"[, "negatives"]}``.

``negatives`` is a list of strings (or one string under ``negative``); they are extra keys for every
query of the batch, never anyone's positive. Batches (raw strings; the text tower tokenizes)::

    {"query": list[str] (B), "positive": list[str] (B), "negatives": list[str] (all rows' negatives), "index": (B,)}

Evaluation retrieves each val query's positive among all val positives and negatives (distractors).
Without ``path`` the small demo file shipped in ``contrastlab/data/assets/`` is used.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from contrastlab.data.base import DataCapabilities

DEMO_PATH = Path(__file__).resolve().parent / "assets" / "text_pairs_demo.jsonl"


def read_pairs(path: Path, query_key: str, positive_key: str, negatives_key: str) -> list[dict[str, Any]]:
    rows = []
    with open(path) as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            raw = json.loads(line)
            if query_key not in raw or positive_key not in raw:
                raise ValueError(
                    f"{path}:{line_no} has no '{query_key}' or '{positive_key}' field; "
                    "set data.query_key / data.positive_key to the file's field names."
                )
            negs = raw.get(negatives_key, raw.get("negative", []))
            negs = [negs] if isinstance(negs, str) else list(negs)
            rows.append(
                {"query": str(raw[query_key]), "positive": str(raw[positive_key]), "negatives": [str(n) for n in negs]}
            )
    if not rows:
        raise ValueError(f"{path} holds no text pairs; set data.path to a JSONL of query/positive pairs.")
    return rows


class PairsDataset(Dataset):
    def __init__(self, rows: list[dict[str, Any]], num_negatives: int | None) -> None:
        self.rows, self.num_negatives = rows, num_negatives

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        negs = row["negatives"] if self.num_negatives is None else row["negatives"][: self.num_negatives]
        return {"query": row["query"], "positive": row["positive"], "negatives": negs, "index": i}


def collate_pairs(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "query": [it["query"] for it in items],
        "positive": [it["positive"] for it in items],
        "negatives": [n for it in items for n in it["negatives"]],
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
    }


class TextPairsDataModule(DataCapabilities, L.LightningDataModule):
    """Args:
    path: the JSONL (default: the shipped demo). val_path: a separate val file (else ``val_fraction``).
    num_negatives: negatives used per row (None: all it has; 0: in-batch negatives only).
    batch_sampler: a ``partial`` of a batch sampler receiving ``keys`` (all texts of each row),
        ``batch_size`` and ``drop_last`` (e.g. no duplicate texts in a batch).
    augment: accepted for a uniform build, must be None (text has no image augmentation).
    """

    has_labels = False
    has_images = False
    has_captions = False
    has_text_pairs = True

    def __init__(
        self,
        path: str | None = None,
        val_path: str | None = None,
        query_key: str = "query",
        positive_key: str = "positive",
        negatives_key: str = "negatives",
        num_negatives: int | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.2,
        seed: int = 0,
        limit_samples: int | None = None,
        drop_last: bool = True,
        batch_sampler: Any = None,
        augment: Any = None,
    ) -> None:
        super().__init__()
        if augment is not None:
            raise ValueError("data=text_pairs has no images to augment; set augment=null.")
        self.path = Path(path).expanduser() if path else DEMO_PATH
        self.val_path = Path(val_path).expanduser() if val_path else None
        self.keys = (query_key, positive_key, negatives_key)
        self.num_negatives, self.batch_size, self.num_workers = num_negatives, batch_size, num_workers
        self.val_fraction, self.seed, self.limit_samples = val_fraction, seed, limit_samples
        self.drop_last, self.batch_sampler = drop_last, batch_sampler
        self.train_rows: list[dict[str, Any]] | None = None
        self.val_rows: list[dict[str, Any]] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows is not None:
            return
        rows = read_pairs(self.path, *self.keys)
        if self.val_path is not None:
            train, val = rows, read_pairs(self.val_path, *self.keys)
        else:
            order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(self.seed)).tolist()
            n_val = max(1, round(self.val_fraction * len(rows)))
            if n_val >= len(rows):
                raise ValueError(f"{self.path} holds {len(rows)} pair(s): too few to hold out data.val_fraction.")
            train, val = [rows[i] for i in sorted(order[n_val:])], [rows[i] for i in sorted(order[:n_val])]
        if self.limit_samples:
            train, val = train[: self.limit_samples], val[: self.limit_samples]
        self.train_rows, self.val_rows = train, val

    def train_texts(self) -> list[str]:
        """Every training text (what an offline tokenizer's vocabulary is built from)."""
        self.setup()
        return [t for r in self.train_rows for t in (r["query"], r["positive"], *r["negatives"])]  # type: ignore[union-attr]

    def val_queries(self) -> list[str]:
        self.setup()
        return [r["query"] for r in self.val_rows]

    def val_documents(self) -> tuple[list[str], Tensor]:
        """Val positives (owner = their query's row) then val negatives (owner -1, distractors)."""
        self.setup()
        docs = [r["positive"] for r in self.val_rows]
        owner = list(range(len(docs)))
        for r in self.val_rows:
            negs = r["negatives"] if self.num_negatives is None else r["negatives"][: self.num_negatives]
            docs += negs
            owner += [-1] * len(negs)
        return docs, torch.tensor(owner, dtype=torch.long)

    def _loader(self, ds: Dataset, shuffle: bool, drop_last: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            collate_fn=collate_pairs,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        ds = PairsDataset(self.train_rows, self.num_negatives)  # type: ignore[arg-type]
        if self.batch_sampler is None:
            return self._loader(ds, shuffle=True, drop_last=self.drop_last)
        kw: dict[str, Any] = {"batch_size": self.batch_size, "drop_last": self.drop_last}
        if "keys" in inspect.signature(self.batch_sampler).parameters:
            kw["keys"] = [tuple({ds[i]["query"], ds[i]["positive"], *ds[i]["negatives"]}) for i in range(len(ds))]
        sampler = self.batch_sampler(**kw)
        if len(sampler) == 0:
            raise ValueError(
                f"data.batch_sampler forms no batch of data.batch_size={self.batch_size} from the {len(ds)} "
                "training pairs (too few distinct texts); set data.batch_size lower or data.batch_sampler=null."
            )
        return DataLoader(
            ds,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_pairs,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(PairsDataset(self.val_rows, self.num_negatives), shuffle=False, drop_last=False)
