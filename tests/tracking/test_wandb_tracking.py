"""W&B organisation without the network: names, groups, tags, run ids, resume links, offline files."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict
from wandb.proto import wandb_internal_pb2 as pb

from contrastlab.config.build import CONF_DIR
from contrastlab.tracking import loggers


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
    """Make HydraConfig look like job 3 of a sweep with the given overrides (what wandb_logger reads)."""

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


def test_wandb_logger_names_groups_and_tags_a_sweep_job(hydra_job, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    hydra_job("loss.temperature=0.1", "sampler=in_batch", "debug=fast", "logger=wandb", "tags=[mine]")
    run_dir = tmp_path / "job3"
    logger = loggers.wandb_logger(save_dir=str(run_dir), tags=["mine"])
    init = logger._wandb_init  # the arguments wandb.init will get (the run is not started here)
    assert init["name"] == "temperature=0.1,sampler=in_batch,debug=fast"
    assert init["group"] == "2024-05-01_10-00-00"
    assert init["tags"] == [
        "mine",
        "objective:simclr",
        "encoder:small_cnn",
        "sampler:in_batch",
        "data:digits",
    ]
    assert init["job_type"] == "train"
    assert logger._offline
    assert init["config"]["overrides"][:2] == ["loss.temperature=0.1", "sampler=in_batch"]
    assert (run_dir / loggers.RUN_ID_FILE).read_text().strip() == init["id"]


def test_wandb_logger_single_run_and_resume(hydra_job, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / loggers.RUN_ID_FILE).write_text("abc12345\n")
    hydra_job(f"ckpt_path={old}/checkpoints/last.ckpt", multirun=False)
    new = tmp_path / "new"
    logger = loggers.wandb_logger(save_dir=str(new), resume_from=str(old / "checkpoints" / "last.ckpt"))
    init = logger._wandb_init
    assert init["id"] == "abc12345" and init["resume"] == "allow"
    assert init["group"] is None and init["name"] is None  # a single run; ckpt_path is not part of a name
    assert (new / loggers.RUN_ID_FILE).read_text().strip() == "abc12345"
    assert Path((new / loggers.RESUMED_FROM_FILE).read_text().strip()) == old


def test_wandb_logger_job_type_eval(hydra_job, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    hydra_job(multirun=False, job_name="evaluate")  # contrastlab-eval's job
    assert loggers.wandb_logger(save_dir=str(tmp_path / "e"))._wandb_init["job_type"] == "eval"


# --- offline .wandb files: written here with an independent writer of the LevelDB-log format


def write_wandb_file(path: Path, records: list[pb.Record], truncate: int = 0) -> None:
    block = 32768
    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for rec in records:
        data = rec.SerializeToString()
        first = True
        while True:
            left = block - len(out) % block
            if left < 7:
                out += b"\0" * left
                left = block
            chunk, data = data[: left - 7], data[left - 7 :]
            kind = (1 if not data else 2) if first else (4 if not data else 3)
            out += struct.pack("<IHB", zlib.crc32(bytes([kind]) + chunk), len(chunk), kind) + chunk
            first = False
            if not data:
                break
    path.write_bytes(bytes(out[: len(out) - truncate]))


def history(step: int, **values) -> pb.Record:
    rec = pb.Record()
    for k, v in {"_step": step, **values}.items():
        rec.history.item.add(key=k, value_json=json.dumps(v))
    return rec


def test_read_offline_records_across_blocks(tmp_path: Path) -> None:
    run = pb.Record()
    run.run.run_id, run.run.display_name, run.run.run_group = "abc12345", "temperature=0.1", "sweep-1"
    run.run.tags.extend(["objective:simclr"])
    run.run.job_type = "train"
    big = history(1, note="x" * 70000, **{"train/loss": 2.5})  # spans three 32 KiB blocks
    records = [run, history(0, **{"train/loss": 3.0}), big, history(2, **{"train/loss": 2.0})]
    d = tmp_path / "wandb" / "offline-run-20240501_100000-abc12345"
    d.mkdir(parents=True)
    write_wandb_file(d / "run-abc12345.wandb", records, truncate=5)  # the last record cut short (killed)
    read = list(loggers.read_offline_records(d / "run-abc12345.wandb"))
    assert [r.WhichOneof("record_type") for r in read] == ["run", "history", "history"]
    assert read[2] == big
    (info,) = loggers.offline_runs(tmp_path)
    assert (info["id"], info["name"], info["group"], info["tags"], info["job_type"]) == (
        "abc12345",
        "temperature=0.1",
        "sweep-1",
        ["objective:simclr"],
        "train",
    )
    assert [row["train/loss"] for row in info["history"]] == [3.0, 2.5]
    bad = tmp_path / "x.wandb"
    bad.write_text("not a wandb file")
    with pytest.raises(ValueError, match="not a W&B run file"):
        list(loggers.read_offline_records(bad))
