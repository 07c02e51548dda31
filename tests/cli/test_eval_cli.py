"""End to end: a digits debug run with the embedding plots on, then contrastlab-eval / -embed / -search
on its checkpoint (the real command-line entry points, in subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Run, run_cli, train_run
from omegaconf import OmegaConf
from PIL import Image

from contrastlab.cli.evaluate import run_eval
from contrastlab.cli.search import search
from contrastlab.config.checks import ConfigError
from contrastlab.evaluation.embed import embed_loader
from contrastlab.evaluation.linear_probe import linear_probe
from contrastlab.training.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow

PLOTS = (
    "callbacks.embedding_plot.in_debug=true",
    "callbacks.embedding_plot.umap_epochs=20",
    "callbacks.embedding_plot.tsne_iter=250",
    "callbacks.embedding_plot.max_points=200",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """``debug=fast`` SimCLR on digits with the W&B logger (offline) and the plots drawn."""
    return train_run(tmp_path_factory.mktemp("evalcli"), "debug=fast", "logger=wandb", *PLOTS, timeout=900)


def last_ckpt(run: Run) -> Path:
    return run.run_dir / "checkpoints" / "last.ckpt"


def test_training_leaves_embedding_plots_on_disk_and_in_wandb(run: Run) -> None:
    for method in ("umap", "tsne"):
        png = run.run_dir / "plots" / f"{method}.png"
        assert png.is_file() and png.stat().st_size > 10_000
    offline = list((run.run_dir / "wandb").glob("offline-run-*"))
    assert offline, "no offline W&B run"
    images = [p.name for p in offline[0].rglob("media/images/embeddings/*.png")]
    assert any(n.startswith("umap") for n in images) and any(n.startswith("tsne") for n in images), images
    assert "val/effective_rank" in run.metrics and "val/dim_std" in run.metrics  # the collapse monitor


def test_eval_prints_and_writes_the_logged_knn_top1(run: Run, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    proc = run_cli(
        "evaluate",
        f"ckpt_path={last_ckpt(run)}",
        f"output_dir={out}",
        "eval.plots.methods=[tsne]",
        "eval.plots.tsne_iter=250",
        "eval.linear_probe.weight_decays=[1e-4,1e-2]",
        "eval.clustering.n_init=2",
        "logger=wandb",
        tmp_path=tmp_path,
        timeout=900,
    )
    report = json.loads((out / "eval.json").read_text())
    metrics = report["metrics"]
    logged = run.metrics["val/knn_top1"]
    assert abs(metrics["val/knn_top1"] - logged) <= 1e-6
    assert abs(metrics["val/knn_top5"] - run.metrics["val/knn_top5"]) <= 1e-6
    assert f"{logged:.4f}" in proc.stdout and "val/knn_top1" in proc.stdout
    for key in (
        "val/linear_top1",
        "val/nmi",
        "val/ari",
        "val/precision@1",
        "val/recall@1",
        "val/recall@5",
        "val/recall@10",
        "val/map@r",
        "val/alignment",
        "val/uniformity",
        "val/effective_rank",
        "val/dim_std",
    ):
        assert key in metrics and np.isfinite(metrics[key]), key
        assert key in proc.stdout, key
    assert metrics["val/alignment"] > 0
    # the probe scores the validation split: the same probe computed here from the checkpoint's own embeddings
    ckpt = load_checkpoint(last_ckpt(run))
    tr_x, tr_y = embed_loader(ckpt.model.embed, ckpt.datamodule.eval_train_dataloader())
    va_x, va_y = embed_loader(ckpt.model.embed, ckpt.datamodule.val_dataloader())
    direct = linear_probe(tr_x, tr_y, va_x, va_y, weight_decays=(1e-4, 1e-2), holdout_fraction=0.1, seed=0)
    on_train = linear_probe(tr_x, tr_y, tr_x, tr_y, weight_decays=(1e-4, 1e-2), holdout_fraction=0.1, seed=0)
    assert metrics["val/linear_top1"] == pytest.approx(direct["top1"], abs=1e-9)
    assert direct["top1"] != pytest.approx(on_train["top1"], abs=1e-3)  # a probe scored on its train split misses
    assert report["skipped"] == {"objective": "objective simclr has no evaluate_metrics"}
    assert Path(report["plots"]["tsne"]).is_file() and report["objective"] == "simclr"
    assert report["global_step"] == run.metrics["trainer/global_step"]
    # logger=wandb continued the run's own W&B run (same id, a second offline segment)
    run_id = (run.run_dir / "wandb_run_id").read_text().strip()
    segments = list((run.run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(segments) == 2, segments


def eval_cfg(**over: object) -> OmegaConf:
    base = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "eval.yaml")
    base.pop("defaults")
    base.pop("hydra")
    base.eval = {"knn": {"k": None, "temperature": None}}
    base.logger = None
    base.data = None
    return OmegaConf.merge(base, over)


def test_eval_refuses_bad_checkpoints_clearly(run: Run, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ckpt_path= is required"):
        run_eval(eval_cfg())
    with pytest.raises(ConfigError, match="does not exist"):
        run_eval(eval_cfg(ckpt_path=str(tmp_path / "nope.ckpt")))
    with pytest.raises(ConfigError, match="trained with objective=simclr, not clip"):
        run_eval(eval_cfg(ckpt_path=str(last_ckpt(run)), expect_objective="clip"))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ConfigError, match="not a contrastlab checkpoint"):
        run_eval(eval_cfg(ckpt_path=str(foreign)))
    # the CLI turns these into one line on stderr and exit status 2
    proc = run_cli("evaluate", tmp_path=tmp_path, check=False)
    assert proc.returncode == 2 and "ckpt_path= is required" in proc.stderr and "Traceback" not in proc.stderr
    # an in-process kNN-only evaluation gives the logged number too
    report = run_eval(eval_cfg(ckpt_path=str(last_ckpt(run)), output_dir=str(tmp_path / "knn")))
    assert abs(report["metrics"]["val/knn_top1"] - run.metrics["val/knn_top1"]) <= 1e-6
    # random_init=true rebuilds the run's initial weights (the run's seed): its kNN is the logged baseline
    init = run_eval(eval_cfg(ckpt_path=str(last_ckpt(run)), output_dir=str(tmp_path / "knn"), random_init=True))
    assert abs(init["metrics"]["val/knn_top1"] - run.metrics["val/knn_top1_init"]) <= 1e-6
    assert init["random_init"] and (tmp_path / "knn" / "eval_random_init.json").is_file()


def test_embed_and_search(run: Run, tmp_path: Path) -> None:
    folder = tmp_path / "emb"
    run_cli("embed", f"ckpt_path={last_ckpt(run)}", f"output_dir={folder}", tmp_path=tmp_path, timeout=900)
    emb, labels, ids = (np.load(folder / f) for f in ("embeddings.npy", "labels.npy", "ids.npy"))
    meta = json.loads((folder / "meta.json").read_text())
    assert emb.dtype == np.float32 and emb.shape == (meta["count"], meta["dim"]) and meta["space"] == "encoder"
    assert np.array_equal(ids, np.arange(len(ids)))
    # the rows are the checkpoint's val embeddings, in order
    ckpt = load_checkpoint(last_ckpt(run))
    ref_x, ref_y = embed_loader(ckpt.model.embed, ckpt.datamodule.val_dataloader(), "cpu")
    np.testing.assert_allclose(emb, ref_x.numpy(), atol=1e-5)
    assert np.array_equal(labels, ref_y.numpy())

    proc = run_cli("search", f"index={folder}", "query=idx:12", "k=5", tmp_path=tmp_path, timeout=900)
    assert "neighbours share the query's label" in proc.stdout

    def cfg(**over: object) -> OmegaConf:
        base = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "search.yaml")
        base.pop("defaults")
        base.pop("hydra")
        return OmegaConf.merge(base, {"index": str(folder), **over})

    # faiss flat equals a brute-force cosine ranking (self left out); IVF probing every cell and HNSW agree
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = unit @ unit[12]
    sims[12] = -np.inf
    expected = list(np.argsort(-sims, kind="stable")[:5])
    flat = search(cfg(query="idx:12"))
    assert [r["row"] for r in flat["results"]] == expected
    assert flat["matches"] == sum(labels[r] == labels[12] for r in expected) and flat["query_label"] == labels[12]
    assert flat["matches"] >= 3  # mostly the same digit (printed by the CLI above)
    ivf = search(cfg(query="idx:12", index_type="ivf", nlist=4, nprobe=4))
    assert [r["row"] for r in ivf["results"]] == expected
    hnsw = search(cfg(query="idx:12", index_type="hnsw", ef_search=400))
    assert [r["row"] for r in hnsw["results"]] == expected
    assert (folder / "faiss_image_flat.index").is_file()

    # an image file query: a val image written as PNG finds itself first
    row = 7
    img = ckpt.datamodule.val_base[row][0]  # (1, H, W) float in [0, 1]
    png = tmp_path / "query.png"
    Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8), mode="L").save(png)
    found = search(cfg(query=str(png), k=3))
    assert found["kind"] == "image" and found["results"][0]["row"] == row

    # text queries need a text tower; bad queries name the key
    with pytest.raises(ConfigError, match="a text query needs an image-text checkpoint"):
        search(cfg(query="a handwritten seven"))
    with pytest.raises(ConfigError, match="idx: must be followed by a row number"):
        search(cfg(query="idx:x"))
    with pytest.raises(ConfigError, match="out of range"):
        search(cfg(query=f"idx:{len(emb)}"))
    with pytest.raises(ConfigError, match="index= is required"):
        search(cfg(index=None, query="idx:1"))


def test_eval_of_chosen_metrics_into_the_runs_wandb_run(run: Run, tmp_path: Path) -> None:
    """``contrastlab-eval ckpt_path=... eval=[knn,health] logger=wandb`` (the README's command): only those two
    evaluations run, and their numbers go into the checkpoint's own W&B run as one more offline segment."""
    run_id = (run.run_dir / "wandb_run_id").read_text().strip()
    before = len(list((run.run_dir / "wandb").glob(f"offline-run-*-{run_id}")))
    out = tmp_path / "subset"
    proc = run_cli(
        "evaluate", f"ckpt_path={last_ckpt(run)}", "eval=[knn,health]", "logger=wandb", f"output_dir={out}",
        tmp_path=tmp_path, timeout=900,
    )  # fmt: skip
    metrics = json.loads((out / "eval.json").read_text())["metrics"]
    assert abs(metrics["val/knn_top1"] - run.metrics["val/knn_top1"]) <= 1e-6
    assert {"val/alignment", "val/uniformity", "val/effective_rank"} <= set(metrics)
    assert not {"val/linear_top1", "val/nmi", "val/map@r"} & set(metrics)  # not asked for
    assert "val/knn_top1" in proc.stdout and "val/linear_top1" not in proc.stdout
    assert len(list((run.run_dir / "wandb").glob(f"offline-run-*-{run_id}"))) == before + 1
