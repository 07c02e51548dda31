"""A CLIP fine-tuned from an open_clip model (a tiny random-init one saved to a file) through the commands:
``contrastlab-train`` logs the clip_benchmark metrics with their ``_init`` values, ``contrastlab-export
format=open_clip`` writes a checkpoint open_clip loads (by name and as ``local-dir:``) that embeds the files as
``contrastlab-embed`` does under open_clip's own preprocessing, ``contrastlab-search`` takes text and image
queries, and ``contrastlab-eval`` reports zero-shot metrics on an image folder with the 80 OpenAI templates."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli, train_run
from hydra import compose, initialize_config_dir
from PIL import Image
from writers import IMAGE_FOLDER_COLOURS, write_image_folder, write_image_text_csv, write_tiny_open_clip

from contrastlab.cli.embed import run_embed
from contrastlab.cli.evaluate import run_eval
from contrastlab.cli.search import search
from contrastlab.config import build
from contrastlab.encoders import ProjectionHead, SmallCNN
from contrastlab.encoders.text import TransformerTextEncoder
from contrastlab.export.common import ExportFormatError
from contrastlab.export.open_clip import export
from contrastlab.losses import CLIPLoss
from contrastlab.negatives import InBatch
from contrastlab.objectives.clip import CLIP

CONF = Path(build.CONF_DIR)
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("open_clip_export")


@pytest.fixture(scope="module")
def tiny(tmp) -> tuple[Path, Path]:
    return write_tiny_open_clip(tmp / "tiny")


@pytest.fixture(scope="module")
def trained(tmp, tiny):
    """``objective=clip encoder=open_clip`` on a labelled caption table (40x30 images: resized and cropped)."""
    config, weights = tiny
    table = write_image_text_csv(tmp / "captions", n_images=30, labelled=True)
    run = train_run(
        tmp, "objective=clip", "encoder=open_clip", f"encoder.model={config}", f"encoder.pretrained={weights}",
        "data=image_text_csv", f"data.path={table}", "data.label_key=shape", "data.batch_size=8",
        "data.val_fraction=0.2", "data.num_workers=0", "optimizer.lr=1e-3", "+trainer.max_steps=3",
        "trainer.max_epochs=1", "callbacks.knn=null", "callbacks.embedding_plot=null",
        "callbacks.model_checkpoint.monitor=val/zero_shot_top1", "trainer.enable_progress_bar=false", name="clip",
    )  # fmt: skip
    return run


def test_training_logs_the_metrics_and_their_init_values(trained) -> None:
    m = trained.metrics
    names = ("zero_shot_top1", "zero_shot_mean_per_class_recall", "i2t_recall@1", "t2i_recall@5", "mean_recall")
    for name in names:
        assert f"val/{name}_init" in m, name
    trained.assert_metrics_match_checkpoint(*(f"val/{name}" for name in names))
    assert m["trainer/global_step"] == 3
    saved = torch.load(trained.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["contrastlab"]["config"]
    assert saved["encoder"]["_target_"].endswith("OpenCLIPImageTower")
    # the data ran with the model's preprocessing, and the saved config says so
    assert (saved["data"]["image_size"], saved["data"]["interpolation"]) == (32, "bicubic")
    assert saved["data"]["mean"] == pytest.approx(open_clip.OPENAI_DATASET_MEAN)


def _embed(ckpt: Path, out: Path) -> Path:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("embed", overrides=[f"ckpt_path={ckpt}", f"output_dir={out}", "progress=false"])
    run_embed(cfg)
    return out


@torch.no_grad()
def test_export_loads_in_open_clip_and_embeds_as_contrastlab_embed(trained, tiny, tmp) -> None:
    config, _ = tiny
    ckpt = trained.run_dir / "checkpoints" / "last.ckpt"
    out = tmp / "exported"
    proc = run_cli("export", f"ckpt_path={ckpt}", "format=open_clip", f"output_dir={out}", tmp_path=tmp)
    assert "exported clip checkpoint as open_clip" in proc.stdout
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["image_cosine_min"] >= 0.9999 and summary["text_cosine_min"] >= 0.9999
    emb = _embed(ckpt, tmp / "embedded")
    paths = json.loads((emb / "paths.json").read_text())
    ours = torch.from_numpy(np.load(emb / "embeddings.npy"))
    captions = json.loads((emb / "captions.json").read_text())
    ours_text = torch.from_numpy(np.load(emb / "text_embeddings.npy"))
    open_clip.add_model_config(config)
    by_name = open_clip.create_model_and_transforms(config.stem, pretrained=str(out / "open_clip_pytorch_model.bin"))
    by_folder = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    for model, _, preprocess in (by_name, by_folder):
        model.eval()
        images = torch.stack([preprocess(Image.open(p)) for p in paths])  # open_clip's own preprocessing
        image_cos = F.cosine_similarity(model.encode_image(images), ours, dim=1)
        text_cos = F.cosine_similarity(model.encode_text(tokenizer(captions)), ours_text, dim=1)
        assert image_cos.min() >= 0.999 and text_cos.min() >= 0.9999, (image_cos, text_cos)
    # the fine-tuned weights were exported, not the starting ones
    start, _, preprocess = open_clip.create_model_and_transforms(config.stem, pretrained=str(tiny[1]))
    start_cos = F.cosine_similarity(
        start.eval().encode_image(torch.stack([preprocess(Image.open(p)) for p in paths])), ours
    )
    assert start_cos.min() < 0.9999
    ckpt_scale = torch.load(ckpt, weights_only=True)["state_dict"]["logit_scale"]
    assert by_folder[0].logit_scale.item() == pytest.approx(ckpt_scale.item())


def test_search_takes_text_and_image_queries(trained, tmp) -> None:
    ckpt = trained.run_dir / "checkpoints" / "last.ckpt"
    emb = _embed(ckpt, tmp / "embedded_search")
    image = json.loads((emb / "paths.json").read_text())[0]
    for query, target in (('"a red square"', "text"), (image, "image")):
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("search", overrides=[f"index={emb}", f"query={query}", "k=3"])
        out = search(cfg)
        assert out["target"] == target and len(out["results"]) == 3 and out["space"] == "shared"


def test_eval_reports_zero_shot_on_an_image_folder_with_openai_templates(trained, tmp) -> None:
    ckpt = trained.run_dir / "checkpoints" / "last.ckpt"
    folder = write_image_folder(tmp / "folder", classes=dict.fromkeys(IMAGE_FOLDER_COLOURS, 3))
    overrides = [
        f"ckpt_path={ckpt}", "eval=[objective]", "data=imagefolder", f"data.data_dir={folder}",
        f"data.val_dir={folder}", "data.num_workers=0", "eval.objective.templates=openai_imagenet",
        f"output_dir={tmp / 'eval_folder'}",
    ]  # fmt: skip
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    metrics = run_eval(cfg)["metrics"]
    assert set(metrics) == {"val/zero_shot_top1", "val/zero_shot_mean_per_class_recall"}  # 3 classes, no captions
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={ckpt}", "eval=[objective]", f"output_dir={tmp / 'eval_run'}"])
    metrics = run_eval(cfg)["metrics"]
    # the run's own data: the numbers validation logged for this checkpoint
    for name in ("zero_shot_top1", "zero_shot_mean_per_class_recall", "i2t_recall@1", "t2i_recall@10"):
        assert metrics[f"val/{name}"] == pytest.approx(trained.metrics[f"val/{name}"], abs=1e-6), name


def test_export_refuses_a_clip_without_an_open_clip_encoder(tmp) -> None:
    model = CLIP(
        encoder=SmallCNN(3, width=4, stages=2, out_dim=16),
        head=ProjectionHead(16, out_dim=8, num_layers=1, batch_norm=False),
        loss=CLIPLoss(),
        negatives=InBatch(),
        optimizer=torch.optim.AdamW,
        text_encoder=TransformerTextEncoder(vocab_size=64, max_length=16, width=16, depth=1, heads=2),
    )
    with pytest.raises(ExportFormatError) as err:
        export(SimpleNamespace(model=model, objective="clip"), tmp / "nope")
    assert "\n" not in str(err.value) and "encoder=open_clip" in str(err.value) and "SmallCNN" in str(err.value)
