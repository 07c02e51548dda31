"""Fine-tuning modes of a CLIP built from an open_clip model (a tiny random-init one saved to a file): full
fine-tuning, locked image tower (LiT), locked text tower, the last N blocks unlocked, per-tower learning rates,
open_clip's no-weight-decay convention, gradient caching and SigLIP on the joint model."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import quiet_trainer
from torch import nn
from writers import write_tiny_open_clip

from contrastlab.data.shapes_captions import ShapesCaptionsDataModule
from contrastlab.encoders import ProjectionHead, SmallCNN
from contrastlab.encoders.open_clip_towers import OpenCLIPImageTower
from contrastlab.encoders.text import TransformerTextEncoder
from contrastlab.errors import ConfigError
from contrastlab.losses import CLIPLoss, SigLIPLoss
from contrastlab.negatives import InBatch
from contrastlab.objectives.clip import CLIP

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return write_tiny_open_clip(tmp_path_factory.mktemp("tiny"))


def make_model(tiny, optimizer=None, loss=None, **kw) -> CLIP:
    config, weights = tiny
    torch.manual_seed(0)
    return CLIP(
        encoder=OpenCLIPImageTower(str(config), pretrained=str(weights)),
        head=nn.Identity(),
        loss=loss or CLIPLoss(),
        negatives=InBatch(),
        optimizer=optimizer or partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.1),
        batch_size=8,
        **kw,
    )


def make_dm() -> ShapesCaptionsDataModule:
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    return ShapesCaptionsDataModule(num_train=32, num_val=16, batch_size=8, image_size=32, mean=mean, std=std)


def fit(model: CLIP, steps: int = 2) -> dict[str, torch.Tensor]:
    """Parameters before ``steps`` optimizer steps (by name); gradients of the last step are kept on the model."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    quiet_trainer(max_steps=steps, limit_val_batches=0).fit(model, datamodule=make_dm())
    return before


def changed(model: nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


def names(model: CLIP, prefix: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


def test_full_finetuning_trains_every_parameter_from_the_models_logit_scale(tiny) -> None:
    model = make_model(tiny)
    assert model.logit_scale.item() == pytest.approx(model.encoder.init_logit_scale)
    assert all(p.requires_grad for p in model.parameters())
    before = fit(model)
    assert changed(model, before) == set(before)  # both towers, the embeddings and logit_scale


@pytest.mark.parametrize("locked", ["image", "text"])
def test_a_locked_tower_gets_no_gradient_and_stays_equal(tiny, locked: str) -> None:
    """``freeze_image`` is LiT (a locked image tower, the text tower trained to it); ``freeze_text`` the converse.
    With open_clip towers the projections are inside the towers, so they are locked too."""
    model = make_model(tiny, **{f"freeze_{locked}": True})
    tower, prefix = (model.encoder, "encoder.") if locked == "image" else (model.text_encoder, "text_encoder.")
    other = "text_encoder." if locked == "image" else "encoder."
    before = fit(model)
    model.train()
    assert not tower.training  # locked towers keep eval behaviour
    frozen = [p for n, p in model.named_parameters() if n.startswith(prefix)]
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
    assert changed(model, before) == names(model, other) | {"logit_scale"}


def test_unfreezing_the_last_block_of_a_locked_tower(tiny) -> None:
    """``unfreeze_last_n=1`` on a locked image tower: its last residual block, final norm and projection train,
    its stem, embeddings and first block stay as they were (no gradient)."""
    model = make_model(tiny, freeze_image=True, unfreeze_last_n=1)
    before = fit(model)
    trained = {"encoder.visual.ln_post.weight", "encoder.visual.ln_post.bias", "encoder.visual.proj"}
    trained |= names(model, "encoder.visual.transformer.resblocks.1.")
    assert changed(model, before) == trained | names(model, "text_encoder.") | {"logit_scale"}
    for n, p in model.named_parameters():
        if n.startswith("encoder.") and n not in trained:
            assert not p.requires_grad and p.grad is None, n
    both = make_model(tiny, freeze_image=True, freeze_text=True, unfreeze_last_n=2)  # every block of both
    text_tail = {"text_encoder.model.ln_final.weight", "text_encoder.model.ln_final.bias"}
    text_tail |= {"text_encoder.model.text_projection"} | names(both, "text_encoder.model.transformer.")
    trainable = {n for n, p in both.named_parameters() if p.requires_grad}
    assert trainable == trained | names(both, "encoder.visual.transformer.") | text_tail | {"logit_scale"}


def test_unfreeze_last_n_needs_a_locked_tower_with_that_many_blocks(tiny) -> None:
    with pytest.raises(ConfigError, match=r"objective\.unfreeze_last_n=1 .*set objective\.freeze_image=true"):
        make_model(tiny, unfreeze_last_n=1)
    with pytest.raises(ConfigError, match=r"the text tower has 2 residual blocks; .* between 0 and 2"):
        make_model(tiny, freeze_text=True, unfreeze_last_n=3)


def test_per_tower_learning_rates(tiny) -> None:
    """``image_lr``/``text_lr`` set the rate of each side (scaled like the base rate under lr_scaling);
    an image rate of 0 leaves the image tower unchanged under AdamW."""
    model = make_model(tiny, image_lr=2e-5, text_lr=3e-4, lr_scaling="linear", base_batch_size=4)  # factor 2
    groups = model.configure_optimizers().param_groups
    by_id = {id(p): g for g in groups for p in g["params"]}
    for n, p in model.named_parameters():
        want = 4e-5 if n.startswith("encoder.") else 6e-4 if n.startswith("text_encoder.") else 2e-3
        assert by_id[id(p)]["lr"] == pytest.approx(want), n
    still = make_model(tiny, image_lr=0.0)
    before = fit(still)
    assert changed(still, before) == names(still, "text_encoder.") | {"logit_scale"}


def expected_decay(name: str, param: nn.Parameter) -> bool:
    """open_clip's rule (no decay for ndim < 2, norms, biases, logit_scale) plus embeddings, by name."""
    leaf = name.rsplit(".", 1)[-1]
    if param.ndim < 2 or leaf in ("bias", "logit_scale") or ".ln_" in name or "norm" in name:
        return False
    return (
        leaf not in ("positional_embedding", "class_embedding", "position_embedding") and "token_embedding" not in name
    )


@pytest.mark.parametrize("joint", [True, False])
def test_no_weight_decay_on_norms_biases_embeddings_and_the_logit_scale(tiny, joint: bool) -> None:
    if joint:
        model = make_model(tiny)
    else:
        model = CLIP(
            encoder=SmallCNN(3, width=4, stages=2, out_dim=16),
            head=ProjectionHead(16, out_dim=8, num_layers=1, batch_norm=False),
            loss=CLIPLoss(),
            negatives=InBatch(),
            optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.1),
            text_encoder=TransformerTextEncoder(vocab_size=64, max_length=16, width=16, depth=1, heads=2),
        )
    decay, no_decay = model.configure_optimizers().param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    got = {id(p) for p in decay["params"]}
    params = dict(model.named_parameters())
    assert {n for n, p in params.items() if id(p) in got} == {n for n, p in params.items() if expected_decay(n, p)}
    assert len(decay["params"]) + len(no_decay["params"]) == len(params)
    if joint:
        assert {"encoder.visual.proj", "text_encoder.model.text_projection"} <= {
            n for n, p in params.items() if id(p) in got
        }


def test_grad_cache_step_equals_the_plain_step_on_the_joint_model(tiny) -> None:
    dm = make_dm()
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    grads = []
    for micro in (None, 3):
        model = make_model(tiny, grad_cache={"micro_batch_size": micro}).eval()
        model.zero_grad()
        loss = model.training_step(batch, 0)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    scale = max(float(g.abs().max()) for g in grads[0][1].values())
    for n, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][n], g, rtol=1e-4, atol=1e-6 * scale, msg=lambda m, n=n: f"{n}: {m}")


def test_siglip_on_the_joint_model_trains_its_bias(tiny) -> None:
    model = make_model(tiny, loss=SigLIPLoss())
    bias = model.loss.logit_bias.item()  # this open_clip model has no logit_bias: the loss keeps its own start
    fit(model)
    assert model.loss.logit_bias.item() != bias and torch.isfinite(model.logit_scale)


def test_unfreezing_finds_the_blocks_of_a_tower_without_layer_groups() -> None:
    """Towers that do not describe their blocks (here contrastlab's own text Transformer): the largest stack of
    same-type layers is the blocks, what is registered after them (the final norm) follows them."""
    model = CLIP(
        encoder=SmallCNN(3, width=4, stages=2, out_dim=16),
        head=ProjectionHead(16, out_dim=8, num_layers=1, batch_norm=False),
        loss=CLIPLoss(),
        negatives=InBatch(),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        text_encoder=TransformerTextEncoder(vocab_size=64, max_length=16, width=16, depth=3, heads=2),
        freeze_text=True,
        unfreeze_last_n=1,
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("text_encoder.")}
    assert trainable == names(model, "text_encoder.transformer.layers.2.") | names(model, "text_encoder.norm.")
