"""The bi-encoder on a pretrained (sentence-transformers) tower: a lossless start (no projection), the fixed
scale of 20 with in-batch and hard negatives against a naive loss, GradCache with the Hugging Face tower, the
warm-up-linear schedule, and the ``experiment=finetune_text`` recipe."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from writers import write_tiny_sentence_transformer

from contrastlab.encoders.text import HFTextEncoder
from contrastlab.losses import CLIPLoss
from contrastlab.negatives import InBatch
from contrastlab.objectives.biencoder import BiEncoder
from contrastlab.objectives.optim import warmup_linear

pytestmark = pytest.mark.usefixtures("one_thread")

QUERIES = ["how do I sort a list", "what is the capital of france", "add two numbers", "read a file", "a red circle"]
DOCS = ["sorted returns a new list", "paris is the capital", "return a plus b", "open the file and read", "a circle"]
NEGS = ["the capital of norway is oslo", "write a file", "a blue square"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_sentence_transformer(tmp_path_factory.mktemp("st") / "model", QUERIES + DOCS + NEGS)


def model(folder, micro: int | None = None, **kw) -> BiEncoder:
    torch.manual_seed(0)
    opts = {"init_temperature": 0.05, "learn_logit_scale": False, **kw}
    return BiEncoder(
        encoder=None,
        head=None,
        loss=CLIPLoss(),
        negatives=InBatch(),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        text_encoder=HFTextEncoder(str(folder), local_files_only=True),
        grad_cache={"micro_batch_size": micro},
        **opts,
    )


def batch() -> dict:
    return {"query": QUERIES, "positive": DOCS, "negatives": NEGS, "index": torch.arange(len(QUERIES))}


def test_without_a_projection_the_start_is_the_pretrained_embedding(folder):
    from sentence_transformers import SentenceTransformer

    m = model(folder).eval()
    assert isinstance(m.query_projection, torch.nn.Identity)
    tower_params = {id(p) for p in m.text_encoder.parameters()}
    assert {id(p) for p in m.parameters()} - tower_params == {id(m.logit_scale)}  # nothing new but the scale
    want = torch.tensor(SentenceTransformer(str(folder), device="cpu").encode(QUERIES, normalize_embeddings=True))
    with torch.no_grad():
        got = m.encode_query(QUERIES)
    assert (got * want).sum(1).min().item() >= 0.9999
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert model(folder, embed_dim=8).query_projection.weight.shape == (8, 24)  # a projection only when asked


def naive_loss(q: torch.Tensor, d: torch.Tensor, n: torch.Tensor, scale: float) -> torch.Tensor:
    """CLIP's symmetric loss written out: query i against every document and hard negative (its own document is
    the positive), and document i against every query."""
    total = 0.0
    rows = len(q)
    for i in range(rows):
        logits = [scale * float(q[i] @ d[j]) for j in range(rows)] + [scale * float(q[i] @ k) for k in n]
        total += -(logits[i] - math.log(sum(math.exp(x) for x in logits))) / (2 * rows)
        back = [scale * float(d[i] @ q[j]) for j in range(rows)]
        total += -(back[i] - math.log(sum(math.exp(x) for x in back))) / (2 * rows)
    return torch.tensor(total, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixed_scale_20_with_hard_negatives_matches_the_naive_loss(folder, dtype):
    m = model(folder).to(dtype).eval()
    assert float(m.logit_scale.exp()) == pytest.approx(20.0, rel=1e-6) and not m.logit_scale.requires_grad
    b = batch()
    with torch.no_grad():
        loss = m._loss(b)
        q, d, n = m.encode_query(b["query"]), m.encode_document(b["positive"]), m.encode_document(b["negatives"])
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert loss.dtype == dtype
    scale = float(m.logit_scale.exp())  # 20 up to the float32 rounding of log(20)
    torch.testing.assert_close(loss.double(), naive_loss(q.double(), d.double(), n.double(), scale), rtol=tol, atol=tol)
    before = m.logit_scale.detach().clone()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    m.train()
    m._loss(b).backward()
    opt.step()
    assert torch.equal(m.logit_scale.detach(), before)  # fixed: never trained


def test_the_temperature_learns_only_when_asked(folder):
    m = model(folder, learn_logit_scale=True).eval()
    m._loss(batch()).backward()
    assert m.logit_scale.requires_grad and m.logit_scale.grad is not None and m.logit_scale.grad.abs() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grad_cache_with_the_pretrained_tower_equals_the_plain_step(folder, dtype):
    """Eval mode (no dropout): the cached step must give the plain step's loss and every gradient."""

    def step(micro):
        m = model(folder, micro, learn_logit_scale=True).to(dtype).eval()
        loss = m.training_step(batch(), 0)
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}

    (want_loss, want), (got_loss, got) = step(None), step(2)
    tol = {"rtol": 1e-4, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-12}
    torch.testing.assert_close(got_loss, want_loss, **tol)
    assert got.keys() == want.keys() and "logit_scale" in want and len(want) > 10
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10, msg=name)


def test_warmup_linear_matches_the_formula_and_transformers():
    from transformers import get_linear_schedule_with_warmup

    total, warm = 50, 5

    def factors(make):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make(opt)
        out = []
        for _ in range(total + 2):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    ours = factors(lambda o: warmup_linear(o, total, warmup_fraction=0.1))
    naive = [t / warm if t < warm else max(0.0, (total - t) / (total - warm)) for t in range(total + 2)]
    theirs = factors(lambda o: get_linear_schedule_with_warmup(o, warm, total))
    assert ours == pytest.approx(naive, abs=1e-12) and ours == pytest.approx(theirs, abs=1e-12)
    assert ours[0] == 0.0 and ours[warm] == 1.0 and ours[total] == 0.0


def test_the_finetune_text_recipe(folder, tmp_path):
    from contrastlab import api
    from contrastlab.config.checks import check_config
    from contrastlab.errors import BadInputError

    cfg = api.compose(["experiment=finetune_text", f"text_encoder.name={folder}"], tmp_path / "run")
    check_config(cfg)
    assert cfg.text_encoder._target_.endswith("HFTextEncoder") and cfg.text_encoder.pooling is None
    assert cfg.objective._target_.endswith("BiEncoder") and cfg.objective.embed_dim is None
    assert cfg.objective.init_temperature == 0.05 and cfg.objective.learn_logit_scale is False
    assert cfg.loss._target_.endswith("CLIPLoss") and cfg.sampler._target_.endswith("InBatch")
    assert cfg.optimizer._target_ == "torch.optim.AdamW" and cfg.optimizer.lr == 2e-5
    assert cfg.scheduler._target_.endswith("warmup_linear") and cfg.scheduler.warmup_fraction == 0.1
    assert cfg.data.batch_sampler._target_.endswith("NoDuplicatesBatchSampler") and cfg.data.num_negatives is None
    assert cfg.trainer.gradient_clip_val == 1.0
    unnamed = api.compose(["experiment=finetune_text"], tmp_path / "run")
    assert unnamed.text_encoder.name is None  # required: building the tower stops with the key named
    with pytest.raises(BadInputError, match="^text_encoder.name is required"):
        HFTextEncoder(name=unnamed.text_encoder.name)
    check_config(
        api.compose(
            ["experiment=finetune_text", f"text_encoder.name={folder}", "objective.grad_cache.micro_batch_size=8"],
            tmp_path / "run",
        )
    )
