"""Which checkpoint a run continues from (training/resume.py), in-process: the run key, the search for the
newest ``last.ckpt`` of the same config, and ``ckpt_path=last`` / ``resume=auto`` / a DDP child's choice
(the end-to-end kill-and-resume runs are slow; these are what ``make mutate`` runs against resume.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from contrastlab.errors import ConfigError
from contrastlab.training import resume


def config(tmp_path: Path, **changes) -> DictConfig:
    base = {
        "task_name": "simclr",
        "seed": 1,
        "paths": {"log_dir": str(tmp_path / "logs"), "output_dir": "${paths.log_dir}/x"},
        "loss": {"temperature": 0.1},
        "trainer": {"max_epochs": 3, "precision": "32-true", "enable_progress_bar": True},
        "ckpt_path": None,
        "resume": None,
        "trust_checkpoint": False,
        "logger": {"name": "a"},
        "tags": ["x"],
    }
    return OmegaConf.merge(base, changes)


def test_the_run_key_is_what_the_run_trains() -> None:
    cfg = config(Path("/tmp"))
    key = resume.run_key(cfg)
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    same = [  # where runs are logged, how they are shown, how long they train: not part of the key
        {"paths": {"log_dir": "/elsewhere"}},
        {"logger": {"name": "b"}},
        {"tags": ["y"]},
        {"ckpt_path": "last"},
        {"resume": "auto"},
        {"trainer": {"max_epochs": 30, "enable_progress_bar": False, "max_steps": 5, "default_root_dir": "d"}},
    ]
    for change in same:
        assert resume.run_key(OmegaConf.merge(cfg, change)) == key, change
    for change in ({"seed": 2}, {"loss": {"temperature": 0.2}}, {"trainer": {"precision": "bf16-mixed"}}, {"x": 1}):
        assert resume.run_key(OmegaConf.merge(cfg, change)) != key, change
    # interpolations count by their value
    a = OmegaConf.merge(cfg, {"loss": {"temperature": "${seed}"}})
    b = OmegaConf.merge(cfg, {"loss": {"temperature": 1}})
    assert resume.run_key(a) == resume.run_key(b)


def write_run(root: Path, name: str, key: str, with_checkpoint: bool = True, objective: str = "simclr") -> Path:
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / resume.RUN_KEY_FILE).write_text(key + "\n")
    last = run / "checkpoints" / "last.ckpt"
    if with_checkpoint:
        torch.save({"state_dict": {}, "contrastlab": {"objective": objective}}, last)
    return last


def test_the_newest_last_checkpoint_of_the_same_config_is_found(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    key, root = resume.run_key(cfg), tmp_path / "logs" / "simclr"
    assert resume.search_root(cfg) == root
    assert resume.find_last_checkpoint(cfg) is None  # no run yet
    old = write_run(root, "runs/a", key)
    write_run(root, "runs/b", "another-config")
    write_run(root, "runs/c", key, with_checkpoint=False)
    sweep = write_run(root, "multiruns/s/0", key)
    os.utime(old, (1_000, 1_000))
    os.utime(sweep, (2_000, 2_000))
    assert resume.find_last_checkpoint(cfg) == sweep
    os.utime(old, (3_000, 3_000))
    assert resume.find_last_checkpoint(cfg) == old
    assert resume.find_last_checkpoint(cfg, exclude=root / "runs" / "a") == sweep  # the current run is not its own
    resume.write_run_key(cfg, tmp_path)
    assert (tmp_path / resume.RUN_KEY_FILE).read_text() == key + "\n"


def test_ckpt_path_last_and_resume_auto(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv(resume.ENV_RESUME, raising=False)
    run_dir = tmp_path / "now"
    cfg = config(tmp_path, ckpt_path="last")
    with pytest.raises(
        ConfigError, match=r"^ckpt_path=last: no run with this config has a checkpoints/last\.ckpt under "
    ):
        resume.resolve_ckpt_path(cfg, "simclr", run_dir)
    cfg = config(tmp_path, resume="auto")
    monkeypatch.setenv(resume.ENV_RESUME, "stale")
    assert resume.resolve_ckpt_path(cfg, "simclr", run_dir) is None
    assert resume.ENV_RESUME not in os.environ
    assert "resume=auto: no checkpoint of this config under" in capsys.readouterr().out
    assert resume.resolve_ckpt_path(cfg, "simclr", run_dir, rank=1) is None
    assert capsys.readouterr().out == ""  # only rank 0 prints

    last = write_run(tmp_path / "logs" / "simclr", "runs/a", resume.run_key(cfg))
    for changes in ({"ckpt_path": "last"}, {"resume": "auto"}, {"resume": "auto", "ckpt_path": ""}):
        cfg = config(tmp_path, **changes)
        assert resume.resolve_ckpt_path(cfg, "simclr", run_dir) == str(last)
        assert cfg.ckpt_path == str(last) and os.environ[resume.ENV_RESUME] == str(last)
        assert capsys.readouterr().out == f"resuming from {last}\n"
    with pytest.raises(ConfigError, match="was trained with objective=simclr, but this run is objective=clip"):
        resume.resolve_ckpt_path(config(tmp_path, ckpt_path="last"), "clip", run_dir)


def test_a_ddp_child_takes_the_parents_choice_and_an_explicit_file_clears_it(tmp_path: Path, monkeypatch) -> None:
    chosen = write_run(tmp_path / "elsewhere", "run", "whatever")  # not findable from this config
    monkeypatch.setenv(resume.ENV_RESUME, str(chosen))
    for changes in ({"ckpt_path": "last"}, {"resume": "auto"}):
        assert resume.resolve_ckpt_path(config(tmp_path, **changes), "simclr", tmp_path, rank=1) == str(chosen)
    with pytest.raises(ConfigError, match="^ckpt_path=last: no run"):  # rank 0 searches itself
        resume.resolve_ckpt_path(config(tmp_path, ckpt_path="last"), "simclr", tmp_path, rank=0)
    cfg = config(tmp_path, ckpt_path=str(chosen))
    assert resume.resolve_ckpt_path(cfg, "simclr", tmp_path, rank=1) == str(chosen)
    assert resume.ENV_RESUME not in os.environ  # an explicit file: nothing for children to inherit
    assert resume.resolve_ckpt_path(config(tmp_path), "simclr", tmp_path) is None


def test_resume_takes_only_auto(tmp_path: Path) -> None:
    for ok in (None, False, "auto"):
        assert resume.resolve_ckpt_path(config(tmp_path, resume=ok), "simclr", tmp_path) is None
    with pytest.raises(
        ConfigError, match=r"^resume=sometimes is not an option; set resume=auto \(or leave it null\)\.$"
    ):
        resume.resolve_ckpt_path(config(tmp_path, resume="sometimes"), "simclr", tmp_path)
