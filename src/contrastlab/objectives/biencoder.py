"""Text–text bi-encoder (semantic search) with the CLIP machinery: queries and documents are the two
"towers" — one shared text tower (Siamese, the default) or two towers of the same architecture
(``shared=false``) — each followed by a linear projection (or none: ``embed_dim=None``), L2-normalised,
scored with the same loss (CLIP / SigLIP) at scale ``exp(logit_scale)``. A row's hard negatives are extra
document keys.

A pretrained tower keeps its geometry with ``embed_dim=None``: the embedding is
``normalize(tower(text))``, exactly the tower's (sentence-transformers') embedding before the first step.
The fine-tuning recipe (``experiment=finetune_text``) fixes the scale at 20 (``init_temperature=0.05``,
``learn_logit_scale=false``), sentence-transformers' MultipleNegativesRankingLoss default.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from contrastlab.evaluation.cross_modal import cross_modal_retrieval
from contrastlab.evaluation.ir_metrics import BEIR_MEASURES, evaluate_retrieval, paired_qrels
from contrastlab.objectives.clip import DualEncoderObjective


class BiEncoder(DualEncoderObjective):
    """Args (beyond :class:`~contrastlab.objectives.clip.DualEncoderObjective`'s):
    shared: one text tower and projection for queries and documents; else two (same init).
    embed_dim: width of the shared embedding space (a linear projection of the tower's features);
        None: no projection, the tower's own space (lossless for a pretrained tower).
    Batches: ``{"query": list[str], "positive": list[str], "negatives": list[str], ...}``.
    ``encoder``/``head`` (image towers) are not used and may be None.
    """

    objective_name = "biencoder"
    supports_grad_cache = True

    def __init__(self, *args: Any, shared: bool = True, embed_dim: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shared = shared
        self.query_projection: nn.Module = nn.Identity()
        if embed_dim is not None:
            self.query_projection = nn.Linear(self.text_encoder.out_dim, int(embed_dim), bias=False)
            nn.init.normal_(self.query_projection.weight, std=self.text_encoder.out_dim**-0.5)
        self.doc_encoder: nn.Module | None = None if shared else copy.deepcopy(self.text_encoder)
        self.doc_projection: nn.Module | None = None if shared else copy.deepcopy(self.query_projection)

    def _doc(self) -> tuple[nn.Module, nn.Module]:
        if self.shared:
            return self.text_encoder, self.query_projection
        return self.doc_encoder, self.doc_projection  # type: ignore[return-value]

    def text_towers(self) -> list[nn.Module]:
        return [self.text_encoder] + ([] if self.shared else [self.doc_encoder])  # type: ignore[list-item]

    def frozen_modules(self) -> list[nn.Module]:
        return self.text_towers() if self.freeze_text else []

    def encode_query(self, texts: Sequence[str]) -> Tensor:
        """list of B strings -> (B, D) L2-normalised."""
        return self.encode_texts(texts, self.text_encoder, self.query_projection)

    def encode_document(self, texts: Sequence[str]) -> Tensor:
        return self.encode_texts(texts, *self._doc())

    def embed(self, texts: Sequence[str]) -> Tensor:  # type: ignore[override]
        """The query embedding (what a search index is queried with)."""
        return self.encode_query(texts)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Text search entry point (``contrastlab-search``): the query tower."""
        return self.encode_query(texts)

    def _loss(self, batch: dict[str, Any]) -> Tensor:
        streams = [(self.encode_query, batch["query"]), (self.encode_document, batch["positive"])]
        if batch.get("negatives"):
            streams.append((self.encode_document, batch["negatives"]))
        queries, documents, *negatives = self.grad_cache(self, streams)  # embedded with gradient caching
        return self.pair_loss(queries, documents, negatives[0] if negatives else None)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log_step(loss, len(batch["query"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), sync_dist=True, batch_size=len(batch["query"]))

    @torch.no_grad()
    def evaluate_metrics(self, datamodule: Any) -> dict[str, float]:
        """Text pairs: each val query against all val documents (positives + negatives as distractors):
        ``val/q2d_recall@{1,5,10}``, ``val/d2q_recall@{1,5,10}`` (with ``_chance``), median ranks,
        ``val/mean_recall``, ``val/mrr@10`` and ``val/ndcg@10`` (documents deduplicated by text).
        Qrels data (``data=beir``, a datamodule with ``val_qrels``): each val query against the whole corpus,
        ``val/{ndcg@10,mrr@10,map@100,recall@{1,10,100}}`` (:mod:`contrastlab.evaluation.ir_metrics`)."""
        datamodule.setup("validate")
        self.prepare_text(datamodule)
        was_training = self.training
        self.eval()
        try:
            queries = self.encode_texts_batched(datamodule.val_queries(), self.text_encoder, self.query_projection)
            if hasattr(datamodule, "val_qrels"):
                corpus = self.encode_texts_batched(datamodule.corpus_texts(), *self._doc())
                exclude = datamodule.val_excluded()
                qrels = datamodule.val_qrels()
                queries = queries.to(self.device)  # searched on the model's device, the corpus streamed in blocks
                out = evaluate_retrieval(queries, corpus, qrels, BEIR_MEASURES, self.eval_chunk_size, exclude=exclude)
            else:
                docs, owner = datamodule.val_documents()
                documents = self.encode_texts_batched(docs, *self._doc())
                out = cross_modal_retrieval(queries, documents, owner, ("q2d", "d2q"), chunk_size=self.eval_chunk_size)
                rows, qrels = paired_qrels(docs, owner, len(queries))  # each distinct document once
                ir = evaluate_retrieval(queries, documents[rows], qrels, ("mrr@10", "ndcg@10"), self.eval_chunk_size)
                out.update(ir)
        finally:
            self.train(was_training)
        return {f"val/{k}": v for k, v in out.items()}
