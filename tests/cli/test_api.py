"""contrastlab.api: compose like the CLI, train in-process, load a checkpoint, embed a loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from contrastlab import api
from contrastlab.config.checks import ConfigError

TINY = ["debug=fast", "logger=csv", "print_config=false", "callbacks.collapse=null"]


@pytest.fixture(autouse=True)
def no_hydra_config_left_behind():
    """compose() installs a global HydraConfig; other tests in this process must not see it."""
    yield
    HydraConfig.instance().cfg = None


def test_compose_sets_the_run_directory_and_hydra_choices(tmp_path: Path) -> None:
    cfg = api.compose(["loss.temperature=0.3", "sampler=memory_bank"], tmp_path / "run")
    assert "hydra" not in cfg
    assert cfg.paths.output_dir == str((tmp_path / "run").resolve())
    assert cfg.task_name == "simclr"  # ${hydra:runtime.choices.objective}
    assert cfg.loss.temperature == 0.3
    assert cfg.callbacks.model_checkpoint.dirpath == str((tmp_path / "run" / "checkpoints").resolve())
    hc = HydraConfig.get()
    assert hc.runtime.choices["sampler"] == "memory_bank"
    assert list(hc.overrides.task) == ["loss.temperature=0.3", "sampler=memory_bank"]
    OmegaConf.resolve(cfg)  # every interpolation resolves


def test_compose_follows_experiment_overlays(tmp_path: Path) -> None:
    cfg = api.compose(["experiment=clip_shapes"], tmp_path)
    assert cfg.task_name == "clip_shapes"
    assert HydraConfig.get().runtime.choices["objective"] == "clip"
    assert cfg.data.num_train == 4000


def test_bad_input_raises_instead_of_exiting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loss.temperature"):
        api.train(["loss.temperature=0", *TINY], tmp_path / "bad")
    with pytest.raises(ConfigCompositionException):
        api.compose(["sampler=no_such_sampler"], tmp_path)


@pytest.fixture(scope="module")
def api_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("api") / "run"
    HydraConfig.instance().cfg = None
    metrics = api.train([*TINY, "loss.temperature=0.2"], run_dir)
    assert not HydraConfig.initialized()  # train() removes the HydraConfig it installed
    return run_dir, metrics


def test_train_writes_a_run_directory_like_the_cli(api_run: tuple[Path, dict]) -> None:
    run_dir, metrics = api_run
    assert metrics == json.loads((run_dir / "metrics.json").read_text())
    assert (
        metrics["trainer/global_step"] == 3 and metrics["val/knn_top1"] > 0.5
    )  # chance is 0.1 on digits: a monitor with misaligned labels or features misses this
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "csv" / "metrics.csv").is_file()
    assert OmegaConf.load(run_dir / ".hydra" / "overrides.yaml") == [*TINY, "loss.temperature=0.2"]
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert saved.loss.temperature == 0.2

    from contrastlab.tracking.leaderboard import load_runs

    df = load_runs([run_dir])
    assert df.loc[0, "loss.temperature"] == 0.2
    assert df.loc[0, "val/knn_top1"] == pytest.approx(metrics["val/knn_top1"])


def test_load_checkpoint_and_embed_reproduce_the_logged_knn(api_run: tuple[Path, dict]) -> None:
    run_dir, metrics = api_run
    model, dm, cfg = api.load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert not model.training and cfg.loss.temperature == 0.2
    raw = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, raw["state_dict"][name], rtol=0, atol=0)

    val_x, val_y = api.embed(model, dm.val_dataloader())
    assert val_x.dtype == torch.float32 and val_x.shape == (len(dm.val_base), model.encoder.out_dim)
    assert val_y.tolist() == [int(dm.val_base[i][1]) for i in range(len(dm.val_base))]
    first = next(iter(dm.val_dataloader()))["image"]
    with torch.no_grad():
        torch.testing.assert_close(val_x[: len(first)], model.embed(first))
        projected, _ = api.embed(model, dm.val_dataloader(), fn=model.project)
        torch.testing.assert_close(projected[: len(first)], model.project(first))

    # the online kNN monitor's number, recomputed from the API's embeddings of the checkpoint
    from contrastlab.evaluation.callbacks import KNNMonitor

    train_x, train_y = api.embed(model, dm.eval_train_dataloader())
    knn = KNNMonitor(k=cfg.callbacks.knn.k, temperature=cfg.callbacks.knn.temperature).score(
        train_x, train_y, val_x, val_y
    )
    assert knn["val/knn_top1"] == pytest.approx(metrics["val/knn_top1"], abs=1e-6)
