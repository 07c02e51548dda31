"""``contrastlab-eval``: every downstream measurement of a checkpoint's embedding space.

    contrastlab-eval ckpt_path=outputs/simclr/runs/<run>/checkpoints/last.ckpt
    contrastlab-eval ckpt_path=... eval=[knn,health] eval.knn.k=50
    contrastlab-eval ckpt_path=... logger=wandb          # also log into the checkpoint's W&B run

The ``eval`` group selects the sections (default: all that fit the checkpoint): kNN (the online
monitor's code, so ``val/knn_top1`` equals the logged value), linear probe, k-means NMI/ARI,
retrieval, embedding health, the objective's own metrics (``evaluate_metrics``) and UMAP/t-SNE
pictures. All run on the encoder embeddings (``model.embed``) of the run's train and val splits
(evaluation transform). Results: one table on the console and ``eval.json`` next to the checkpoint.
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from contrastlab.cli import boundary
from contrastlab.config import build
from contrastlab.config.checks import ConfigError
from contrastlab.data.base import capabilities
from contrastlab.evaluation.callbacks import KNNMonitor
from contrastlab.evaluation.clustering import clustering_metrics
from contrastlab.evaluation.embed import embed_loader
from contrastlab.evaluation.health import embedding_health
from contrastlab.evaluation.linear_probe import linear_probe
from contrastlab.evaluation.pairs import augmented_pairs, embed_pairs
from contrastlab.evaluation.plots import check_methods, plot_title, save_embedding_plots
from contrastlab.evaluation.retrieval import retrieval_metrics
from contrastlab.training import runs
from contrastlab.training.checkpoints import LoadedCheckpoint, load_from_cfg, run_overrides

SECTIONS = ("knn", "linear_probe", "clustering", "retrieval", "health", "objective", "plots")
LABELLED = ("knn", "linear_probe", "clustering", "retrieval")


def _knn_setting(run_cfg: DictConfig, key: str, given: Any, default: float) -> Any:
    if given is not None:
        return given
    knn = OmegaConf.select(run_cfg, "callbacks.knn")
    return knn.get(key, default) if knn is not None else default


def evaluate(
    ckpt: LoadedCheckpoint, eval_cfg: DictConfig, output_dir: Path, seed: int = 0, suffix: str = ""
) -> dict[str, Any]:
    """Run the selected sections; returns ``{"metrics", "plots", "skipped", "timings_s"}`` dicts."""
    model, dm, device = ckpt.model, ckpt.datamodule, next(ckpt.model.parameters()).device
    selected = [s for s in SECTIONS if s in eval_cfg]
    unknown = set(eval_cfg) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown eval section(s) {sorted(unknown)}; choose from eval=[{','.join(SECTIONS)}]")
    metrics: dict[str, float] = {}
    skipped: dict[str, str] = {}
    plots: dict[str, str] = {}
    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - clock[0], 3)
        clock[0] = now

    needs_embeddings = any(s != "objective" for s in selected)
    tr_x = tr_y = va_x = va_y = None
    if needs_embeddings and not capabilities(dm).has_images:
        skipped.update({s: "the data has no images (text only)" for s in selected if s != "objective"})
    elif needs_embeddings:
        try:
            tr_x, tr_y = embed_loader(model.embed, dm.eval_train_dataloader(), device)
            va_x, va_y = embed_loader(model.embed, dm.val_dataloader(), device)
        except KeyError as e:  # e.g. a text-only datamodule: no "image" in its batches
            for s in selected:
                if s != "objective":
                    skipped[s] = f"the data has no {e} in its batches"
    lap("embed")
    embedded = va_x is not None
    labelled = embedded and capabilities(dm).has_labels and bool((tr_y >= 0).any() and (va_y >= 0).any())
    for s in selected:
        if s in LABELLED and embedded and not labelled:
            skipped[s] = "the data has no labels"

    def run(section: str) -> bool:
        return section in selected and section not in skipped

    if run("knn"):
        c = eval_cfg.knn
        k = int(_knn_setting(ckpt.config, "k", c.get("k"), 20))
        t = float(_knn_setting(ckpt.config, "temperature", c.get("temperature"), 0.07))
        metrics.update(KNNMonitor(k=k, temperature=t, log_init=False).score(tr_x, tr_y, va_x, va_y))
        lap("knn")
    if run("linear_probe"):
        c = eval_cfg.linear_probe
        probe = linear_probe(
            tr_x,
            tr_y,
            va_x,
            va_y,
            tuple(c.weight_decays),
            c.holdout_fraction,
            seed,
            c.standardize,
            c.max_iter,
        )
        metrics["val/linear_top1"] = probe["top1"]
        metrics["val/linear_weight_decay"] = probe["weight_decay"]
        lap("linear_probe")
    if run("clustering"):
        c = eval_cfg.clustering
        metrics.update({f"val/{k}": v for k, v in clustering_metrics(va_x, va_y, c.n_clusters, c.n_init, seed).items()})
        lap("clustering")
    if run("retrieval"):
        c = eval_cfg.retrieval
        if c.gallery not in ("train", "val"):
            raise ConfigError(f"eval.retrieval.gallery must be train or val, got {c.gallery}")
        gallery = (tr_x, tr_y) if c.gallery == "train" else (None, None)
        r = retrieval_metrics(va_x, va_y, *gallery, ks=tuple(c.ks), chunk_size=c.chunk_size)
        metrics.update({f"val/{k}": v for k, v in r.items() if k != "num_queries"})
        lap("retrieval")
    if run("health"):
        c = eval_cfg.health
        views = augmented_pairs(dm, c.alignment_pairs, seed) if c.alignment_pairs > 0 else None
        pairs = embed_pairs(model.embed, views, device) if views is not None else None
        h = embedding_health(va_x, pairs, c.alignment_alpha, c.uniformity_t, c.max_samples, seed)
        metrics.update({f"val/{k}": v for k, v in h.items()})
        lap("health")
    if "objective" in selected:
        fn = getattr(model, "evaluate_metrics", None)
        if fn is None:
            skipped["objective"] = f"objective {ckpt.objective} has no evaluate_metrics"
        else:
            # options the objective's evaluate_metrics takes (eval.objective.templates for CLIP), when set
            params = inspect.signature(fn).parameters
            options = {k: v for k, v in (eval_cfg.objective or {}).items() if v is not None and k in params}
            with torch.no_grad():
                metrics.update({k: float(v) for k, v in fn(dm, **options).items()})
            lap("objective")
    if run("plots"):
        c = eval_cfg.plots
        title = plot_title(
            ckpt.objective,
            run_overrides(ckpt.run_dir),
            metrics.get("val/knn_top1"),
            "random init" if suffix else f"step {ckpt.global_step}",
        )
        paths = save_embedding_plots(
            va_x,
            va_y if labelled else None,
            output_dir,
            tuple(c.methods),  # checked by run_eval before the checkpoint loaded
            title,
            suffix,
            max_points=c.max_points,
            seed=seed,
            umap_epochs=c.umap_epochs,
            tsne_iter=c.tsne_iter,
        )
        plots = {m: str(p) for m, p in paths.items()}
        lap("plots")
    return {"metrics": metrics, "plots": plots, "skipped": skipped, "timings_s": timings}


def log_to_logger(cfg: DictConfig, ckpt: LoadedCheckpoint, result: dict[str, Any], prefix: str = "eval") -> None:
    """Log the results as ``<prefix>/<name>`` with ``cfg.logger`` into the checkpoint's run directory
    (W&B: the checkpoint's own run, resumed by the id saved in the run directory)."""
    extra = {"save_dir": str(ckpt.run_dir)}
    if "job_type" in cfg.logger:
        extra["job_type"] = "eval"
    logger = instantiate(cfg.logger, **extra)
    named = {f"{prefix}/" + k.removeprefix("val/"): v for k, v in result["metrics"].items()}
    logger.log_metrics(named, step=ckpt.global_step)
    if hasattr(logger, "log_image"):
        for method, path in result["plots"].items():
            logger.log_image(key=f"{prefix}/{method}", images=[path], step=ckpt.global_step)
    if hasattr(logger, "experiment") and hasattr(logger.experiment, "summary"):
        logger.experiment.summary.update(named)
    logger.finalize("success")


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    start = time.time()
    torch.manual_seed(cfg.seed)
    eval_cfg = cfg.get("eval") or OmegaConf.create({})
    if "plots" in eval_cfg:  # refused before the checkpoint loads and the other sections run
        check_methods(eval_cfg.plots.methods, "eval.plots.methods")
    ckpt = load_from_cfg(cfg)
    random_init = bool(cfg.get("random_init", False))
    suffix = "_random_init" if random_init else ""
    out_dir = Path(cfg.output_dir) if cfg.output_dir else ckpt.path.resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    result = evaluate(ckpt, eval_cfg, out_dir, cfg.seed, suffix)
    report = {
        "checkpoint": str(ckpt.path.resolve()),
        "objective": ckpt.objective,
        "global_step": 0 if random_init else ckpt.global_step,
        "epoch": 0 if random_init else int(ckpt.raw.get("epoch", 0)),
        "random_init": random_init,
        **result,
        "wall_s": time.time() - start,
    }
    out = out_dir / f"eval{suffix}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    at = "random init" if random_init else f"step {ckpt.global_step}"
    runs.print_metrics(result["metrics"], title=f"contrastlab-eval: {ckpt.objective} @ {at}")
    for section, why in result["skipped"].items():
        print(f"skipped {section}: {why}")
    for method, path in result["plots"].items():
        print(f"{method} plot: {path}")
    print(f"{out.name}: {out}")
    if cfg.get("logger"):
        log_to_logger(cfg, ckpt, result, prefix="eval_random_init" if random_init else "eval")
    return report


@hydra.main(version_base="1.3", config_path=build.CONF_DIR, config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    try:
        boundary.run_task(run_eval, cfg)
    finally:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def main() -> Any:
    """The ``contrastlab-eval`` command; bad input ends with one line on stderr and exit status 2."""
    return boundary.run_main(hydra_main)


if __name__ == "__main__":
    main()
