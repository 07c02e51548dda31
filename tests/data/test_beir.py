"""data=beir: the BEIR layout read into training pairs and val qrels, bad folders as one-line errors, the
bi-encoder's IR metrics on it (and their ``_init`` baseline), and a run from the command line."""

from __future__ import annotations

import shutil
from functools import partial

import pytest
import torch
from conftest import quiet_trainer, train_run
from writers import write_beir

from contrastlab.data.beir import BeirDataModule
from contrastlab.data.no_duplicates import NoDuplicatesBatchSampler
from contrastlab.encoders.text import TransformerTextEncoder
from contrastlab.errors import BadInputError
from contrastlab.evaluation.ir_metrics import BEIR_MEASURES, ir_metrics
from contrastlab.losses import CLIPLoss
from contrastlab.negatives import InBatch
from contrastlab.objectives.biencoder import BiEncoder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_reads_pairs_qrels_and_corpus(tmp_path):
    root = write_beir(tmp_path / "beir")
    dm = BeirDataModule(data_dir=str(root), batch_size=4, batch_sampler=partial(NoDuplicatesBatchSampler, seed=0))
    dm.setup()
    row = dm.corpus_row
    assert len(dm.corpus_texts()) == 31 and dm.corpus[row["d7"]] == "topic1 doc7 alpha2 beta0"
    assert dm.corpus[row["q3"]] == "question3 itself"  # no title
    # training pairs: the train judgments (score > 0), in file order
    assert len(dm.train_rows) == 16 and dm.train_rows[1] == {
        "query": "question0 on alpha0 beta0",
        "positive": "topic4 doc10 alpha0 beta3",
        "negatives": [],
    }
    # no qrels/dev.tsv: val is test; q10 (only a grade-0 judgment) has nothing to find and is left out
    assert dm.val_query_ids == ["q8", "q9", "q11"]
    assert dm.val_queries()[0] == "question8 on alpha3 beta1"
    assert dm.val_qrels() == [{row["d8"]: 2, row["d20"]: 1}, {row["d9"]: 1}, {row["d11"]: 1, row["d5"]: 0}]
    assert dm.val_excluded().tolist() == [-1, -1, -1]
    assert [r["query"] for r in dm.val_rows] == ["question8 on alpha3 beta1"] * 2 + ["question9 on alpha4 beta2"] + [
        "question11 on alpha1 beta4"
    ]
    docs, owner = dm.val_documents()
    assert len(docs) == 31 and owner[row["d20"]] == 0 and owner[row["d5"]] == -1 and int((owner >= 0).sum()) == 4
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and all(len(set(b["query"])) == 4 for b in batches)  # no query twice in a batch
    assert sorted(t for b in batches for t in b["positive"]) == sorted(r["positive"] for r in dm.train_rows)

    plain = BeirDataModule(data_dir=str(root), use_title=False, val_split="train", limit_samples=5)
    plain.setup()
    assert plain.corpus[row["d7"]] == "doc7 alpha2 beta0" and len(plain.train_rows) == 5
    assert plain.val_query_ids == ["q0", "q1", "q2", "q3", "q4"]
    assert plain.val_excluded().tolist() == [-1, -1, -1, row["q3"], -1]  # the document with the query's own id
    assert BeirDataModule(data_dir=str(root), ignore_identical_ids=False).val_excluded() is None

    with_dev = BeirDataModule(data_dir=str(write_beir(tmp_path / "dev", dev=True)), train_split=None)
    with_dev.setup()
    assert with_dev.val_query_ids == ["q9"] and with_dev.train_rows == []
    with pytest.raises(BadInputError, match="data.train_split=None"):
        with_dev.train_dataloader()


def _broken(tmp_path, case: str):
    root = write_beir(tmp_path / case)
    if case == "no_qrels":
        shutil.rmtree(root / "qrels")
    elif case == "unknown_query":
        with open(root / "qrels" / "test.tsv", "a") as fh:
            fh.write("q99\td1\t1\n")
    elif case == "unknown_doc":
        with open(root / "qrels" / "train.tsv", "a") as fh:
            fh.write("q1\tnope\t1\n")
    elif case == "no_corpus":
        (root / "corpus.jsonl").unlink()
    elif case == "bad_line":
        with open(root / "qrels" / "test.tsv", "a") as fh:
            fh.write("q1 d1 1\n")
    return root


@pytest.mark.parametrize(
    ("case", "kw", "message"),
    [
        ("no_qrels", {}, r"qrels holds no <split>.tsv file; data.data_dir must be a BEIR folder"),
        ("unknown_query", {}, r"qrels/test.tsv:8 names query id 'q99', which .*queries.jsonl does not hold"),
        ("unknown_doc", {}, r"qrels/train.tsv:18 names corpus id 'nope', which .*corpus.jsonl does not hold"),
        ("no_corpus", {}, r"corpus.jsonl does not exist; data.data_dir must be a BEIR folder"),
        ("bad_line", {}, r"test.tsv:8 is not 'query-id<TAB>corpus-id<TAB>score'"),
        ("fine", {"val_split": "dev"}, r"dev.tsv does not exist; set data.val_split to one of the qrels here \(test"),
        ("fine", {"train_split": "extra"}, r"extra.tsv does not exist; .* or data.train_split=null to evaluate only"),
        ("fine", {"train_pairs": "/nope/x.jsonl"}, r"data.train_pairs=/nope/x.jsonl does not exist"),
    ],
)
def test_bad_folders_name_file_id_and_key(tmp_path, case, kw, message):
    dm = BeirDataModule(data_dir=str(_broken(tmp_path, case)), **kw)
    with pytest.raises(BadInputError, match=message) as err:
        dm.setup()
    assert "\n" not in str(err.value)


def test_needs_a_folder(tmp_path):
    with pytest.raises(BadInputError, match=r"data=beir needs data.data_dir="):
        BeirDataModule()
    with pytest.raises(BadInputError, match="is not a folder"):
        BeirDataModule(data_dir=str(tmp_path / "missing")).setup()


def test_biencoder_ranks_the_whole_corpus_and_logs_the_baseline(tmp_path):
    root = write_beir(tmp_path / "beir")
    torch.manual_seed(0)
    model = BiEncoder(
        encoder=None,
        head=None,
        loss=CLIPLoss(),
        negatives=InBatch(),
        optimizer=partial(torch.optim.AdamW, lr=3e-3),
        text_encoder=TransformerTextEncoder(vocab_size=256, max_length=12, width=16, depth=1, heads=2),
        embed_dim=8,
        batch_size=4,
        eval_chunk_size=2,
    )
    dm = BeirDataModule(data_dir=str(root), val_split="train", batch_size=4)
    before = model.evaluate_metrics(dm)
    assert list(before) == [f"val/{m}" for m in BEIR_MEASURES]
    # the same numbers from the full score matrix, with qrels read from the files by id (q3 may not find d-"q3")
    q = model.encode_texts_batched(dm.val_queries(), model.text_encoder, model.query_projection)
    c = model.encode_texts_batched(dm.corpus_texts(), model.text_encoder, model.query_projection)
    sims = q @ c.T
    sims[3, dm.corpus_ids.index("q3")] = float("-inf")
    scores, order = sims.sort(dim=1, descending=True)
    qrels = [{dm.corpus_ids.index(f"d{d}"): 1 for d in (j, j + 10)} for j in range(8)]
    want = ir_metrics(scores, order, qrels)
    assert before == pytest.approx({f"val/{k}": v for k, v in want.items()}, abs=1e-12)

    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    logged = {k: v.item() for k, v in trainer.callback_metrics.items()}
    for m in BEIR_MEASURES:
        assert logged[f"val/{m}_init"] == pytest.approx(before[f"val/{m}"], abs=1e-6)
        assert f"val/{m}" in logged


@pytest.mark.slow
def test_train_command_on_a_beir_folder(tmp_path):
    root = write_beir(tmp_path / "beir")
    tiny = ["text_encoder.width=16", "text_encoder.depth=1", "text_encoder.heads=2", "objective.embed_dim=8"]
    args = ["experiment=biencoder_text_pairs", "data=beir", f"data.data_dir={root}", "data.batch_size=4"]
    run = train_run(
        tmp_path,
        *args,
        *tiny,
        "trainer.max_epochs=1",
        "trainer.check_val_every_n_epoch=1",
        "optimized_metric=val/ndcg@10",
    )
    m = run.metrics
    assert {f"val/{k}" for k in BEIR_MEASURES} <= set(m) and {f"val/{k}_init" for k in BEIR_MEASURES} <= set(m)
    run.assert_metrics_match_checkpoint(*(f"val/{k}" for k in BEIR_MEASURES))  # the final ones, from last.ckpt

    shutil.rmtree(root / "qrels")
    bad = train_run(tmp_path, *args, *tiny, name="bad", check=False)
    assert bad.proc.returncode == 2, bad.output
    lines = [ln for ln in bad.proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "qrels holds no <split>.tsv file" in lines[-1]
    assert "Traceback" not in bad.proc.stderr
