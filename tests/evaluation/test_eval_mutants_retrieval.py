"""Pins down what mutation testing found unpinned in evaluation/{ir_metrics,zero_shot,cross_modal}.py: the default
chunk sizes and their forwarding, the device/dtype of corpus blocks, the empty-query search, the exact error
messages, excluded (-inf) entries, MRR-only measure lists and trec_eval's tie order, the zero-shot scoring dtype and
top-k cut-offs at the class count, and the cross-modal chance levels when the feature dimension exceeds the rows.
Every value is compared with a naive per-query loop or a hand-computed number."""

from __future__ import annotations

import math
import re
import types
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pytest
import pytrec_eval
import torch

from contrastlab.evaluation import cross_modal as cm
from contrastlab.evaluation import ir_metrics as irm
from contrastlab.evaluation import zero_shot as zs

pytestmark = pytest.mark.usefixtures("one_thread")

DTYPES = [torch.float32, torch.float64]


def _unit(n: int, d: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """``n`` random L2-normalised rows (continuous: no tied scores)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1).to(dtype)


def _naive_topk(queries: torch.Tensor, corpus: torch.Tensor, k: int) -> tuple[list[list[float]], list[list[int]]]:
    """Each query's ``k`` best corpus rows by inner product, one query at a time (scores in the query dtype)."""
    sims = (queries @ corpus.to(queries.dtype).T).tolist()
    scores, indices = [], []
    for row in sims:
        order = sorted(range(len(row)), key=lambda d: -row[d])[:k]
        indices.append(order)
        scores.append([row[d] for d in order])
    return scores, indices


def _tol(dtype: torch.dtype) -> float:
    return 1e-12 if dtype == torch.float64 else 1e-5


# ----------------------------------------------------------------------------------------------- ir_metrics


@pytest.mark.parametrize("numpy_corpus", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_are_read_onto_the_device_and_dtype_of_the_queries(dtype: torch.dtype, numpy_corpus: bool) -> None:
    """``_rows`` returns the requested rows on ``like``'s device (here the meta device) in ``like``'s dtype."""
    other = torch.float64 if dtype == torch.float32 else torch.float32
    corpus_t = _unit(5, 3, other, seed=1)
    corpus = corpus_t.numpy() if numpy_corpus else corpus_t
    on_meta = irm._rows(corpus, 1, 4, torch.empty(0, dtype=dtype, device="meta"))
    assert on_meta.device.type == "meta" and on_meta.dtype == dtype and tuple(on_meta.shape) == (3, 3)
    on_cpu = irm._rows(corpus, 1, 4, torch.empty(0, dtype=dtype))
    assert on_cpu.device.type == "cpu" and on_cpu.dtype == dtype
    assert torch.equal(on_cpu, corpus_t[1:4].to(dtype))


@pytest.mark.parametrize("numpy_corpus", [False, True])
@pytest.mark.parametrize(("q_dtype", "c_dtype"), [(torch.float32, torch.float64), (torch.float64, torch.float32)])
def test_search_scores_in_the_query_dtype_whatever_the_corpus_dtype(
    q_dtype: torch.dtype, c_dtype: torch.dtype, numpy_corpus: bool
) -> None:
    """A corpus of another dtype (tensor or numpy) is cast to the queries' dtype, block by block."""
    queries, corpus = _unit(7, 4, q_dtype, seed=2), _unit(23, 4, c_dtype, seed=3)
    s, i = irm.topk_search(queries, corpus.numpy() if numpy_corpus else corpus, 6, query_chunk=3, doc_chunk=5)
    want_s, want_i = _naive_topk(queries, corpus, 6)
    assert s.dtype == q_dtype and i.dtype == torch.long
    assert i.tolist() == want_i
    np.testing.assert_allclose(s.numpy(), np.array(want_s), rtol=0, atol=_tol(q_dtype))


def _spy_blocks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record the (queries, documents) shape of every score block the search computes."""
    blocks: list[tuple[int, int]] = []
    real = irm._similarity

    def spy(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        blocks.append((int(q.shape[0]), int(d.shape[0])))
        return real(q, d)

    monkeypatch.setattr(irm, "_similarity", spy)
    return blocks


def test_default_chunks_of_topk_search_and_evaluate_retrieval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without chunk arguments both entry points search 1024 queries x 16384 documents per block."""
    blocks = _spy_blocks(monkeypatch)
    many_q, few_d = _unit(1025, 4, torch.float64, seed=4), _unit(3, 4, torch.float64, seed=5)
    few_q, many_d = _unit(1, 4, torch.float64, seed=6), _unit(16385, 4, torch.float64, seed=7)

    s, i = irm.topk_search(many_q, few_d, 2)
    assert blocks == [(1024, 3), (1, 3)]
    assert i.tolist() == _naive_topk(many_q, few_d, 2)[1]
    blocks.clear()
    s, i = irm.topk_search(few_q, many_d, 2)
    assert blocks == [(1, 16384), (1, 1)]
    assert i.tolist() == _naive_topk(few_q, many_d, 2)[1]

    # evaluate_retrieval: one relevant document per query, the naive top-1 decides recall@1
    blocks.clear()
    qrels = [{q % 3: 1} for q in range(1025)]
    top1 = [row[0] for row in _naive_topk(many_q, few_d, 1)[1]]
    got = irm.evaluate_retrieval(many_q, few_d, qrels, ("recall@1",))
    assert blocks == [(1024, 3), (1, 3)]
    assert got == {"recall@1": pytest.approx(float(np.mean([top1[q] == q % 3 for q in range(1025)])), abs=1e-12)}
    blocks.clear()
    got = irm.evaluate_retrieval(few_q, many_d, [{5: 1}], ("recall@1",))
    assert blocks == [(1, 16384), (1, 1)]
    assert got == {"recall@1": float(_naive_topk(few_q, many_d, 1)[1][0][0] == 5)}


@pytest.mark.parametrize("k", [3, 10])
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_query_set_gives_empty_lists_of_the_clipped_width(dtype: torch.dtype, k: int) -> None:
    """No queries: (0, min(k, N)) scores in the query dtype and (0, min(k, N)) long indices (N=5 rows, D=4)."""
    s, i = irm.topk_search(torch.empty(0, 4, dtype=dtype), _unit(5, 4, dtype, seed=8), k)
    width = min(k, 5)
    assert tuple(s.shape) == (0, width) and s.dtype == dtype and s.device.type == "cpu"
    assert tuple(i.shape) == (0, width) and i.dtype == torch.long and i.device.type == "cpu"


def test_ir_metrics_rejects_mismatched_inputs_with_the_exact_message() -> None:
    """A qrels list of the wrong length, or scores and indices of different shapes, is a ValueError."""
    scores, indices = torch.tensor([[0.9, 0.5, 0.1]]), torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match=r"^need one qrels entry per ranked list, got 2 for scores \(1, 3\)$"):
        irm.ir_metrics(scores, indices, [{0: 1}, {1: 1}], ("recall@1",))
    with pytest.raises(ValueError, match=r"^need one qrels entry per ranked list, got 2 for scores \(2, 3\)$"):
        irm.ir_metrics(torch.rand(2, 3), torch.tensor([[0, 1], [1, 0]]), [{0: 1}, {1: 1}], ("recall@1",))
    msg = "no query has a relevant document (a grade > 0 in its qrels)"
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        irm.ir_metrics(scores, indices, [{0: 0, 2: -1}], ("recall@1",))


def test_excluded_entries_are_dropped_not_ranked_last() -> None:
    """A relevant row scoring -inf (excluded) is not retrieved: query 0 scores 0, query 1 scores 1."""
    scores = torch.tensor([[0.9, float("-inf")], [0.8, 0.1]], dtype=torch.float64)
    indices = torch.tensor([[0, 1], [0, 1]])
    got = irm.ir_metrics(scores, indices, [{1: 1}, {0: 1}], ("recall@2", "mrr@2"))
    assert got == {"recall@2": 0.5, "mrr@2": 0.5}


def _naive_mrr(scores: list[float], docs: list[int], rel: Mapping[int, int], k: int) -> float:
    """MRR@k with trec_eval's order: score descending, equal scores by document id in decreasing string order."""
    order = sorted(zip(scores, docs, strict=True), key=lambda sd: str(sd[1]), reverse=True)
    order.sort(key=lambda sd: -sd[0])  # stable: ties keep the decreasing-id order
    for rank, (_, d) in enumerate(order[:k], start=1):
        if rel.get(d, 0) > 0:
            return 1.0 / rank
    return 0.0


def test_mrr_only_measures_follow_trec_evals_tie_order() -> None:
    """MRR cut-offs that no other measure shares are computed; equal scores rank ids "2" > "10" > "1"."""
    scores, docs, rel = [0.5, 0.5, 0.5, 0.2], [1, 2, 10, 7], {1: 1}
    got = irm.ir_metrics(torch.tensor([scores]), torch.tensor([docs]), [rel], ("mrr@1", "mrr@2", "mrr@3", "mrr@4"))
    assert got == {"mrr@1": 0.0, "mrr@2": 0.0, "mrr@3": pytest.approx(1 / 3), "mrr@4": pytest.approx(1 / 3)}
    for k in (1, 2, 3, 4):
        assert got[f"mrr@{k}"] == pytest.approx(_naive_mrr(scores, docs, rel, k), abs=1e-12)
    # trec_eval itself (recip_rank has no cut-off) on the full list agrees with the deepest cut-off
    run = {"0": {str(d): s for d, s in zip(docs, scores, strict=True)}}
    full = pytrec_eval.RelevanceEvaluator({"0": {"1": 1}}, {"recip_rank"}).evaluate(run)["0"]["recip_rank"]
    assert got["mrr@4"] == pytest.approx(full)
    # alongside another family with a different cut-off
    mixed = irm.ir_metrics(torch.tensor([scores]), torch.tensor([docs]), [rel], ("recall@4", "mrr@2"))
    assert mixed == {"recall@4": 1.0, "mrr@2": 0.0}


def test_mean_counts_a_query_missing_from_trec_evals_answer_as_zero() -> None:
    """``_mean``: a query absent from the per-query answer, or without the key, contributes 0."""
    assert irm._mean({"0": {"recall_1": 1.0}, "1": {}}, "recall_1", ["0", "1", "2"]) == 1 / 3
    assert irm._mean({}, "ndcg_cut_10", ["0"]) == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_evaluate_retrieval_reports_exactly_the_requested_measures(dtype: torch.dtype) -> None:
    """The measures argument reaches ``ir_metrics``: only the requested names come back, with naive values."""
    queries, corpus = _unit(6, 3, dtype, seed=9), _unit(8, 3, dtype, seed=10)
    qrels = [{q: 1, (q + 3) % 8: 1} for q in range(6)]
    got = irm.evaluate_retrieval(queries, corpus, qrels, ("mrr@2", "recall@1"), query_chunk=4, doc_chunk=3)
    assert list(got) == ["mrr@2", "recall@1"]
    s, idx = _naive_topk(queries, corpus, 8)
    want_mrr = np.mean([_naive_mrr(s[q], idx[q], qrels[q], 2) for q in range(6)])
    want_r1 = np.mean([sum(1 for d in idx[q][:1] if d in qrels[q]) / 2 for q in range(6)])
    assert got["mrr@2"] == pytest.approx(want_mrr, abs=1e-12) and got["recall@1"] == pytest.approx(want_r1, abs=1e-12)


def test_paired_qrels_of_no_documents_returns_long_rows() -> None:
    """No texts: an empty long row index (not float) and one empty mapping per query."""
    rows, qrels = irm.paired_qrels([], torch.empty(0, dtype=torch.long), 2)
    assert rows.dtype == torch.long and tuple(rows.shape) == (0,) and qrels == [{}, {}]


# ----------------------------------------------------------------------------------------------- zero_shot


def _naive_scores(features: torch.Tensor, classifier: torch.Tensor) -> list[list[float]]:
    """Cosine of every image with every class weight, in float64 Python loops."""
    f, w = features.double().tolist(), classifier.double().tolist()
    out = []
    for x in f:
        nx = math.sqrt(sum(v * v for v in x))
        out.append([sum(a * b for a, b in zip(x, c, strict=True)) / nx for c in w])
    return out


@pytest.mark.parametrize(
    ("f_dtype", "c_dtype", "want"),
    [
        (torch.float32, torch.float32, torch.float32),
        (torch.float64, torch.float64, torch.float64),
        (torch.float64, torch.float32, torch.float64),
        (torch.float32, torch.float64, torch.float64),
        (torch.float16, torch.float32, torch.float32),
        (torch.bfloat16, torch.float16, torch.float32),
    ],
)
def test_scores_are_float64_only_when_an_input_is_float64(
    f_dtype: torch.dtype, c_dtype: torch.dtype, want: torch.dtype
) -> None:
    """float64 features or classifier -> float64 scores (accurate to 1e-12); anything else -> float32."""
    features = _unit(9, 6, torch.float64, seed=11).mul(3.0).to(f_dtype)
    classifier = _unit(4, 6, c_dtype, seed=12)
    got = zs.zero_shot_scores(features, classifier, chunk_size=4)
    assert got.dtype == want
    ref = _naive_scores(features, classifier)
    np.testing.assert_allclose(got.double().numpy(), np.array(ref), rtol=0, atol=_tol(want))


def _hand_case(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """3 classes in 5 dimensions (D != C), 7 images (one unlabelled)."""
    classifier = _unit(3, 5, dtype, seed=13)
    gen = torch.Generator().manual_seed(14)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, -1])
    noise = torch.randn(7, 5, generator=gen, dtype=torch.float64).to(dtype)
    features = classifier[labels.clamp_min(0)] + 0.9 * noise
    return features, labels, classifier


def _naive_topt(features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor, t: int) -> float:
    """Top-t accuracy over the labelled images, one image at a time."""
    scores, hits, n = _naive_scores(features, classifier), 0, 0
    for row, y in zip(scores, labels.tolist(), strict=True):
        if y < 0:
            continue
        n += 1
        hits += y in sorted(range(len(row)), key=lambda c: -row[c])[:t]
    return hits / n


def _naive_mean_per_class_recall(features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor) -> float:
    scores = _naive_scores(features, classifier)
    per_class: dict[int, list[float]] = {}
    for row, y in zip(scores, labels.tolist(), strict=True):
        if y >= 0:
            per_class.setdefault(y, []).append(float(max(range(len(row)), key=lambda c: row[c]) == y))
    return float(np.mean([np.mean(v) for v in per_class.values()]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_accuracy_keeps_cutoffs_up_to_the_class_count_and_skips_larger_ones(dtype: torch.dtype) -> None:
    """top=(4, 1, 3) with 3 classes: 4 is skipped (not the loop's end), 3 (= class count) is kept and is 1."""
    features, labels, classifier = _hand_case(dtype)
    got = zs.zero_shot_accuracy(features, labels, classifier, top=(4, 1, 3), chunk_size=2)
    assert list(got) == [1, 3]
    assert got[1] == pytest.approx(_naive_topt(features, labels, classifier, 1), abs=1e-12) and got[3] == 1.0
    assert 0 < got[1] < 1  # the hand case has both hits and misses


@pytest.mark.parametrize("dtype", DTYPES)
def test_metrics_keep_the_class_count_cutoff_and_accept_no_cutoffs(dtype: torch.dtype) -> None:
    """top=(1, 3) with 3 classes reports top3 = 1; top=() still reports the mean per-class recall."""
    features, labels, classifier = _hand_case(dtype)
    mpcr = _naive_mean_per_class_recall(features, labels, classifier)
    got = zs.zero_shot_metrics(features, labels, classifier, top=(1, 3, 4), chunk_size=2)
    assert list(got) == ["top1", "top3", "mean_per_class_recall"]
    assert got["top1"] == pytest.approx(_naive_topt(features, labels, classifier, 1), abs=1e-12)
    assert got["top3"] == 1.0 and got["mean_per_class_recall"] == pytest.approx(mpcr, abs=1e-12)
    assert zs.zero_shot_metrics(features, labels, classifier, top=()) == {"mean_per_class_recall": pytest.approx(mpcr)}


def test_no_cutoffs_rank_one_class_deep_also_with_tied_classes() -> None:
    """top=() takes the top-1 prediction, exactly as top=(1,): with 64 identical class weights (every class ties)
    the mean per-class recall is the same (a deeper ranking may order the tied classes differently)."""
    classifier = _unit(1, 5, torch.float32, seed=17).repeat(64, 1)
    features = _unit(6, 5, torch.float32, seed=18)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    scores = zs.zero_shot_scores(features, classifier)
    assert bool((scores == scores[:, :1]).all())  # all 64 classes tie on every image
    want = zs.zero_shot_metrics(features, labels, classifier, top=(1,))["mean_per_class_recall"]
    assert zs.zero_shot_metrics(features, labels, classifier, top=()) == {"mean_per_class_recall": want}


def test_unlabelled_images_raise_the_exact_message() -> None:
    """Both entry points refuse a set without a label >= 0, with the documented message."""
    msg = f"^{re.escape('zero-shot accuracy needs labelled images (labels >= 0).')}$"
    features, classifier, labels = torch.randn(3, 4), torch.randn(2, 4), torch.full((3,), -1)
    with pytest.raises(ValueError, match=msg):
        zs.zero_shot_accuracy(features, labels, classifier)
    with pytest.raises(ValueError, match=msg):
        zs.zero_shot_metrics(features, labels, classifier)


def _spy_chunks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the number of image rows normalised (= scored) at a time by ``zero_shot_scores``."""
    rows: list[int] = []
    real = torch.nn.functional.normalize

    def normalize(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        rows.append(int(x.shape[0]))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(zs, "F", types.SimpleNamespace(normalize=normalize))
    return rows


@pytest.mark.parametrize(
    "call", [zs.zero_shot_accuracy, zs.zero_shot_metrics], ids=["zero_shot_accuracy", "zero_shot_metrics"]
)
def test_images_are_scored_in_chunks_of_4096_by_default_or_of_chunk_size(
    monkeypatch: pytest.MonkeyPatch, call: Callable[..., Mapping[object, float]]
) -> None:
    """4097 images -> chunks of 4096 and 1 by default; 7 images with chunk_size=3 -> 3, 3, 1; same numbers."""
    rows = _spy_chunks(monkeypatch)
    classifier = _unit(2, 3, torch.float32, seed=15)
    features = _unit(4097, 3, torch.float32, seed=16)
    labels = torch.arange(4097) % 2
    got = call(features, labels, classifier, top=(1,))
    assert rows == [4096, 1]
    top1 = got[1] if call is zs.zero_shot_accuracy else got["top1"]
    want = float(np.mean((features @ classifier.T).argmax(1).numpy() == labels.numpy()))
    assert top1 == pytest.approx(want, abs=1e-12)
    rows.clear()
    small = call(features[:7], labels[:7], classifier, top=(1,), chunk_size=3)
    assert rows == [3, 3, 1]
    top1 = small[1] if call is zs.zero_shot_accuracy else small["top1"]
    assert top1 == pytest.approx(_naive_topt(features[:7], labels[:7], classifier, 1), abs=1e-12)


# ----------------------------------------------------------------------------------------------- cross_modal


def test_owner_of_the_wrong_length_raises_the_exact_message() -> None:
    """b has 5 rows (of dimension 2), owner 4 entries: the message names both counts."""
    with pytest.raises(ValueError, match=r"^owner must have one entry per row of b, got 4 for 5 rows$"):
        cm.cross_modal_retrieval(torch.randn(3, 2), torch.randn(5, 2), torch.tensor([0, 1, 2, 0]))


def _naive_ranks(queries: torch.Tensor, gallery: torch.Tensor, q_ids: list[int], g_ids: list[int]) -> list[int]:
    """1 + the number of gallery items scoring above the query's best relevant item (float64 loops)."""
    sims = _naive_scores(queries, torch.nn.functional.normalize(gallery.double(), dim=1))
    ranks = []
    for row, qid in zip(sims, q_ids, strict=True):
        best = max(s for s, g in zip(row, g_ids, strict=True) if g == qid)
        ranks.append(1 + sum(1 for s in row if s > best))
    return ranks


def _naive_chance(n_relevant: Sequence[int], gallery: int, k: int) -> float:
    """Expected recall@k of a random ranking, one query at a time (k clipped to the gallery size)."""
    k = min(k, gallery)
    return float(np.mean([1 - math.comb(gallery - m, k) / math.comb(gallery, k) for m in n_relevant]))


def test_chunk_size_reaches_both_directions_and_defaults_to_1024(monkeypatch: pytest.MonkeyPatch) -> None:
    """``chunk_size`` (default 1024) is passed to the ranking of both directions; the recalls match a naive loop."""
    seen: list[int | None] = []
    real = cm.retrieval_ranks

    def spy(
        queries: torch.Tensor,
        gallery: torch.Tensor,
        query_ids: torch.Tensor,
        gallery_ids: torch.Tensor,
        chunk_size: int | None = None,  # None: not passed
    ) -> torch.Tensor:
        seen.append(chunk_size)
        return real(queries, gallery, query_ids, gallery_ids, *(() if chunk_size is None else (chunk_size,)))

    monkeypatch.setattr(cm, "retrieval_ranks", spy)
    a, b = _unit(4, 3, torch.float64, seed=17), _unit(7, 3, torch.float64, seed=18)
    owner = torch.tensor([0, 1, 2, 3, 0, 2, -1])
    got = cm.cross_modal_retrieval(a, b, owner, ks=(1, 2), with_chance=False)
    assert seen == [1024, 1024]
    seen.clear()
    assert cm.cross_modal_retrieval(a, b, owner, ks=(1, 2), chunk_size=2, with_chance=False) == got
    assert seen == [2, 2]
    i2t = _naive_ranks(a, b, list(range(4)), owner.tolist())
    t2i = _naive_ranks(b[:6], a, owner[:6].tolist(), list(range(4)))
    for name, r in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 2):
            assert got[f"{name}_recall@{k}"] == pytest.approx(np.mean([x <= k for x in r]), abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_chance_levels_when_the_dimension_exceeds_the_number_of_images(dtype: torch.dtype) -> None:
    """3 images in 8 dimensions: image->text chance averages over the 3 images only (not one per dimension)."""
    a, b = _unit(3, 8, dtype, seed=19), _unit(6, 8, dtype, seed=20)
    owner = torch.tensor([0, 0, 1, 2, 2, -1])
    got = cm.cross_modal_retrieval(a, b, owner, ks=(1, 2, 4))
    for k in (1, 2, 4):
        assert got[f"i2t_recall@{k}_chance"] == pytest.approx(_naive_chance([2, 1, 2], 6, k), abs=1e-12)
        assert got[f"t2i_recall@{k}_chance"] == pytest.approx(_naive_chance([1] * 5, 3, k), abs=1e-12)
