"""The one checkpoint reader (training/checkpoints.read_checkpoint) and the one objective check
(objectives/base.check_objective), as ``contrastlab-eval``, a resumed run and Lightning's restore use them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from contrastlab.errors import BadInputError, ConfigError
from contrastlab.objectives.base import CheckpointMismatchError, ContrastiveObjective, check_objective
from contrastlab.training.checkpoints import read_checkpoint
from contrastlab.training.resume import resolve_ckpt_path


def write(path: Path, objective: str = "simclr", **extra: object) -> Path:
    ckpt = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "contrastlab": {"objective": objective}}
    torch.save({**ckpt, **extra}, path)
    return path


@pytest.mark.parametrize("mmap", [False, True])
def test_reads_a_contrastlab_checkpoint_memory_mapped_or_not(tmp_path: Path, mmap: bool) -> None:
    ckpt = read_checkpoint(write(tmp_path / "a.ckpt", global_step=7), mmap=mmap)
    assert torch.equal(ckpt["state_dict"]["w"], torch.arange(6.0).reshape(2, 3))
    assert ckpt["contrastlab"] == {"objective": "simclr"} and ckpt["global_step"] == 7


def test_bad_files_are_one_sentence_naming_the_key(tmp_path: Path) -> None:
    good = write(tmp_path / "good.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    pickled = write(tmp_path / "pickled.ckpt", extra=argparse.Namespace(a=1))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    no_weights = tmp_path / "no_weights.ckpt"
    torch.save({"contrastlab": {"objective": "simclr"}}, no_weights)
    cases = [
        (None, "ckpt_path= is required"),
        (tmp_path / "nope.ckpt", "does not exist; pass a checkpoint file written by contrastlab-train"),
        (truncated, "cannot be read (.*); it may be truncated"),
        (pickled, "holds pickled Python objects .* add trust_checkpoint=true"),
        (foreign, r"is not a contrastlab checkpoint \(no 'contrastlab' entry\)"),
        (no_weights, r"is not a contrastlab checkpoint \(no 'state_dict' entry\)"),
    ]
    for mmap in (False, True):
        for path, message in cases:
            with pytest.raises(ConfigError, match=message) as err:
                read_checkpoint(path, mmap=mmap)
            assert str(err.value).startswith("ckpt_path=") and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^index=.*does not exist"):
        read_checkpoint(tmp_path / "nope.ckpt", key="index")
    assert read_checkpoint(pickled, trust=True)["extra"].a == 1  # trust_checkpoint=true loads it


def test_check_objective_messages_and_every_caller(tmp_path: Path) -> None:
    check_objective("clip", "clip")  # the same objective: no error
    with pytest.raises(
        CheckpointMismatchError,
        match=r"^ckpt_path=x was trained with objective=clip, but this run is objective=simclr; "
        r"pass a simclr checkpoint, or set objective=clip to continue it\.$",
    ):
        check_objective("clip", "simclr", "ckpt_path=x")
    with pytest.raises(
        CheckpointMismatchError,
        match=r"^ckpt_path=x was trained with objective=simclr, not clip; "
        r"pass a clip checkpoint, or drop expect_objective=clip\.$",
    ):
        check_objective("simclr", "clip", "ckpt_path=x", setting="expect_objective")
    assert issubclass(CheckpointMismatchError, ConfigError) and issubclass(CheckpointMismatchError, BadInputError)
    assert issubclass(CheckpointMismatchError, ValueError)

    # Lightning's restore: the objective's own hook (no entry: not a contrastlab checkpoint, left alone)
    model = ContrastiveObjective.__new__(ContrastiveObjective)
    with pytest.raises(CheckpointMismatchError, match="^the checkpoint was trained with objective=clip, but this"):
        model.on_load_checkpoint({"contrastlab": {"objective": "clip"}})
    model.on_load_checkpoint({"contrastlab": {"objective": "base"}})
    model.on_load_checkpoint({})

    # a resumed run: the file is read (memory-mapped) and checked before training starts
    clip = write(tmp_path / "clip.ckpt", objective="clip")
    cfg = OmegaConf.create({"ckpt_path": str(clip), "resume": None, "trust_checkpoint": False})
    with pytest.raises(CheckpointMismatchError, match=f"^ckpt_path={clip} was trained with objective=clip, but this"):
        resolve_ckpt_path(cfg, "simclr", tmp_path)
    assert resolve_ckpt_path(cfg, "clip", tmp_path) == str(clip)
    no_objective = write(tmp_path / "old.ckpt", objective=None)
    cfg.ckpt_path = str(no_objective)
    with pytest.raises(CheckpointMismatchError, match="trained with objective=None"):
        resolve_ckpt_path(cfg, "simclr", tmp_path)
