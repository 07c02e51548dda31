"""IR metrics (nDCG@10, MRR@10, MAP@100, recall@k) against a naive per-query loop, the blocked exact search against
the full score matrix (and its block bound), text-pair MRR/nDCG and the ``_init`` baseline of bi-encoder and CLIP
runs."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch.loggers import Logger

from contrastlab.data.shapes_captions import ShapesCaptionsDataModule
from contrastlab.data.text_pairs import TextPairsDataModule
from contrastlab.encoders import ProjectionHead, SmallCNN
from contrastlab.encoders.text import TransformerTextEncoder
from contrastlab.evaluation import ir_metrics as irm
from contrastlab.evaluation.callbacks import init_metrics
from contrastlab.losses import CLIPLoss
from contrastlab.negatives import InBatch
from contrastlab.objectives.biencoder import BiEncoder
from contrastlab.objectives.clip import CLIP

pytestmark = pytest.mark.usefixtures("one_thread")


def naive_ir(queries: torch.Tensor, corpus: torch.Tensor, qrels, exclude=None) -> dict[str, float]:
    """The definitions, one query at a time: rank the whole corpus, then count."""
    per: dict[str, list[float]] = {m: [] for m in irm.BEIR_MEASURES}
    for q in range(queries.shape[0]):
        rel = qrels[q]
        n_rel = sum(1 for g in rel.values() if g > 0)
        if n_rel == 0:
            continue
        sims = (corpus @ queries[q]).tolist()  # scores in the embeddings' dtype
        docs = [d for d in range(corpus.shape[0]) if exclude is None or d != int(exclude[q])]
        ranking = sorted(docs, key=lambda d: -sims[d])
        dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:10]))
        ideal = sorted((g for g in rel.values() if g > 0), reverse=True)[:10]
        per["ndcg@10"].append(dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal)))
        first = next((i for i, d in enumerate(ranking[:10]) if rel.get(d, 0) > 0), None)
        per["mrr@10"].append(0.0 if first is None else 1.0 / (first + 1))
        hits, ap = 0, 0.0
        for i, d in enumerate(ranking[:100]):
            if rel.get(d, 0) > 0:
                hits += 1
                ap += hits / (i + 1)
        per["map@100"].append(ap / n_rel)
        for k in (1, 10, 100):
            per[f"recall@{k}"].append(sum(1 for d in ranking[:k] if rel.get(d, 0) > 0) / n_rel)
    return {m: float(np.mean(v)) for m, v in per.items()}


def random_case(dtype: torch.dtype, n_queries: int = 40, n_docs: int = 300, dim: int = 16, seed: int = 0):
    """Unit-norm embeddings and graded qrels: 1-6 judged documents per query (grades 0-2), some queries with
    only grade-0 judgments (no relevant document: skipped), relevant documents near their query."""
    gen = torch.Generator().manual_seed(seed)
    corpus = torch.nn.functional.normalize(torch.randn(n_docs, dim, generator=gen, dtype=torch.float64), dim=1)
    qrels, centres = [], []
    for q in range(n_queries):
        judged = torch.randperm(n_docs, generator=gen)[: int(torch.randint(1, 7, (1,), generator=gen))].tolist()
        grades = torch.randint(0, 3, (len(judged),), generator=gen).tolist()
        if q % 9 == 4:
            grades = [0] * len(judged)
        qrels.append(dict(zip(judged, grades, strict=True)))
        centres.append(corpus[judged].mean(0))
    queries = torch.stack(centres) + 0.4 * torch.randn(n_queries, dim, generator=gen, dtype=torch.float64)
    queries = torch.nn.functional.normalize(queries, dim=1)
    return queries.to(dtype), corpus.to(dtype), qrels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_measures_equal_a_naive_loop(dtype):
    queries, corpus, qrels = random_case(dtype)
    got = irm.evaluate_retrieval(queries, corpus, qrels, query_chunk=7, doc_chunk=50)
    want = naive_ir(queries, corpus, qrels)
    assert list(got) == list(irm.BEIR_MEASURES)
    for m in irm.BEIR_MEASURES:
        assert got[m] == pytest.approx(want[m], abs=1e-9), m
    assert 0 < got["ndcg@10"] < 1 and got["recall@1"] < got["recall@10"] < got["recall@100"] <= 1
    # an excluded row (a document with the query's own id) is never retrieved
    exclude = torch.tensor([(q * 7) % corpus.shape[0] if q % 2 else -1 for q in range(queries.shape[0])])
    got_ex = irm.evaluate_retrieval(queries, corpus, qrels, query_chunk=16, doc_chunk=64, exclude=exclude)
    want_ex = naive_ir(queries, corpus, qrels, exclude)
    for m in irm.BEIR_MEASURES:
        assert got_ex[m] == pytest.approx(want_ex[m], abs=1e-9), m


def test_hand_computed_values_and_unknown_names():
    # one query, judged d0 (grade 2), d2 (grade 1); ranking d1, d0, d3, d2
    scores = torch.tensor([[0.9, 0.5, 0.3, 0.1]])
    indices = torch.tensor([[1, 0, 3, 2]])
    got = irm.ir_metrics(scores, indices, [{0: 2, 2: 1, 1: 0}], ("ndcg@10", "mrr@10", "map@100", "recall@1", "mrr@1"))
    dcg, idcg = 2 / math.log2(3) + 1 / math.log2(5), 2 + 1 / math.log2(3)
    assert got["ndcg@10"] == pytest.approx(dcg / idcg) and got["mrr@10"] == pytest.approx(0.5)
    assert got["map@100"] == pytest.approx((1 / 2 + 2 / 4) / 2) and got["recall@1"] == 0 and got["mrr@1"] == 0
    with pytest.raises(ValueError, match="unknown IR measure 'p@10'"):
        irm.parse_measures(["p@10"])
    with pytest.raises(ValueError, match="no query has a relevant document"):
        irm.ir_metrics(scores, indices, [{0: 0}])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocked_search_equals_the_full_matrix_and_bounds_the_block(monkeypatch, dtype):
    queries, corpus, _ = random_case(dtype, n_queries=23, n_docs=211)
    full_s, full_i = (queries @ corpus.T).topk(30, dim=1)
    blocks: list[tuple[int, int]] = []
    real = irm._similarity

    def spy(q, d):
        blocks.append((q.shape[0], d.shape[0]))
        return real(q, d)

    monkeypatch.setattr(irm, "_similarity", spy)
    s, i = irm.topk_search(queries, corpus, 30, query_chunk=5, doc_chunk=40)
    assert torch.equal(i, full_i) and s.dtype == dtype
    torch.testing.assert_close(s, full_s)
    # never more than a query_chunk x doc_chunk block of scores: ceil(23/5) x ceil(211/40) of them
    assert max(r for r, _ in blocks) == 5 and max(c for _, c in blocks) == 40 and len(blocks) == 5 * 6
    # a numpy (e.g. memory-mapped) corpus gives the same lists; k above the corpus size is clipped
    s_np, i_np = irm.topk_search(queries, corpus.numpy(), 30, query_chunk=8, doc_chunk=100)
    assert torch.equal(i_np, full_i)
    assert irm.topk_search(queries[:2], corpus[:4], 10)[1].shape == (2, 4)


def test_paired_qrels_deduplicate_documents_by_text():
    texts = ["a", "b", "b", "c", "a", "d"]
    owner = torch.tensor([0, 1, -1, -1, -1, 1])  # "a" answers query 0 (its copy at row 4 too); "b" and "d" query 1
    rows, qrels = irm.paired_qrels(texts, owner, 3)
    assert rows.tolist() == [0, 1, 3, 5] and qrels == [{0: 1}, {1: 1, 3: 1}, {}]
    assert init_metrics({"val/a": 1.0, "val/a_chance": 0.1}) == {"val/a_init": 1.0}


class Recorder(Logger):
    """Keeps every ``log_metrics`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass


def text_model(**kw) -> BiEncoder:
    torch.manual_seed(0)
    return BiEncoder(
        encoder=None,
        head=None,
        loss=CLIPLoss(),
        negatives=InBatch(),
        optimizer=partial(torch.optim.AdamW, lr=3e-3),
        text_encoder=TransformerTextEncoder(vocab_size=512, max_length=16, width=16, depth=1, heads=2),
        embed_dim=8,
        batch_size=16,
        **kw,
    )


def check_init_logged(logger: Recorder, trainer, before: dict[str, float]) -> None:
    """``before`` (the untrained model's metrics) logged once at step 0 as ``*_init`` (no chance levels)."""
    init_rows = [(step, m) for step, m in logger.rows if any(k.endswith("_init") for k in m)]
    assert len(init_rows) == 1 and init_rows[0][0] == 0
    logged = init_rows[0][1]
    want = {f"{k}_init": v for k, v in before.items() if not k.endswith("_chance")}
    assert logged.keys() == want.keys() and not any("_chance" in k for k in logged)
    for k, v in want.items():
        assert logged[k] == pytest.approx(v, abs=1e-12), k
        assert trainer.callback_metrics[k].item() == pytest.approx(v, abs=1e-6), k


def test_text_pairs_report_mrr_ndcg_and_log_the_untrained_baseline(tmp_path):
    model, dm = text_model(), TextPairsDataModule(batch_size=16)
    before = model.evaluate_metrics(dm)
    # MRR@10 / nDCG@10 from the rank of each query's positive among the distinct val documents (the demo's val
    # split holds positives that are also other rows' negatives: one document, relevant to its query)
    queries = model.encode_texts_batched(dm.val_queries(), model.text_encoder, model.query_projection)
    docs, owner = dm.val_documents()
    assert owner[: len(queries)].tolist() == list(range(len(queries))) and len(set(docs)) < len(docs)
    distinct = list(dict.fromkeys(docs))
    documents = model.encode_texts_batched(distinct, model.text_encoder, model.query_projection)
    sims = queries @ documents.T
    ranks = []
    for q in range(len(queries)):
        p = distinct.index(docs[q])
        assert int((sims[q] == sims[q, p]).sum()) == 1  # no tie with the positive: the rank is well defined
        ranks.append(int((sims[q] > sims[q, p]).sum()) + 1)
    mrr = np.mean([1 / r if r <= 10 else 0.0 for r in ranks])
    ndcg = np.mean([1 / math.log2(r + 1) if r <= 10 else 0.0 for r in ranks])
    assert before["val/mrr@10"] == pytest.approx(mrr, abs=1e-9)
    assert before["val/ndcg@10"] == pytest.approx(ndcg, abs=1e-9)

    logger = Recorder()
    trainer = quiet_trainer(max_steps=2, limit_train_batches=2, logger=logger, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    check_init_logged(logger, trainer, before)
    assert {"val/q2d_recall@1_init", "val/mrr@10_init", "val/ndcg@10_init", "val/mean_recall_init"} <= set(
        trainer.callback_metrics
    )

    off = text_model(log_init=False)
    quiet = Recorder()
    quiet_trainer(max_steps=1, limit_train_batches=1, logger=quiet, default_root_dir=tmp_path).fit(off, datamodule=dm)
    assert not any(k.endswith("_init") for _, m in quiet.rows for k in m)


def test_clip_logs_the_untrained_baseline(tmp_path):
    torch.manual_seed(0)
    model = CLIP(
        encoder=SmallCNN(3, width=4, stages=2, out_dim=16),
        head=ProjectionHead(16, out_dim=8, num_layers=1, batch_norm=False),
        loss=CLIPLoss(),
        negatives=InBatch(),
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
        text_encoder=TransformerTextEncoder(vocab_size=64, max_length=16, width=16, depth=1, heads=2),
        batch_size=16,
    )
    dm = ShapesCaptionsDataModule(num_train=32, num_val=16, batch_size=16, image_size=16)
    before = model.evaluate_metrics(dm)
    logger = Recorder()
    trainer = quiet_trainer(max_steps=1, limit_train_batches=1, limit_val_batches=1, logger=logger)
    trainer.fit(model, datamodule=dm)
    check_init_logged(logger, trainer, before)
    assert {"val/i2t_recall@1_init", "val/t2i_recall@1_init", "val/zero_shot_top1_init"} <= set(
        trainer.callback_metrics
    )
