"""End-to-end SimCLR runs through the real CLI (tiny configs), one per acceptance variant."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from contrastlab.config.build import CONF_DIR


def _expect_run_dir(run) -> None:
    assert (run.run_dir / "metrics.json").is_file(), run.output[-3000:]
    assert (run.run_dir / ".hydra" / "config.yaml").is_file()
    assert (run.run_dir / "checkpoints" / "last.ckpt").is_file()
    m = run.metrics
    assert m["trainer/global_step"] == 3
    assert (
        m["val/knn_top1"] > 0.5 and m["val/knn_top1_init"] > 0.5
    )  # chance is 0.1 on digits: a monitor with misaligned labels or features misses this


def test_default_config_composes_with_targets() -> None:
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train")
    for group in (
        "data",
        "augment",
        "encoder",
        "head",
        "objective",
        "loss",
        "sampler",
        "optimizer",
        "scheduler",
        "trainer",
        "logger",
    ):
        assert "_target_" in cfg[group], group
    assert cfg.data._target_.endswith("DigitsDataModule")
    assert cfg.objective._target_.endswith("SimCLR")
    assert cfg.logger._target_.endswith("WandbRunLogger")
    assert OmegaConf.select(cfg, "encoder.in_chans") == 1


def test_default_run_wandb_offline(train) -> None:
    run = train("debug=fast", "logger=wandb")
    _expect_run_dir(run)
    offline = list((run.run_dir / "wandb").glob("offline-run-*"))
    assert offline, "no offline W&B run in the run directory"
    assert (run.run_dir / "wandb_run_id").read_text().strip() in offline[0].name


@pytest.mark.parametrize(
    "overrides",
    [("logger=tensorboard", "optimizer=sgd")],
    ids=["tensorboard-sgd"],
)  # timm resnet18 and LARS: tests/docs/test_readme_recipes.py runs the README's commands for them
def test_variants_debug_fast(train, overrides) -> None:
    _expect_run_dir(train("debug=fast", *overrides))
