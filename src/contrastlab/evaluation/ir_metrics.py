"""Information-retrieval metrics in the field's (TREC / BEIR) conventions, over an exact search done in blocks.

Each query ``q`` ranks the corpus by inner product ``s(q, d) = q · d`` (the cosine for L2-normalised rows),
descending: ``d_1, d_2, ...``. With graded judgments ``rel(q, d)`` (qrels; ``> 0`` is relevant) and ``R_q`` the
number of relevant documents of ``q``:

* ``ndcg@k = DCG@k / IDCG@k`` with ``DCG@k = sum_{i<=k} rel(q, d_i) / log2(i + 1)`` (linear gain) and ``IDCG@k``
  the DCG@k of the judged documents sorted by grade (trec_eval ``ndcg_cut``);
* ``mrr@k = 1 / i`` for the first relevant ``d_i`` with ``i <= k``, else 0;
* ``map@k = (1 / R_q) sum_{i<=k, d_i relevant} P@i`` with ``P@i`` the precision of the top ``i`` (trec_eval
  ``map_cut``: divided by all ``R_q``, not ``min(R_q, k)``);
* ``recall@k = |{d_1..d_k} ∩ relevant| / R_q`` (trec_eval ``recall``; not the "any relevant in the top k" recall
  of :mod:`contrastlab.evaluation.retrieval`).

Each is averaged over the queries with at least one relevant document. The numbers come from ``pytrec_eval``
(trec_eval's C code; it orders equal scores by document id) on the top ``max(k)`` documents per query, which
:func:`iter_topk` finds with one ``query_chunk x doc_chunk`` block of scores at a time: a corpus of a million
documents is searched in bounded memory (never the whole ``Q x N`` matrix).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

#: what a BEIR evaluation reports (``data=beir``)
BEIR_MEASURES = ("ndcg@10", "mrr@10", "map@100", "recall@1", "recall@10", "recall@100")
#: trec_eval measure families behind each name (MRR@k is ``recip_rank`` on the top-k list)
_TREC = {"ndcg": "ndcg_cut", "map": "map_cut", "recall": "recall"}
_NAME = re.compile(r"^(ndcg|mrr|map|recall)@([1-9][0-9]*)$")

Corpus = Tensor | np.ndarray  # (N, D); a numpy array may be memory-mapped


def parse_measures(measures: Sequence[str]) -> list[tuple[str, int]]:
    """``["ndcg@10", ...]`` -> ``[("ndcg", 10), ...]``; ValueError for an unknown name."""
    out = []
    for m in measures:
        match = _NAME.match(m)
        if match is None:
            raise ValueError(f"unknown IR measure '{m}'; use ndcg@k, mrr@k, map@k or recall@k (k >= 1)")
        out.append((match.group(1), int(match.group(2))))
    return out


def _similarity(queries: Tensor, documents: Tensor) -> Tensor:
    """(c, D) x (n, D) -> (c, n) inner products: the only score block the search holds at a time."""
    return queries @ documents.T


def _rows(corpus: Corpus, start: int, end: int, like: Tensor) -> Tensor:
    block = corpus[start:end]
    if isinstance(block, np.ndarray):  # e.g. a memory-mapped file: only these rows are read
        block = torch.from_numpy(np.ascontiguousarray(block))
    return block.to(device=like.device, dtype=like.dtype)


@torch.no_grad()
def iter_topk(
    queries: Tensor,
    corpus: Corpus,
    k: int,
    query_chunk: int = 1024,
    doc_chunk: int = 16384,
    exclude: Tensor | None = None,
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Exact top-``k`` search, one chunk of queries at a time.

    Args:
        queries: (Q, D); the scores are computed in its dtype (float32 or float64).
        corpus: (N, D) tensor or numpy array (memory-mapped for large corpora), read ``doc_chunk`` rows at a time.
        exclude: (Q,) long, a corpus row each query may not retrieve (e.g. the document with the query's own id),
            or -1; such a row scores ``-inf``.
    Yields ``(start, scores (c, k'), indices (c, k'))`` for the queries ``start .. start + c`` with
    ``k' = min(k, N)``, scores descending. Memory: one (query_chunk, doc_chunk) block plus (c, 2k') candidates.
    """
    if k < 1 or query_chunk < 1 or doc_chunk < 1:
        raise ValueError(f"k, query_chunk and doc_chunk must be >= 1, got {k}, {query_chunk}, {doc_chunk}")
    n = int(corpus.shape[0])
    k = min(k, n)
    for qs in range(0, queries.shape[0], query_chunk):
        q = queries[qs : qs + query_chunk]
        best_s = q.new_empty((q.shape[0], 0))
        best_i = torch.empty((q.shape[0], 0), dtype=torch.long, device=q.device)
        for ds in range(0, n, doc_chunk):
            block = _similarity(q, _rows(corpus, ds, ds + doc_chunk, q))
            if exclude is not None:
                col = exclude[qs : qs + q.shape[0]].to(q.device) - ds
                hit = (col >= 0) & (col < block.shape[1])
                block[hit.nonzero()[:, 0], col[hit]] = float("-inf")
            s, i = block.topk(min(k, block.shape[1]), dim=1)
            merged_s, merged_i = torch.cat([best_s, s], 1), torch.cat([best_i, i + ds], 1)
            best_s, pos = merged_s.topk(min(k, merged_s.shape[1]), dim=1)
            best_i = merged_i.gather(1, pos)
        yield qs, best_s, best_i


def topk_search(
    queries: Tensor,
    corpus: Corpus,
    k: int,
    query_chunk: int = 1024,
    doc_chunk: int = 16384,
    exclude: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """All of :func:`iter_topk` at once: ``(scores (Q, k'), indices (Q, k'))``."""
    parts = list(iter_topk(queries, corpus, k, query_chunk, doc_chunk, exclude))
    if not parts:
        width = min(k, int(corpus.shape[0]))
        return queries.new_empty((0, width)).cpu(), torch.empty((0, width), dtype=torch.long)
    return torch.cat([s for _, s, _ in parts]).cpu(), torch.cat([i for _, _, i in parts]).cpu()


def ir_metrics(
    scores: Tensor, indices: Tensor, qrels: Sequence[Mapping[int, int]], measures: Sequence[str] = BEIR_MEASURES
) -> dict[str, float]:
    """The measures (module docstring) of ranked lists, averaged over the queries with a relevant document.

    Args:
        scores, indices: (Q, K) each query's retrieved corpus rows and their scores, best first; entries scoring
            ``-inf`` (excluded) are dropped. ``K`` should be at least the largest cutoff.
        qrels: Q mappings ``corpus row -> grade`` (int; ``> 0`` relevant); a row that is never retrieved (e.g. a
            negative one for a judged document missing from the corpus) still counts in ``R_q``.
    Returns ``{name: mean}`` for every name of ``measures``.
    """
    import pytrec_eval  # the C trec_eval; imported when evaluating, not with the package

    parsed = parse_measures(measures)
    if len(qrels) != scores.shape[0] or scores.shape != indices.shape:
        raise ValueError(f"need one qrels entry per ranked list, got {len(qrels)} for scores {tuple(scores.shape)}")
    judged = {str(q): {str(d): int(g) for d, g in rel.items()} for q, rel in enumerate(qrels)}
    used = [q for q, rel in judged.items() if any(g > 0 for g in rel.values())]
    if not used:
        raise ValueError("no query has a relevant document (a grade > 0 in its qrels)")
    s, idx = scores.double().cpu().numpy(), indices.cpu().numpy()
    run = {q: {str(int(d)): float(v) for d, v in zip(idx[int(q)], s[int(q)], strict=True) if v > -np.inf} for q in used}
    qrels_used = {q: judged[q] for q in used}
    cutoffs: dict[str, list[int]] = {}
    for name, k in parsed:
        if name != "mrr":
            cutoffs.setdefault(_TREC[name], []).append(k)
    out: dict[str, float] = {}
    if cutoffs:
        spec = {f"{fam}.{','.join(str(k) for k in sorted(set(ks)))}" for fam, ks in cutoffs.items()}
        per_query = pytrec_eval.RelevanceEvaluator(qrels_used, spec).evaluate(run)
        for name, k in parsed:
            if name != "mrr":
                out[f"{name}@{k}"] = _mean(per_query, f"{_TREC[name]}_{k}", used)
    for name, k in parsed:
        if name == "mrr":  # reciprocal rank of the top-k list (trec_eval's recip_rank has no cutoff)
            top = {q: dict(sorted(docs.items(), key=lambda kv: (-kv[1], _desc(kv[0])))[:k]) for q, docs in run.items()}
            per_query = pytrec_eval.RelevanceEvaluator(qrels_used, {"recip_rank"}).evaluate(top)
            out[f"mrr@{k}"] = _mean(per_query, "recip_rank", used)
    return {m: out[m] for m in measures}


def _desc(doc_id: str) -> tuple[int, ...]:
    """Sort key giving trec_eval's tie order (equal scores: document ids in decreasing string order)."""
    return tuple(-ord(c) for c in doc_id) + (1,)


def _mean(per_query: Mapping[str, Mapping[str, float]], key: str, queries: Sequence[str]) -> float:
    """Mean over ``queries``; a query with nothing retrieved (absent from trec_eval's answer) scores 0."""
    return float(np.mean([per_query.get(q, {}).get(key, 0.0) for q in queries]))


def evaluate_retrieval(
    queries: Tensor,
    corpus: Corpus,
    qrels: Sequence[Mapping[int, int]],
    measures: Sequence[str] = BEIR_MEASURES,
    query_chunk: int = 1024,
    doc_chunk: int = 16384,
    exclude: Tensor | None = None,
) -> dict[str, float]:
    """Search the corpus for every query (:func:`iter_topk`, depth = the largest cutoff) and score the lists
    (:func:`ir_metrics`). queries (Q, D), corpus (N, D), qrels: Q mappings ``corpus row -> grade``."""
    depth = max(k for _, k in parse_measures(measures))
    scores, indices = topk_search(queries, corpus, depth, query_chunk, doc_chunk, exclude)
    return ir_metrics(scores, indices, qrels, measures)


def paired_qrels(texts: Sequence[str], owner: Tensor, num_queries: int) -> tuple[Tensor, list[dict[int, int]]]:
    """Qrels of paired data, documents deduplicated by text (a distractor with a positive's text *is* that
    positive): ``rows`` (U,) long, the first row of each distinct text, and ``num_queries`` mappings ``position in
    rows -> 1`` for each query's positives (``owner[j]``: the query row ``j`` answers, -1 none)."""
    position: dict[str, int] = {}
    first: list[int] = []
    for j, text in enumerate(texts):
        if text not in position:
            position[text] = len(first)
            first.append(j)
    qrels: list[dict[int, int]] = [{} for _ in range(num_queries)]
    for j, q in enumerate(owner.tolist()):
        if q >= 0:
            qrels[q][position[texts[j]]] = 1
    return torch.tensor(first, dtype=torch.long), qrels
