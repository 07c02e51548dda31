"""``encoder=open_clip``: towers, tokenizer, preprocessing and logit scale from open_clip, equal to open_clip's own
on the same inputs (a random-init ViT-S-32 saved to a file: no downloads), and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from PIL import Image
from writers import TINY_OPEN_CLIP, write_image_text_csv, write_tiny_open_clip

from contrastlab import api
from contrastlab.config import build
from contrastlab.encoders.open_clip_towers import (
    OpenCLIPImageTower,
    OpenCLIPModelError,
    OpenCLIPWeightsError,
    preprocess_settings,
)
from contrastlab.encoders.timm_encoder import EncoderInputError

pytestmark = pytest.mark.usefixtures("one_thread")
TEXTS = ["a photo of a cat.", "two small red triangles on the left", "x", "a dog, a ball and a very long caption " * 4]


@pytest.fixture(scope="module")
def vit_s32(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A random-init open_clip ViT-S-32 at 64x64 inputs and its state dict saved to a file."""
    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-S-32", force_image_size=64).eval()
    path = tmp_path_factory.mktemp("vit_s32") / "vit_s32.pt"
    torch.save(ref.state_dict(), path)
    return ref, path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return write_tiny_open_clip(tmp_path_factory.mktemp("tiny"))


def compose(tmp_path: Path, *overrides: str):
    return api.compose(["objective=clip", "encoder=open_clip", *overrides], tmp_path / "run")


@torch.no_grad()
def test_objective_features_equal_open_clip_encode_image_and_text(vit_s32, tmp_path) -> None:
    ref, path = vit_s32
    table = write_image_text_csv(tmp_path / "data")
    cfg = compose(
        tmp_path,
        "encoder.model=ViT-S-32",
        f"encoder.pretrained={path}",
        "encoder.image_size=64",
        "data=image_text_csv",
        f"data.path={table}",
    )
    build.build_datamodule(cfg)
    model = build.build_objective(cfg).eval()
    # the model's own towers: no text_encoder group built, no extra head or text projection
    assert type(model.text_encoder).__name__ == "OpenCLIPTextTower" and model.joint
    assert isinstance(model.head, torch.nn.Identity) and isinstance(model.text_projection, torch.nn.Identity)
    assert model.logit_scale.item() == pytest.approx(ref.logit_scale.item())
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    image_cos = F.cosine_similarity(model.encode_image(x), ref.encode_image(x), dim=1)
    tokens = open_clip.get_tokenizer("ViT-S-32")(TEXTS)
    assert torch.equal(model.text_encoder.tokenize(TEXTS)["input_ids"], tokens)
    text_cos = F.cosine_similarity(model.encode_text(TEXTS), ref.encode_text(tokens), dim=1)
    assert image_cos.min() >= 0.9999 and text_cos.min() >= 0.9999, (image_cos, text_cos)
    # the L2-normalised features themselves, not just their directions
    torch.testing.assert_close(model.encode_image(x), F.normalize(ref.encode_image(x), dim=1), atol=1e-5, rtol=0)


def _noise_folder(root: Path, classes: dict[str, int], size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            base = rng.integers(0, 256, size=(1, 1, 3)) * 0.5 + 40 * c
            pixels = np.clip(base + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


@torch.no_grad()
def test_zero_shot_on_an_image_folder_equals_open_clip_computed_directly(vit_s32, tmp_path) -> None:
    """Top-1 and mean per-class recall of ``evaluate_metrics`` (prompt templates from a file) against a zero-shot
    loop written with open_clip alone: its preprocessing, tokenizer and encoders."""
    _, path = vit_s32
    templates = ["a photo of a {}.", "a bad photo of the {}.", "itap of a {}.", "art of the {}."]
    (tmp_path / "templates.txt").write_text("# my prompts\n" + "\n".join(templates) + "\n\n")
    classes = {"golden_retriever": 3, "tabby_cat": 5, "owl": 4}
    val = _noise_folder(tmp_path / "val", classes, seed=1)
    cfg = compose(
        tmp_path,
        "encoder.model=ViT-S-32",
        f"encoder.pretrained={path}",
        "encoder.image_size=64",
        "data=imagefolder",
        f"data.data_dir={_noise_folder(tmp_path / 'train', classes)}",
        f"data.val_dir={val}",
        "data.num_workers=0",
    )
    dm = build.build_datamodule(cfg)
    assert (dm.image_size, list(dm.normalize.mean)) == (64, list(open_clip.OPENAI_DATASET_MEAN))
    model = build.build_objective(cfg).eval()
    ours = model.evaluate_metrics(dm, templates=str(tmp_path / "templates.txt"))

    ref, _, preprocess = open_clip.create_model_and_transforms("ViT-S-32", pretrained=str(path), force_image_size=64)
    tokenizer, names = open_clip.get_tokenizer("ViT-S-32"), [c.replace("_", " ") for c in sorted(classes)]
    weights = []
    for name in names:
        prompts = tokenizer([template.format(name) for template in templates])
        mean = F.normalize(ref.encode_text(prompts), dim=-1).mean(0)
        weights.append(mean / mean.norm())
    w = torch.stack(weights)
    hits: dict[int, list[bool]] = {}
    for label, name in enumerate(sorted(classes)):
        for file in sorted((val / name).iterdir()):
            image = preprocess(Image.open(file)).unsqueeze(0)
            pred = int((F.normalize(ref.encode_image(image), dim=-1) @ w.T).argmax())
            hits.setdefault(label, []).append(pred == label)
    top1 = sum(sum(h) for h in hits.values()) / sum(len(h) for h in hits.values())
    per_class = sum(sum(h) / len(h) for h in hits.values()) / len(hits)
    assert ours["val/zero_shot_top1"] == pytest.approx(top1, abs=1e-12)
    assert ours["val/zero_shot_mean_per_class_recall"] == pytest.approx(per_class, abs=1e-12)
    assert "val/zero_shot_top5" not in ours  # 3 classes


def test_data_takes_the_models_preprocessing(tmp_path) -> None:
    """mean/std/size/interpolation/resize mode come from open_clip (tag configs included, read without a download),
    and the caption table's evaluation tensors match open_clip's own transform on the same files."""
    table = write_image_text_csv(tmp_path / "data")  # 40x30 images: resized and centre-cropped
    cfg = compose(
        tmp_path, "encoder.model=ViT-S-32", "encoder.image_size=64", "data=image_text_csv", f"data.path={table}"
    )
    dm = build.build_datamodule(cfg)
    data = cfg.data
    assert (data.image_size, data.interpolation, data.resize_mode) == (64, "bicubic", "shortest")
    assert list(data.mean) == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert list(data.std) == pytest.approx(open_clip.OPENAI_DATASET_STD)
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-S-32", force_image_size=64)
    dm.setup()
    for file in dm.val_split.images:
        ours = dm.eval_transform(dm.load_image(file).float() / 255)
        theirs = preprocess(Image.open(file))
        assert ours.shape == theirs.shape == (3, 64, 64)
        assert (ours - theirs).abs().max() < 0.05  # tensor vs PIL bicubic resampling, in normalised units
    siglip = preprocess_settings("ViT-B-16-SigLIP", "webli")  # a tag's own preprocessing: mean 0.5, squash
    assert siglip == {
        "image_size": 224,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
        "resize_mode": "squash",
        "channels": 3,
    }


@torch.no_grad()
def test_open_clip_checkpoint_files_with_module_prefix_load(tiny, tmp_path) -> None:
    config, weights = tiny
    state = torch.load(weights, weights_only=True)
    wrapped = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    a = OpenCLIPImageTower(str(config), pretrained=str(weights)).eval()
    b = OpenCLIPImageTower(str(config), pretrained=str(wrapped)).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert a.out_dim == TINY_OPEN_CLIP["embed_dim"] and a.image_size == 32
    text = b.paired_text_tower
    assert text.out_dim == 32 and text(**text.tokenize(["a cat"])).shape == (1, 32)
    random = OpenCLIPImageTower(str(config)).eval()  # pretrained=null: random weights, not the file's
    assert not torch.allclose(random(x), a(x))


# --- bad input: one sentence naming the key ----------------------------------------------------------------
def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_unknown_model_lists_close_names() -> None:
    with pytest.raises(OpenCLIPModelError) as err:
        OpenCLIPImageTower("ViT-B-33")
    text = _one_line(err)
    assert "encoder.model=ViT-B-33 is not an open_clip model" in text and "ViT-B-32" in text
    with pytest.raises(OpenCLIPModelError, match="encoder.model=.*missing.json is not a file"):
        preprocess_settings("missing.json")


@pytest.mark.slow
def test_unknown_model_ends_the_command_with_one_line(tmp_path) -> None:
    proc = run_cli(
        "train", "objective=clip", "encoder=open_clip", "encoder.model=RN5O", "data=shapes_captions",
        "logger=csv", "print_config=false", f"hydra.run.dir={tmp_path / 'run'}", tmp_path=tmp_path, check=False,
    )  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and "encoder.model=RN5O" in lines[0] and "RN50" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_tag_that_is_not_cached_offline_names_the_key_and_the_cache(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "empty-cache"
    with pytest.raises(OpenCLIPWeightsError) as err:
        OpenCLIPImageTower("ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=str(cache))
    text = _one_line(err)
    assert "encoder.pretrained=laion2b_s34b_b79k" in text and str(cache) in text
    with pytest.raises(OpenCLIPWeightsError) as err:
        OpenCLIPImageTower("ViT-B-32", pretrained="laion9000")
    text = _one_line(err)
    assert "encoder.pretrained=laion9000 is neither a pretrained tag" in text and "laion2b_s34b_b79k" in text


def test_weights_of_another_architecture_say_which_keys_do_not_fit(tiny, tmp_path) -> None:
    config, weights = tiny
    wider = {**TINY_OPEN_CLIP, "vision_cfg": {**TINY_OPEN_CLIP["vision_cfg"], "width": 96}}
    other, _ = write_tiny_open_clip(tmp_path, name="TinyTestCLIPWide")
    other.write_text(__import__("json").dumps(wider))
    with pytest.raises(OpenCLIPWeightsError) as err:
        OpenCLIPImageTower(str(other), pretrained=str(weights))
    text = _one_line(err)
    assert f"encoder.pretrained={weights} does not fit encoder.model={other}" in text
    assert "of another shape (first: visual." in text and "(64" in text and "(96" in text
    garbage = tmp_path / "not_weights.pt"
    garbage.write_text("hello")
    with pytest.raises(OpenCLIPWeightsError, match="could not be read"):
        OpenCLIPImageTower(str(config), pretrained=str(garbage))


def test_an_image_size_the_model_cannot_take(tiny) -> None:
    config, weights = tiny
    with pytest.raises(EncoderInputError) as err:
        OpenCLIPImageTower(str(config), image_size=44)
    text = _one_line(err)
    assert "encoder.image_size=44" in text and "multiple of 16 such as 48" in text
    with pytest.raises(EncoderInputError, match="attention pool is fixed to 224x224"):
        preprocess_settings("RN50", "openai", image_size=256)
    with pytest.raises(EncoderInputError, match="multiple of 32"):
        preprocess_settings("RN50", image_size=100)
    tower = OpenCLIPImageTower(str(config), pretrained=str(weights), image_size=48)  # resized position embeddings
    assert tower(torch.randn(1, 3, 48, 48)).shape == (1, 32)
    with pytest.raises(EncoderInputError) as err:
        tower(torch.randn(1, 3, 32, 32))
    assert "takes 48x48 images, not 32x32" in _one_line(err)
