"""Gradient caching (``objective.grad_cache.micro_batch_size``) against the un-cached step.

The reference is the objective's own ``training_step`` on the whole batch with caching off; the cached
step must give the same loss and the same gradient for every parameter (``logit_scale`` included:
once, not once per micro-batch), in float32 and float64. BatchNorm is in eval mode (micro-batches
would otherwise be normalised with their own statistics; see the grad_cache module docstring).
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn

from contrastlab.encoders import ProjectionHead, SmallCNN
from contrastlab.encoders.text import TransformerTextEncoder
from contrastlab.losses import CLIPLoss, NTXentLoss, SigLIPLoss, TripletMarginLoss
from contrastlab.negatives import InBatch, TripletMiner
from contrastlab.objectives import SimCLR, Triplet
from contrastlab.objectives.biencoder import BiEncoder
from contrastlab.objectives.clip import CLIP
from contrastlab.objectives.grad_cache import GradCache

N = 12  # batch
WORDS = ["red", "green", "blue", "small", "large", "circle", "square", "star", "cross", "on", "the", "left"]
WORDS += ["right", "top"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is fastest


def captions(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (3 + k % 4,), generator=g)) for k in range(n)]


def text_tower(dropout: float = 0.0) -> TransformerTextEncoder:
    tower = TransformerTextEncoder(vocab_size=32, max_length=10, width=16, depth=1, heads=2, dropout=dropout)
    tower.fit_tokenizer(WORDS)
    return tower


def calibrated(model: nn.Module, x: torch.Tensor, embed) -> nn.Module:
    """BatchNorm running statistics of ``x`` (momentum 1), then eval mode: a well-conditioned eval-mode BN."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = 1.0
    with torch.no_grad():
        model.train()
        embed(x)
    for m in norms:
        m.momentum = 0.1
    return model.eval()


def simclr(micro: int | None, dtype=torch.float32) -> tuple[SimCLR, dict]:
    torch.manual_seed(0)
    model = SimCLR(
        encoder=SmallCNN(1, width=4, stages=2, out_dim=16),
        head=ProjectionHead(16, hidden_dim=32, out_dim=8),
        loss=NTXentLoss(0.2),
        negatives=InBatch(),
        optimizer=partial(torch.optim.SGD, lr=0.1),
        grad_cache={"micro_batch_size": micro},
    ).to(dtype)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(N, 1, 8, 8, generator=g, dtype=dtype) for _ in range(2)]
    batch = {"views": views, "index": torch.arange(N), "label": torch.full((N,), -1)}
    return calibrated(model, torch.cat(views), model.project), batch


def clip(micro: int | None, dtype=torch.float32, loss: nn.Module | None = None, dropout: float = 0.0):
    torch.manual_seed(0)
    model = CLIP(
        encoder=SmallCNN(3, width=4, stages=2, out_dim=16),
        head=ProjectionHead(16, out_dim=8, num_layers=1, batch_norm=False),
        loss=loss or CLIPLoss(),
        negatives=InBatch(),
        optimizer=partial(torch.optim.SGD, lr=0.1),
        text_encoder=text_tower(dropout),
        grad_cache={"micro_batch_size": micro},
    ).to(dtype)
    g = torch.Generator().manual_seed(2)
    batch = {"image": torch.randn(N, 3, 8, 8, generator=g, dtype=dtype), "text": captions(N, 3)}
    calibrated(model, batch["image"], model.encode_image)
    if dropout:
        model.text_encoder.train()
    return model, batch


def biencoder(micro: int | None, dtype=torch.float32) -> tuple[BiEncoder, dict]:
    torch.manual_seed(0)
    model = BiEncoder(
        encoder=None,
        head=None,
        loss=CLIPLoss(),
        negatives=InBatch(),
        optimizer=partial(torch.optim.SGD, lr=0.1),
        text_encoder=text_tower(),
        shared=False,
        embed_dim=8,
        grad_cache={"micro_batch_size": micro},
    ).to(dtype)
    batch = {"query": captions(N, 4), "positive": captions(N, 5), "negatives": captions(5, 6), "index": torch.arange(N)}
    return model.eval(), batch


def step(model: nn.Module, batch: dict, scale: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, parameter gradients) of one training step; ``scale`` multiplies the loss before backward
    (what Lightning does for gradient accumulation and fp16 loss scaling)."""
    model.zero_grad()
    loss = model.training_step(batch, 0)
    (loss * scale).backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_step(got, want, dtype) -> None:
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(got[0], want[0], **tol)
    assert got[1].keys() == want[1].keys()
    scale = max(float(g.abs().max()) for g in want[1].values())
    for name, g in want[1].items():
        torch.testing.assert_close(
            got[1][name],
            g,
            rtol=tol["rtol"] * 10,
            atol=tol["atol"] * scale,
            msg=lambda m, n=name: f"gradient of {n}: {m}",
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("micro", [1, 4, 5, 64])  # rows per micro-batch: one, a divisor, uneven, all
def test_simclr_cached_step_equals_the_plain_step(micro: int, dtype) -> None:
    want = step(*simclr(None, dtype))
    got = step(*simclr(micro, dtype))
    assert len(want[1]) == len(list(simclr(None)[0].parameters()))  # every parameter has a gradient
    assert_same_step(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_clip_cached_step_equals_the_plain_step_including_logit_scale(loss: str, dtype) -> None:
    make = (lambda: CLIPLoss()) if loss == "clip" else (lambda: SigLIPLoss())
    want = step(*clip(None, dtype, make()))
    got = step(*clip(4, dtype, make()))  # 3 micro-batches of images and 3 of captions
    assert "logit_scale" in want[1] and abs(float(want[1]["logit_scale"])) > 1e-6
    if loss == "siglip":
        assert "loss.logit_bias" in want[1]
    assert_same_step(got, want, dtype)


def test_logit_scale_gradient_is_the_analytic_one_not_multiplied_by_micro_batches() -> None:
    """dL/d(log s) = s * dL/ds, with dL/ds from the loss on the (fixed) embeddings: independent of m."""
    model, batch = clip(3)
    with torch.no_grad():
        u, v = model.encode_image(batch["image"]), model.encode_text(batch["text"])
    s = model.logit_scale.detach().exp().requires_grad_(True)
    (ds,) = torch.autograd.grad(CLIPLoss()(u, v, s), s)
    _, grads = step(model, batch)
    torch.testing.assert_close(grads["logit_scale"], s.detach() * ds, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_biencoder_cached_step_with_hard_negatives_equals_the_plain_step(dtype) -> None:
    want = step(*biencoder(None, dtype))
    got = step(*biencoder(5, dtype))
    assert any(n.startswith("doc_encoder") for n in want[1])  # the document tower trains too
    assert_same_step(got, want, dtype)


def test_scaled_loss_scales_every_gradient_once() -> None:
    """Gradient accumulation divides the loss (fp16 AMP multiplies it): the cached embedding gradients
    and the logit_scale gradient must scale alike."""
    model, batch = clip(4)
    _, full = step(model, batch)
    _, quarter = step(model, batch, scale=0.25)
    for name, g in full.items():
        torch.testing.assert_close(quarter[name], g * 0.25, rtol=1e-5, atol=1e-9)


def test_dropout_masks_are_replayed_from_each_micro_batch_rng_state() -> None:
    """With dropout in the text tower, the cached step equals embedding the micro-batches one after
    another with gradients from the same RNG state (the same masks), and leaves the RNG where that
    sequence leaves it."""
    micro = 4
    model, batch = clip(micro, dropout=0.5)
    torch.manual_seed(123)
    _, got = step(model, batch)
    after_cached = torch.rand(3)

    model.grad_cache = GradCache(None)
    model.zero_grad()
    torch.manual_seed(123)
    imgs = torch.cat([model.encode_image(batch["image"][i : i + micro]) for i in range(0, N, micro)])
    txts = torch.cat([model.encode_text(batch["text"][i : i + micro]) for i in range(0, N, micro)])
    model.pair_loss(imgs, txts).backward()
    after_reference = torch.rand(3)
    torch.testing.assert_close(after_cached, after_reference)  # the same random numbers were drawn
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
    model.zero_grad()
    torch.manual_seed(124)  # other masks: a different gradient, so the check above has teeth
    _, other = step(model, batch)
    assert max(float((other[n] - got[n]).abs().max()) for n in got) > 1e-4


def test_batchnorm_running_statistics_are_updated_once_per_micro_batch_not_twice() -> None:
    model, batch = simclr(4)
    model.train()  # BatchNorm in training mode: running statistics move
    reference = simclr(4)[0].train()
    with torch.no_grad():  # what the embedding pass alone does to the statistics
        for x in batch["views"]:
            for i in range(0, N, 4):
                reference.project(x[i : i + 4])
    step(model, batch)
    for (name, b), (_, want) in zip(model.named_buffers(), reference.named_buffers(), strict=True):
        torch.testing.assert_close(b, want, msg=lambda m, n=name: f"{n}: {m}")


def test_autocast_is_replayed_in_the_backward_pass() -> None:
    """The backward pass runs outside autocast (Lightning's ``loss.backward()``); the micro-batches
    must still be re-embedded under the autocast state of the forward pass."""
    layer = nn.Linear(4, 3)
    seen: list[tuple[bool, torch.dtype]] = []

    def embed(x: torch.Tensor) -> torch.Tensor:
        seen.append((torch.is_autocast_enabled("cpu"), layer(x).dtype))
        return layer(x)

    x = torch.randn(6, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (z,) = GradCache(2)(layer, [(embed, x)])
    z.float().pow(2).sum().backward()
    assert seen == [(True, torch.bfloat16)] * 6  # 3 micro-batches embedded, then 3 replayed


def test_bf16_cached_step_matches_the_plain_bf16_step() -> None:
    plain, batch = simclr(None)
    cached, _ = simclr(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = step(plain, batch)
        got = step(cached, batch)
    torch.testing.assert_close(got[0], want[0], rtol=2e-2, atol=2e-2)
    for name, g in want[1].items():  # bf16 rounding differs between batch shapes: compare directions
        cos = nn.functional.cosine_similarity(got[1][name].flatten().float(), g.flatten().float(), dim=0)
        assert cos > 0.98, f"{name}: cosine {float(cos):.4f}"


def test_off_and_outside_training_it_is_the_plain_forward() -> None:
    model, batch = clip(4)
    with torch.no_grad():
        a, b = model.grad_cache(model, [(model.encode_image, batch["image"]), (model.encode_text, batch["text"])])
        torch.testing.assert_close(a, model.encode_image(batch["image"]))
        torch.testing.assert_close(b, model.encode_text(batch["text"]))
    assert not GradCache(None).enabled and GradCache(8).enabled


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"objective\.grad_cache\.micro_batch_size must be a positive"):
        GradCache(0)
    with pytest.raises(ValueError, match=r"objective=triplet does not support gradient caching; set objective"):
        Triplet(
            encoder=SmallCNN(1, width=4, stages=1, out_dim=8),
            head=nn.Identity(),
            loss=TripletMarginLoss(),
            negatives=TripletMiner("batch_hard"),
            optimizer=partial(torch.optim.SGD, lr=0.1),
            grad_cache={"micro_batch_size": 4},
        )


def test_start_up_check_refuses_a_micro_batch_that_does_not_divide_the_batch() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from contrastlab.config import build
    from contrastlab.config.checks import ConfigError, check_config

    def composed(*overrides: str):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        return cfg

    try:
        with initialize_config_dir(build.CONF_DIR, version_base="1.3"):
            cfg = composed("objective.grad_cache.micro_batch_size=48", "data.batch_size=256")
            with pytest.raises(ConfigError, match=r"micro_batch_size=48 does not divide data.batch_size=256") as err:
                check_config(cfg)
            assert "\n" not in str(err.value)
            for experiment in ([], ["experiment=clip_shapes"], ["experiment=biencoder_text_pairs"]):
                ok = composed(*experiment, "objective.grad_cache.micro_batch_size=32", "data.batch_size=256")
                check_config(ok)
                with open_dict(ok):
                    del ok["hydra"]  # what a job sees
                assert build.build_objective(ok).grad_cache.micro_batch_size == 32  # the key reaches the model
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.slow
@pytest.mark.parametrize("experiment", [None, "clip_shapes"])
def test_training_with_grad_cache_runs_end_to_end(train, monkeypatch, experiment: str | None) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: extra threads only contend on a busy machine
    overrides = ["objective.grad_cache.micro_batch_size=32", "data.batch_size=256", "debug=fast"]
    if experiment:
        overrides.append(f"experiment={experiment}")
    run = train(*overrides)
    metrics = run.metrics
    assert metrics["trainer/global_step"] >= 1 and math.isfinite(metrics["train/loss"])
