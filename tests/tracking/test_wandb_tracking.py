"""W&B organisation without the network (names, groups, tags, run ids, resume links, checked on the
offline run wandb started), and every run's own metric history."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import wandb
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import open_dict

from contrastlab.config.build import CONF_DIR
from contrastlab.tracking import history, loggers


def test_run_name_from_overrides() -> None:
    name = loggers.run_name_from_overrides(
        [
            "loss.temperature=0.1",
            "sampler=memory_bank",
            "hydra.run.dir=/x",
            "paths.log_dir=/y",
            "+ckpt_path=a.ckpt",
        ]
    )
    assert name == "temperature=0.1,sampler=memory_bank"
    # same last part: full keys; long Optuna floats are shortened; nothing left: None
    assert loggers.run_name_from_overrides(["optimizer.lr=0.00012345678", "head.lr=0.1"]) == (
        "optimizer.lr=0.0001235,head.lr=0.1"
    )
    assert loggers.run_name_from_overrides(["logger=wandb", "print_config=false"]) is None
    assert loggers.run_name_from_overrides(["seed=1"], exclude=["seed"]) is None
    # values as Hydra reads them: 1e-3 is a float, a quoted value a string; deletions are no setting
    assert loggers.run_name_from_overrides(["optimizer.lr=1e-3", "~tags", "data.name='1e-3'", "flag=true"]) == (
        "lr=0.001,name=1e-3,flag=true"
    )
    assert loggers.run_name_from_overrides(["callbacks=none", "resume=auto", "hydra/launcher=joblib"]) is None


def test_choice_tags() -> None:
    choices = {
        "objective": "simclr",
        "encoder": "small_cnn",
        "sampler": "in_batch",
        "data": None,
        "head": "mlp",
    }
    assert loggers.choice_tags(choices) == ["objective:simclr", "encoder:small_cnn", "sampler:in_batch"]


def test_resume_reuses_the_run_id_of_the_checkpoints_run(tmp_path: Path) -> None:
    old = tmp_path / "runs" / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / loggers.RUN_ID_FILE).write_text("abc12345\n")
    ckpt = old / "checkpoints" / "last.ckpt"
    new = tmp_path / "runs" / "new"
    new.mkdir()
    assert loggers.find_run_dir(ckpt) == old
    assert loggers.resolve_run_id(new, ckpt) == ("abc12345", old)
    # no checkpoint, or one outside any run directory: a fresh id, unless this directory has one
    run_id, earlier = loggers.resolve_run_id(new, tmp_path / "elsewhere.ckpt")
    assert earlier is None and len(run_id) == 8 and run_id.isalnum() and run_id != "abc12345"
    (new / loggers.RUN_ID_FILE).write_text("zzz99999")
    assert loggers.resolve_run_id(new, None) == ("zzz99999", None)
    assert loggers.resolve_run_id(new, "last") == ("zzz99999", None)  # Lightning's "last"/"best" keywords
    assert loggers.resolve_run_id(new, ckpt) == ("abc12345", old)  # the checkpoint's run wins


@pytest.fixture
def hydra_job(tmp_path: Path):
    """Make HydraConfig look like job 3 of a sweep with the given overrides (what WandbRunLogger reads)."""

    def _set(*overrides: str, multirun: bool = True, job_name: str = "train"):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.MULTIRUN if multirun else RunMode.RUN
            cfg.hydra.sweep.dir = str(tmp_path / "outputs" / "simclr" / "multiruns" / "2024-05-01_10-00-00")
            cfg.hydra.job.name = job_name
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _set
    HydraConfig.instance().cfg = None


@pytest.fixture
def offline(monkeypatch):
    """W&B offline (as without credentials); the run a test started is finished afterwards."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    wandb.finish()


def test_wandb_logger_names_groups_and_tags_a_sweep_job(hydra_job, offline, tmp_path: Path) -> None:
    hydra_job("loss.temperature=0.1", "sampler=in_batch", "debug=fast", "logger=wandb", "tags=[mine]")
    run_dir = tmp_path / "job3"
    logger = loggers.WandbRunLogger(save_dir=str(run_dir), tags=["mine"])
    run = logger.experiment  # the offline run wandb started: what it holds, through its public attributes
    assert run.settings.mode == "offline" and run.offline
    assert run.name == "temperature=0.1,sampler=in_batch,debug=fast"
    assert run.group == "2024-05-01_10-00-00"
    assert list(run.tags) == ["mine", "objective:simclr", "encoder:small_cnn", "sampler:in_batch", "data:digits"]
    assert run.job_type == "train"
    assert run.config["overrides"][:2] == ["loss.temperature=0.1", "sampler=in_batch"]
    assert (run_dir / loggers.RUN_ID_FILE).read_text().strip() == run.id
    assert Path(run.settings.sync_dir).parent == run_dir / "wandb"  # offline into the run directory
    # wandb_run.json records the same, then at the end the run's summary and its number of log calls
    info = loggers.read_run_info(run_dir)
    assert (info["id"], info["name"], info["group"], info["tags"], info["job_type"], info["mode"]) == (
        run.id,
        run.name,
        run.group,
        list(run.tags),
        "train",
        "offline",
    )
    logger.log_metrics({"train/loss": 2.0}, step=0)
    logger.log_metrics({"train/loss": 1.5}, step=1)
    logger.finalize("success")
    info = loggers.read_run_info(run_dir)
    assert info["status"] == "success" and info["logged_steps"] == 2
    assert info["summary"]["train/loss"] == 1.5 and info["summary"]["trainer/global_step"] == 1


def test_wandb_logger_single_run_and_resume(hydra_job, offline, tmp_path: Path) -> None:
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / loggers.RUN_ID_FILE).write_text("abc12345\n")
    hydra_job(f"ckpt_path={old}/checkpoints/last.ckpt", multirun=False)
    new = tmp_path / "new"
    logger = loggers.WandbRunLogger(save_dir=str(new), resume_from=str(old / "checkpoints" / "last.ckpt"))
    assert (new / loggers.RUN_ID_FILE).read_text().strip() == "abc12345"
    assert Path((new / loggers.RESUMED_FROM_FILE).read_text().strip()) == old
    run = logger.experiment
    assert run.id == "abc12345"  # the checkpoint's W&B run continues
    assert Path(run.settings.sync_dir).name.endswith("-abc12345")
    # a single run (no group); ckpt_path is not part of a name, so no name is given
    assert run.group == "" and run.name is None
    assert loggers.read_run_info(new)["group"] is None


def test_wandb_logger_job_type_eval(hydra_job, offline, tmp_path: Path) -> None:
    hydra_job(multirun=False, job_name="evaluate")  # contrastlab-eval's job
    assert loggers.WandbRunLogger(save_dir=str(tmp_path / "e")).experiment.job_type == "eval"


# ----------------------------------------------------------------------------- history.jsonl


def test_history_logger_appends_finite_scalars_on_rank_zero(tmp_path: Path, monkeypatch) -> None:
    logger = loggers.HistoryLogger(tmp_path / "run")
    logger.log_hyperparams({"lr": 0.1})  # nothing to write
    logger.log_metrics({"train/loss": torch.tensor(2.5), "epoch": 0}, step=0)
    logger.log_metrics({"train/loss": 2.0, "bad": math.nan, "inf": math.inf, "vec": torch.ones(2)}, step=1)
    logger.log_metrics({"bad": math.nan}, step=2)  # nothing finite: no row
    logger.log_metrics({"val/knn_top1": 0.5}, step=1)
    rows = history.read_rows(logger.path)
    assert rows == [
        {"step": 0, "train/loss": 2.5, "epoch": 0},
        {"step": 1, "train/loss": 2.0},
        {"step": 1, "val/knn_top1": 0.5},
    ]
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # another DDP rank: writes nothing
    loggers.HistoryLogger(tmp_path / "run").log_metrics({"train/loss": 9.0}, step=5)
    assert history.read_rows(logger.path) == rows


def test_history_of_a_continued_run_and_a_killed_one(tmp_path: Path) -> None:
    first = loggers.HistoryLogger(tmp_path)
    for step in range(5):
        first.log_metrics({"train/loss": 5.0 - step}, step=step)
    with first.path.open("a") as f:
        f.write('{"step": 5, "train/lo')  # the process was killed mid-line
    frame = history.read_history(tmp_path)
    assert frame["step"].tolist() == [0, 1, 2, 3, 4]
    # a new process continuing in this directory from step 3 (its checkpoint) re-logs from there
    second = loggers.HistoryLogger(tmp_path)
    second.log_metrics({"train/loss": 1.75}, step=3)
    second.log_metrics({"train/loss": 1.5}, step=4)
    frame = history.read_history(tmp_path)
    assert frame["step"].tolist() == [0, 1, 2, 3, 4]
    assert frame["train/loss"].tolist() == [5.0, 4.0, 3.0, 1.75, 1.5]
    assert history.read_history(tmp_path / "elsewhere") is None
    assert loggers.with_history(False, tmp_path)[0].save_dir == str(tmp_path)
