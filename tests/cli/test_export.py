"""``contrastlab-export``: a bi-encoder fine-tuned with ``experiment=finetune_text`` (on a tiny sentence-transformers
folder written here, with GradCache) exported as a sentence-transformers folder encodes exactly as
``contrastlab-embed`` does; ``format=hf`` loads with ``AutoModel``; ``format=onnx`` reproduces the image and text
towers under onnxruntime; a format that does not fit the checkpoint is one line and exit status 2."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli, train_run
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from writers import write_tiny_sentence_transformer

from contrastlab.cli.embed import run_embed
from contrastlab.cli.export import run_export
from contrastlab.config import build
from contrastlab.data.text_pairs import DEMO_PATH
from contrastlab.errors import BadInputError
from contrastlab.training.checkpoints import load_checkpoint

CONF = Path(build.CONF_DIR)
pytestmark = pytest.mark.usefixtures("one_thread")


def demo_texts() -> list[str]:
    rows = [json.loads(line) for line in DEMO_PATH.read_text().splitlines() if line.strip()]
    return [t for r in rows for t in (r["query"], r["positive"], *r.get("negatives", []))]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def st_folder(tmp) -> Path:
    return write_tiny_sentence_transformer(tmp / "tiny_st", demo_texts(), pooling="mean", max_seq_length=16)


@pytest.fixture(scope="module")
def trained(tmp, st_folder) -> Path:
    """``contrastlab-train experiment=finetune_text`` on the demo pairs, batches of 16 in GradCache micro-batches
    of 8 (a higher learning rate than the recipe's: a random tiny model must move in a few steps)."""
    run = train_run(
        tmp, "experiment=finetune_text", f"text_encoder.name={st_folder}", "data.batch_size=16",
        "objective.grad_cache.micro_batch_size=8", "optimizer.lr=1e-3", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", name="finetune",
    )  # fmt: skip
    run.assert_metrics_match_checkpoint("val/mean_recall", "val/q2d_recall@1")
    return run.run_dir / "checkpoints" / "last.ckpt"


def export_cfg(ckpt: Path, out: Path, fmt: str, *overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("export", overrides=[f"format={fmt}", f"ckpt_path={ckpt}", f"output_dir={out}", *overrides])
    return cfg


def embed_documents(ckpt: Path, out: Path) -> tuple[np.ndarray, list[str]]:
    base = OmegaConf.load(CONF / "embed.yaml")
    base.pop("defaults")
    base.pop("hydra")
    base.data = None
    run_embed(OmegaConf.merge(base, {"ckpt_path": str(ckpt), "output_dir": str(out), "progress": False}))
    return np.load(out / "embeddings.npy"), json.loads((out / "texts.json").read_text())


def test_sentence_transformers_folder_encodes_as_contrastlab_embed(trained, st_folder, tmp):
    from sentence_transformers import SentenceTransformer

    out = tmp / "st_export"
    proc = run_cli(
        "export", f"ckpt_path={trained}", "format=sentence_transformers", f"output_dir={out}", tmp_path=tmp
    )  # fmt: skip
    assert "exported biencoder checkpoint as sentence_transformers" in proc.stdout
    embeddings, texts = embed_documents(trained, tmp / "embedded")
    model = SentenceTransformer(str(out), device="cpu")
    assert model.max_seq_length == 16
    got = model.encode(texts, normalize_embeddings=True)
    assert got.shape == embeddings.shape
    assert float((got * embeddings).sum(1).min()) >= 0.9999
    np.testing.assert_allclose(got, embeddings, atol=1e-5)
    # the fine-tuned weights were exported, not the pretrained folder's
    before = SentenceTransformer(str(st_folder), device="cpu").encode(texts, normalize_embeddings=True)
    assert float(np.abs(before - embeddings).max()) > 1e-3
    kinds = [m["type"].rsplit(".", 1)[-1] for m in json.loads((out / "modules.json").read_text())]
    assert kinds == ["Transformer", "Pooling", "Normalize"]


def test_hf_folder_loads_with_automodel(trained, tmp):
    from transformers import AutoModel, AutoTokenizer

    out = tmp / "hf_export"
    summary = run_export(export_cfg(trained, out, "hf"))
    assert summary["not_in_folder"] == ["pooling=mean", "Normalize"]
    embeddings, texts = embed_documents(trained, tmp / "embedded_hf")
    model, tokenizer = AutoModel.from_pretrained(str(out)).eval(), AutoTokenizer.from_pretrained(str(out))
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    mean = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    np.testing.assert_allclose(mean, embeddings, atol=1e-5)


def test_onnx_text_tower_matches_pytorch(trained, tmp):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    out = tmp / "onnx_text"
    summary = run_export(export_cfg(trained, out, "onnx", "format.exporter=torchscript"))  # the fast tracer
    assert set(summary["towers"]) == {"text"} and summary["max_abs_diff"] <= 1e-4
    meta = json.loads((out / "export.json").read_text())["towers"]["text"]
    embeddings, texts = embed_documents(trained, tmp / "embedded_onnx")
    tokenizer = AutoTokenizer.from_pretrained(str(out / meta["tokenizer"]["path"]))
    tokens = tokenizer(
        texts, padding=True, truncation=True, max_length=meta["tokenizer"]["max_length"], return_tensors="np"
    )
    session = ort.InferenceSession(str(out / "text.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(["sentence_embedding"], {k: tokens[k] for k in meta["inputs"]})
    assert float(np.abs(got - embeddings).max()) <= 1e-4


# --- checkpoints built in process (weights at initialisation, as training writes them) -------------------


def save_ckpt(tmp: Path, name: str, overrides: list[str]) -> Path:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        over = [*overrides, "callbacks=none", "logger=csv", f"task_name={name}", f"paths.output_dir={tmp / name}"]
        cfg = compose("train", overrides=over)
    torch.manual_seed(0)
    dm, model = build.build_datamodule(cfg), build.build_objective(cfg)
    if hasattr(model, "prepare_text"):
        model.prepare_text(dm)
    path = tmp / name / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    meta = {"objective": model.objective_name, "config": OmegaConf.to_container(cfg, resolve=True)}
    torch.save({"state_dict": model.state_dict(), "global_step": 0, "contrastlab": meta}, path)
    return path


@pytest.fixture(scope="module")
def simclr_ckpt(tmp) -> Path:
    return save_ckpt(tmp, "simclr", ["debug=fast"])


@pytest.fixture(scope="module")
def clip_ckpt(tmp) -> Path:
    return save_ckpt(tmp, "clip", ["objective=clip", "data=shapes_captions", "data.num_train=32", "data.num_val=16"])


@pytest.fixture(scope="module")
def scratch_biencoder_ckpt(tmp) -> Path:
    return save_ckpt(tmp, "scratch", ["experiment=biencoder_text_pairs", "debug=fast"])


def test_dense_modules_and_a_projection_survive_the_sentence_transformers_export(tmp):
    """A CLS-pooled folder with a Dense module, under a bi-encoder projection to 6 dims."""
    from sentence_transformers import SentenceTransformer

    folder = write_tiny_sentence_transformer(tmp / "cls_dense", demo_texts(), pooling="cls", dense=8, normalize=False)
    ckpt = save_ckpt(
        tmp, "projected", ["experiment=finetune_text", f"text_encoder.name={folder}", "objective.embed_dim=6"]
    )
    out = tmp / "projected_st"
    run_export(export_cfg(ckpt, out, "sentence_transformers"))
    kinds = [m["type"].rsplit(".", 1)[-1] for m in json.loads((out / "modules.json").read_text())]
    assert kinds == ["Transformer", "Pooling", "Dense", "Dense", "Normalize"]
    model = load_checkpoint(ckpt, device="cpu").model
    texts = demo_texts()[:20]
    with torch.no_grad():
        want = model.encode_document(texts).numpy()
    got = SentenceTransformer(str(out), device="cpu").encode(texts, normalize_embeddings=True)
    assert got.shape == (20, 6)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_onnx_image_tower_of_simclr(simclr_ckpt, tmp):
    import onnxruntime as ort

    out = tmp / "onnx_simclr"
    summary = run_export(export_cfg(simclr_ckpt, out, "onnx", "format.exporter=torchscript"))
    assert set(summary["towers"]) == {"image"} and summary["towers"]["image"]["space"] == "encoder"
    ckpt = load_checkpoint(simclr_ckpt, device="cpu")
    images = next(iter(ckpt.datamodule.val_dataloader()))["image"][:7]
    with torch.no_grad():
        want = ckpt.model.embed(images).numpy()
    session = ort.InferenceSession(str(out / "image.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(["image_embedding"], {"image": images.numpy()})
    assert got.shape == want.shape and float(np.abs(got - want).max()) <= 1e-4


def test_onnx_exports_both_clip_towers(clip_ckpt, tmp):
    import onnxruntime as ort

    from contrastlab.encoders.tokenizer import VocabTokenizer

    out = tmp / "onnx_clip"
    summary = run_export(export_cfg(clip_ckpt, out, "onnx"))
    assert set(summary["towers"]) == {"image", "text"} and summary["towers"]["image"]["space"] == "shared"
    ckpt = load_checkpoint(clip_ckpt, device="cpu")
    vocab = VocabTokenizer()
    vocab.load_state_dict(json.loads((out / "text_vocabulary.json").read_text()))
    captions = ["a red circle on the left", "two small blue squares", "green"]
    tokens = vocab(captions)
    session = ort.InferenceSession(str(out / "text.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(["sentence_embedding"], {k: v.numpy() for k, v in tokens.items()})
    with torch.no_grad():
        want = ckpt.model.encode_text(captions).numpy()
    assert float(np.abs(got - want).max()) <= 1e-4


@pytest.mark.parametrize(
    ("which", "fmt", "extra", "message"),
    [
        ("simclr", "sentence_transformers", [], "has none; use format=onnx"),
        ("simclr", "hf", [], "has none; use format=onnx"),
        ("simclr", "onnx", ["format.tower=text"], "set format.tower=image"),
        ("scratch", "sentence_transformers", [], "needs a Hugging Face text tower (text_encoder=hf)"),
        ("scratch", "hf", [], "use format=onnx instead"),
        ("scratch", "onnx", ["format.tower=image"], "has no image tower"),
        ("scratch", "onnx", ["format.tower=left"], "format.tower=left is not one of"),
    ],
)
def test_a_format_that_does_not_fit_names_the_fix(which, fmt, extra, message, simclr_ckpt, scratch_biencoder_ckpt, tmp):
    ckpt = {"simclr": simclr_ckpt, "scratch": scratch_biencoder_ckpt}[which]
    with pytest.raises(BadInputError, match=re.escape(message)) as err:
        run_export(export_cfg(ckpt, tmp / f"bad_{which}_{fmt}_{len(extra)}", fmt, *extra))
    assert "\n" not in str(err.value)


def test_the_command_line_refuses_in_one_line(simclr_ckpt, tmp):
    out = tmp / "refused"
    proc = run_cli(
        "export", f"ckpt_path={simclr_ckpt}", "format=sentence_transformers", f"output_dir={out}",
        tmp_path=tmp, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "objective=simclr" in lines[0] and "format=onnx" in lines[0]
    full = tmp / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    with pytest.raises(BadInputError, match="overwrite=true"):
        run_export(export_cfg(simclr_ckpt, full, "onnx"))
    with pytest.raises(BadInputError, match="ckpt_path= is required"):
        run_export(export_cfg("null", tmp / "none", "onnx"))


def test_a_missing_onnx_package_names_the_extra(trained, tmp, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    with pytest.raises(BadInputError, match=re.escape("pip install 'contrastlab[export]'")):
        run_export(export_cfg(trained, tmp / "no_onnxscript", "onnx"))
