"""The CLIP objective in-process: the logit_scale clamp, frozen towers, the vocabulary and metrics
surviving a checkpoint, and evaluate_metrics equal to what validation logs."""

from __future__ import annotations

import math
from functools import partial

import lightning as L
import pytest
import torch
from conftest import quiet_trainer

from contrastlab.data.shapes_captions import ShapesCaptionsDataModule
from contrastlab.encoders import ProjectionHead, SmallCNN
from contrastlab.encoders.text import TransformerTextEncoder
from contrastlab.losses import CLIPLoss, SigLIPLoss
from contrastlab.negatives import InBatch
from contrastlab.objectives.clip import CLIP


def make_model(loss=None, **kw) -> CLIP:
    torch.manual_seed(0)
    return CLIP(
        encoder=SmallCNN(3, width=4, stages=2, out_dim=16),
        head=ProjectionHead(16, out_dim=8, num_layers=1, batch_norm=False),
        loss=loss or CLIPLoss(),
        negatives=InBatch(),
        optimizer=partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.0),
        text_encoder=TransformerTextEncoder(vocab_size=64, max_length=16, width=16, depth=1, heads=2),
        batch_size=16,
        **kw,
    )


def make_dm(**kw) -> ShapesCaptionsDataModule:
    kw = {"num_train": 64, "num_val": 24, "batch_size": 16, "image_size": 16, **kw}
    return ShapesCaptionsDataModule(**kw)


def fit(model, dm, steps=2, tmp_path=None, **kw):
    trainer = quiet_trainer(
        max_steps=steps,
        limit_val_batches=1,
        default_root_dir=tmp_path,
        **kw,
    )
    trainer.fit(model, datamodule=dm)
    return trainer


def test_logit_scale_starts_at_clip_value_and_is_clamped_after_each_step(tmp_path):
    model = make_model()
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(500.0))  # above the cap: the next optimizer step must bring it down
    seen = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(pl_module.logit_scale.exp().item())

    fit(model, make_dm(), steps=3, tmp_path=tmp_path, limit_train_batches=3, max_epochs=1, callbacks=[Spy()])
    assert len(seen) == 3 and all(s <= 100.0 + 1e-4 for s in seen)
    assert seen[0] == pytest.approx(100.0, rel=1e-6)
    # the clamp is what holds it there: a plain optimizer step on a raised scale would not
    with torch.no_grad():
        model.logit_scale.fill_(math.log(500.0))
    model.clamp_logit_scale()
    assert model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-6)
    model.max_logit_scale = 50.0
    model.clamp_logit_scale()
    assert model.logit_scale.exp().item() == pytest.approx(50.0, rel=1e-6)


def test_logit_scale_is_learned_and_logged(tmp_path):
    model = make_model()
    before = model.logit_scale.item()
    trainer = fit(model, make_dm(), steps=2, tmp_path=tmp_path)
    assert model.logit_scale.item() != before
    assert trainer.callback_metrics["train/logit_scale"].item() == pytest.approx(
        model.logit_scale.exp().item(), rel=0.2
    )
    fixed = make_model(learn_logit_scale=False, init_temperature=0.5)
    assert fixed.logit_scale.exp().item() == pytest.approx(2.0)
    fit(fixed, make_dm(), steps=2, tmp_path=tmp_path)
    assert fixed.logit_scale.exp().item() == pytest.approx(2.0)


@pytest.mark.parametrize("frozen", ["image", "text"])
def test_frozen_towers_do_not_change(tmp_path, frozen):
    model = make_model(**{f"freeze_{frozen}": True})
    tower = model.encoder if frozen == "image" else model.text_encoder
    other = model.text_encoder if frozen == "image" else model.encoder
    dm = make_dm()
    model.prepare_text(dm)
    before = {k: v.clone() for k, v in tower.state_dict().items() if torch.is_tensor(v)}
    other_before = [p.clone() for p in other.parameters()]
    fit(model, dm, steps=2, tmp_path=tmp_path)
    model.train()
    assert not tower.training  # locked towers keep eval behaviour (BatchNorm statistics)
    for k, v in tower.state_dict().items():
        if torch.is_tensor(v):
            assert torch.equal(v, before[k]), k  # weights and BatchNorm buffers alike
    assert any(not torch.equal(a, b) for a, b in zip(other.parameters(), other_before, strict=True))
    assert not any(p.requires_grad for p in tower.parameters())


def test_checkpoint_carries_vocabulary_and_reproduces_metrics(tmp_path):
    dm = make_dm()
    model = make_model()
    trainer = fit(model, dm, steps=3, tmp_path=tmp_path, limit_train_batches=3, max_epochs=1)
    logged = {
        k: v.item()
        for k, v in trainer.callback_metrics.items()
        if k.startswith("val/") and "recall" in k and not k.endswith("_init")  # _init: the untrained weights'
    }
    assert "val/i2t_recall@5" in logged and "val/zero_shot_top1" in trainer.callback_metrics
    ckpt = tmp_path / "clip.ckpt"
    trainer.save_checkpoint(ckpt)
    fresh = make_model()
    assert fresh.text_encoder.needs_fit
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    fresh.load_state_dict(state)
    assert fresh.text_encoder.tokenizer.tokens == model.text_encoder.tokenizer.tokens
    again = fresh.evaluate_metrics(make_dm())
    for k, v in logged.items():
        assert again[k] == pytest.approx(v, abs=1e-6), k
    assert again["val/zero_shot_top1"] == pytest.approx(trainer.callback_metrics["val/zero_shot_top1"].item())


def naive_clip_metrics(model: CLIP, dm: ShapesCaptionsDataModule) -> dict[str, float]:
    """Recall@k, median ranks and zero-shot top-1 by loops over every query, from the towers directly."""
    model.eval()
    with torch.no_grad():
        batches = list(dm.val_image_dataloader())
        images = torch.cat([model.encode_image(b["image"]) for b in batches]).double()
        labels = torch.cat([b["label"] for b in batches])
        captions, owner = dm.val_captions()
        one = [model.encode_texts_batched([c], model.text_encoder, model.text_projection) for c in captions]
        texts = torch.cat(one).double()
        prompts = [[t.format(name) for t in dm.templates] for name in dm.class_names]
        classes = torch.stack(
            [
                torch.nn.functional.normalize(
                    torch.nn.functional.normalize(
                        model.encode_texts_batched(p, model.text_encoder, model.text_projection).double(), dim=1
                    ).mean(0),
                    dim=0,
                )
                for p in prompts
            ]
        )
    img, txt = torch.nn.functional.normalize(images, dim=1), torch.nn.functional.normalize(texts, dim=1)
    sim = img @ txt.T  # (images, captions)
    out: dict[str, float] = {}
    i2t_ranks = []  # rank of the best-ranked own caption, 1-based
    for i in range(sim.shape[0]):
        order = sim[i].argsort(descending=True).tolist()
        i2t_ranks.append(min(order.index(j) for j in range(len(captions)) if owner[j] == i) + 1)
    t2i_ranks = []
    for j in range(sim.shape[1]):
        order = sim[:, j].argsort(descending=True).tolist()
        t2i_ranks.append(order.index(int(owner[j])) + 1)
    for name, ranks in (("i2t", i2t_ranks), ("t2i", t2i_ranks)):
        for k in (1, 5, 10):
            out[f"val/{name}_recall@{k}"] = sum(r <= k for r in ranks) / len(ranks)
        r, n = sorted(ranks), len(ranks)
        out[f"val/{name}_median_rank"] = (r[(n - 1) // 2] + r[n // 2]) / 2
    pred = (img @ classes.T).argmax(1)
    out["val/zero_shot_top1"] = float((pred == labels).double().mean())
    return out


@pytest.mark.parametrize("steps", [0, 6])
def test_evaluate_metrics_match_a_naive_reference(tmp_path, steps):
    """Untrained and after a few steps: every recall, median rank and zero-shot top-1 equals loops over
    the towers' features (and chance levels are what the gallery sizes give)."""
    dm = make_dm()
    model = make_model()
    if steps:
        fit(model, dm, steps=steps, tmp_path=tmp_path, limit_train_batches=steps, max_epochs=2)
    m = model.evaluate_metrics(dm)
    ref = naive_clip_metrics(model, make_dm())
    for key, value in ref.items():
        assert m[key] == pytest.approx(value, abs=1e-9), key
    assert m["val/t2i_recall@5_chance"] == pytest.approx(5 / 24)
    assert "val/zero_shot_top5" in m  # 6 shape classes


def test_siglip_trains_its_bias(tmp_path):
    model = make_model(loss=SigLIPLoss())
    assert model.logit_scale.exp().item() == pytest.approx(10.0)
    trainer = fit(model, make_dm(), steps=2, tmp_path=tmp_path)
    assert model.loss.logit_bias.item() != -10.0
    assert "train/logit_bias" in trainer.callback_metrics
