"""contrastlab-embed / contrastlab-search on an image-text (CLIP) checkpoint: captions, text embeddings in
the shared space, and text queries (in process; the CLI path is covered in test_eval_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from contrastlab.cli.embed import run_embed
from contrastlab.cli.search import search
from contrastlab.config import build
from contrastlab.config.checks import ConfigError

CONF = Path(build.CONF_DIR)


@pytest.fixture(scope="module")
def clip_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CLIP checkpoint at initialisation (tokenizer fitted on the training captions), as training writes it."""
    tmp = tmp_path_factory.mktemp("clip")
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "objective=clip",
                "data=shapes_captions",
                "data.num_train=64",
                "data.num_val=24",
                "debug=fast",
                "callbacks=none",
                "logger=csv",
                "task_name=clip",
                f"paths.output_dir={tmp}",
            ],
        )
    torch.manual_seed(0)
    dm, model = build.build_datamodule(cfg), build.build_objective(cfg)
    model.prepare_text(dm)
    path = tmp / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    config = OmegaConf.to_container(cfg, resolve=True)
    torch.save(
        {"state_dict": model.state_dict(), "global_step": 0, "contrastlab": {"objective": "clip", "config": config}},
        path,
    )
    return path


def embed_cfg(ckpt: Path, out: Path, **over: object):
    base = OmegaConf.load(CONF / "embed.yaml")
    base.pop("defaults")
    base.pop("hydra")
    base.data = None
    return OmegaConf.merge(base, {"ckpt_path": str(ckpt), "output_dir": str(out), "progress": False, **over})


def search_cfg(folder: Path, **over: object):
    base = OmegaConf.load(CONF / "search.yaml")
    base.pop("defaults")
    base.pop("hydra")
    return OmegaConf.merge(base, {"index": str(folder), **over})


def test_clip_embeddings_with_captions_and_text_queries(clip_ckpt: Path, tmp_path: Path) -> None:
    folder = tmp_path / "emb"
    meta = run_embed(embed_cfg(clip_ckpt, folder))
    assert meta["space"] == "shared" and meta["objective"] == "clip" and meta["count"] == 24
    emb = np.load(folder / "embeddings.npy")
    text = np.load(folder / "text_embeddings.npy")
    captions = json.loads((folder / "captions.json").read_text())
    rows = np.load(folder / "caption_rows.npy")
    assert emb.shape == (24, meta["dim"]) and text.shape == (len(captions), meta["dim"]) and len(rows) == len(captions)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)  # CLIP's shared space is L2-normalised
    assert rows.min() == 0 and rows.max() == 23

    # a caption as the text query finds itself (cosine 1) first among the captions
    query = captions[5]
    out = search(search_cfg(folder, query=query, k=3))
    assert out["kind"] == "text" and out["target"] == "text"
    assert out["results"][0]["caption"] == query and out["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)

    # text -> images in the shared space equals a brute-force cosine ranking
    cross = search(search_cfg(folder, query=query, k=4, target="image"))
    q = text[5] / np.linalg.norm(text[5])
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert [r["row"] for r in cross["results"]] == list(np.argsort(-(unit @ q), kind="stable")[:4])
    assert all("caption" in r for r in cross["results"])

    # an encoder-space export has no shared space: text-to-image is refused with the fix named
    enc = tmp_path / "enc"
    assert run_embed(embed_cfg(clip_ckpt, enc, space="encoder"))["space"] == "encoder"
    with pytest.raises(ConfigError, match="space=shared"):
        search(search_cfg(enc, query=query, target="image"))


@pytest.fixture(scope="module")
def biencoder_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text bi-encoder checkpoint (shared tower) at initialisation, on the demo text pairs."""
    tmp = tmp_path_factory.mktemp("bienc")
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["experiment=biencoder_text_pairs", "debug=fast", "callbacks=none", "logger=csv"]
            + ["task_name=bienc", f"paths.output_dir={tmp}"],
        )
    torch.manual_seed(0)
    dm, model = build.build_datamodule(cfg), build.build_objective(cfg)
    model.prepare_text(dm)
    path = tmp / "last.ckpt"
    config = OmegaConf.to_container(cfg, resolve=True)
    meta = {"objective": "biencoder", "config": config}
    torch.save({"state_dict": model.state_dict(), "global_step": 0, "contrastlab": meta}, path)
    return path


def test_text_documents_of_a_biencoder(biencoder_ckpt: Path, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    meta = run_embed(embed_cfg(biencoder_ckpt, folder))
    texts = json.loads((folder / "texts.json").read_text())
    emb, labels = np.load(folder / "embeddings.npy"), np.load(folder / "labels.npy")
    assert meta["space"] == "text" and emb.shape == (len(texts), meta["dim"]) and len(labels) == len(texts)
    assert (labels >= -1).all() and (labels >= 0).any()  # positives answer a query row, negatives are -1
    # shared tower: a (unique) document as the query finds itself first (cosine 1); brute force ranks the rest
    i = next(j for j, t in enumerate(texts) if texts.count(t) == 1)
    out = search(search_cfg(folder, query=texts[i], k=4))
    assert out["results"][0]["text"] == texts[i] and out["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = unit @ unit[i]  # (duplicate documents tie exactly, so compare scores, not the order among ties)
    np.testing.assert_allclose([r["score"] for r in out["results"]], np.sort(sims)[::-1][:4], atol=1e-5)
    np.testing.assert_allclose(
        [sims[r["row"]] for r in out["results"]], [r["score"] for r in out["results"]], atol=1e-5
    )
    with pytest.raises(ConfigError, match="holds text documents"):
        search(search_cfg(folder, query=texts[i], target="text"))
