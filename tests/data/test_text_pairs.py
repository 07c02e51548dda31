"""Text pairs (JSONL) and the text bi-encoder: shared or two towers, hard negatives, retrieval metrics."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from conftest import quiet_trainer

from contrastlab.data.no_duplicates import NoDuplicatesBatchSampler
from contrastlab.data.text_pairs import DEMO_PATH, TextPairsDataModule
from contrastlab.encoders.text import TransformerTextEncoder
from contrastlab.losses import CLIPLoss
from contrastlab.negatives import InBatch
from contrastlab.objectives.biencoder import BiEncoder


def test_demo_file_ships_with_the_package():
    rows = [json.loads(line) for line in DEMO_PATH.read_text().splitlines()]
    assert len(rows) >= 100 and all({"query", "positive", "negatives"} <= set(r) for r in rows)


def test_datamodule_reads_splits_and_batches(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"query": f"q{i}", "positive": f"p{i}", "negative": f"n{i % 3}"} for i in range(20)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    dm = TextPairsDataModule(path=str(path), batch_size=4, val_fraction=0.25)
    dm.setup()
    assert len(dm.train_rows) == 15 and len(dm.val_rows) == 5
    assert {r["query"] for r in dm.train_rows}.isdisjoint({r["query"] for r in dm.val_rows})
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["query"]) == len(batch["positive"]) == len(batch["negatives"]) == 4
    docs, owner = dm.val_documents()
    assert docs[:5] == [r["positive"] for r in dm.val_rows] and owner.tolist() == [0, 1, 2, 3, 4] + [-1] * 5
    assert len(dm.train_texts()) == 45
    no_negs = TextPairsDataModule(path=str(path), batch_size=4, num_negatives=0)
    assert next(iter(no_negs.train_dataloader()))["negatives"] == []
    # rows sharing a negative never meet in a batch with the no-duplicates sampler
    strict = TextPairsDataModule(path=str(path), batch_size=3, batch_sampler=partial(NoDuplicatesBatchSampler))
    for b in strict.train_dataloader():
        assert len(set(b["negatives"])) == 3


def test_bad_input_names_the_key(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(ValueError, match="data.query_key"):
        TextPairsDataModule(path=str(path)).setup()
    with pytest.raises(ValueError, match="augment=null"):
        TextPairsDataModule(augment=lambda x: x)


def _model(shared: bool) -> BiEncoder:
    torch.manual_seed(0)
    return BiEncoder(
        encoder=None,
        head=None,
        loss=CLIPLoss(),
        negatives=InBatch(),
        optimizer=partial(torch.optim.AdamW, lr=3e-3),
        text_encoder=TransformerTextEncoder(vocab_size=512, max_length=16, width=16, depth=1, heads=2),
        shared=shared,
        embed_dim=8,
        batch_size=16,
    )


@pytest.mark.parametrize("shared", [True, False])
def test_biencoder_trains_with_shared_or_two_towers(tmp_path, shared):
    model = _model(shared)
    n_text = sum(p.numel() for p in model.text_encoder.parameters())
    n_all = sum(p.numel() for p in model.parameters())
    assert (model.doc_encoder is None) == shared
    assert n_all > 2 * n_text if not shared else n_all < 2 * n_text
    dm = TextPairsDataModule(batch_size=16)
    trainer = quiet_trainer(
        max_epochs=2,
        default_root_dir=tmp_path,
    )
    before = model.evaluate_metrics(dm)
    trainer.fit(model, datamodule=dm)
    after = {k: v.item() for k, v in trainer.callback_metrics.items()}
    assert after["val/mean_recall"] == pytest.approx(model.evaluate_metrics(dm)["val/mean_recall"], abs=1e-6)
    assert {"val/q2d_recall@1", "val/d2q_recall@5", "val/q2d_median_rank", "train/logit_scale"} <= set(after)
    assert after["val/q2d_recall@5"] >= after["val/q2d_recall@5_chance"]
    assert before.keys() <= after.keys()
    if not shared:  # the two towers drift apart once trained
        q = model.encode_query(["what does a cat eat?"])
        d = model.encode_document(["what does a cat eat?"])
        assert not torch.allclose(q, d)
