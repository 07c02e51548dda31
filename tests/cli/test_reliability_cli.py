"""Bad input on the command line: every case exits with status 2 and one ``error:`` line naming the key
(no traceback), before any data is read or process started.

The table runs through the real entry point (``contrastlab.cli.train.main``, argv and all) in one
subprocess, each case under a 20 s alarm, so torch and Lightning are imported once for the table;
a few cases also run as separate ``python -m contrastlab.cli.train`` processes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli_env, run_train_cases


def bad_overrides(tmp: Path) -> list[tuple[list[str], str]]:
    """(overrides, text the one error line must contain, naming the key)."""
    no_caption = tmp / "no_caption.csv"
    no_caption.write_text("filepath,text\na.png,a red square\n")
    other = tmp / "clip.ckpt"
    torch.save({"state_dict": {}, "contrastlab": {"objective": "clip", "config": None}}, other)
    pickled = tmp / "pickled.ckpt"
    hparams = argparse.Namespace(lr=1.0)  # a pickled object, as in old Lightning checkpoints
    torch.save({"state_dict": {}, "hparams": hparams, "contrastlab": {"objective": "simclr"}}, pickled)
    return [
        (["encoder=smal_cnn"], "unknown encoder option 'smal_cnn'; did you mean 'small_cnn'? options: "),
        (["sampler=membank"], "unknown sampler option 'membank'; did you mean 'memory_bank'?"),
        (["encodr=small_cnn"], "unknown config key 'encodr'; did you mean 'encoder'?"),
        (["loss.temprature=0.1"], "unknown config key 'loss.temprature'; did you mean 'loss.temperature'?"),
        (["loss.temperature=("], "cannot parse the override 'loss.temperature=('"),
        (["loss.temperature=0"], "loss.temperature must be > 0, got 0"),
        (["loss.temperature=warm"], "loss.temperature must be > 0, got 'warm'"),
        (["objective=triplet", "loss.margin=-0.1"], "loss.margin must be >= 0, got -0.1"),
        (["data.batch_size=1"], "data.batch_size=1 leaves no in-batch negatives"),
        (["trainer.max_epochs=1.5"], "trainer.max_epochs must be a whole number >= 1"),
        (["trainer.precision=banana"], "trainer.precision must be one of 64, 32, 16, transformer-engine"),
        (["data.num_workers=-2"], "data.num_workers must be a whole number >= 0"),
        (["callbacks.nan_guard.max_consecutive=0"], "callbacks.nan_guard.max_consecutive must be"),
        (
            ["objective=triplet", "+data/batch_sampler=pk", "data.batch_sampler.k=1"],
            "data.batch_sampler.k=1 puts one item per class",
        ),
        (["objective=clip"], "objective=clip trains on image–caption pairs and data=digits has no captions"),
        (["objective=triplet", "data=text_pairs"], "data=text_pairs holds text pairs"),
        (["trainer=ddp_cpu", "data.drop_last=false"], "data.drop_last=false with sampler.gather_across_ranks=true"),
        (["data=cifar10", f"data.data_dir={tmp / 'nowhere'}"], "data.data_dir="),
        (["sampler=memory_bank", "sampler.size=100"], "sampler.size=100 is smaller than the 512 rows"),
        (
            ["objective.grad_cache.micro_batch_size=24", "data.batch_size=64"],
            "objective.grad_cache.micro_batch_size=24 does not divide data.batch_size=64",
        ),
        (["objective=clip", "data=image_text_csv"], "data.path is required"),
        (["objective=clip", "data=image_text_csv", f"data.path={tmp / 'missing.csv'}"], "data.path="),
        (["objective=clip", "data=image_text_csv", f"data.path={no_caption}"], "no column 'caption'"),
        ([f"ckpt_path={other}"], "was trained with objective=clip, but this run is objective=simclr"),
        ([f"ckpt_path={pickled}"], "trust_checkpoint=true"),
        (["ckpt_path=last"], "ckpt_path=last: no run with this config"),
        (["resume=sometimes"], "resume=sometimes is not an option"),
        (
            ["callbacks.embedding_plot.methods=[umap,isomap]"],
            "callbacks.embedding_plot.methods must list methods among umap, tsne, pca, got 'isomap'",
        ),
    ]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_bad_overrides_exit_2_with_one_line_naming_the_key(tmp_path: Path) -> None:
    cases = bad_overrides(tmp_path)
    assert len(cases) >= 15
    results = run_train_cases([args for args, _ in cases], tmp_path)
    for (args, expected), result in zip(cases, results, strict=True):
        output = result["out"] + result["err"]
        lines = error_lines(result["err"])
        assert result["code"] == 2, f"{args}: exit {result['code']}\n{output[-3000:]}"
        assert len(lines) == 1, f"{args}: {lines}\n{output[-3000:]}"
        assert expected in lines[0], f"{args}: {lines[0]!r} lacks {expected!r}"
        assert "Traceback" not in output and "Error executing job" not in output, f"{args}:\n{output[-3000:]}"
    # validation came first: no run directory got data, checkpoints or metrics
    assert not list(tmp_path.glob("runs*/*/checkpoints")) and not list(tmp_path.glob("runs*/*/metrics.json"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["encoder=smal_cnn"], "error: unknown encoder option 'smal_cnn'; did you mean 'small_cnn'?"),
        (["data=image_text_csv", "objective=clip", "data.path=captions.csv"], "error: data.path=captions.csv does"),
        (["loss.temperature=-1"], "error: loss.temperature must be > 0, got -1; set e.g. loss.temperature=0.1."),
    ],
)
def test_the_command_exits_2_in_a_separate_process(tmp_path: Path, args: list[str], expected: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "contrastlab.cli.train", *args, f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        env=cli_env(tmp_path),
        cwd=tmp_path,
        timeout=20,  # these fail before torch or Lightning is imported
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert error_lines(proc.stderr) == [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(error_lines(proc.stderr)) == 1 and error_lines(proc.stderr)[0].startswith(expected)
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("module", "args", "expected"),
    [
        ("evaluate", ["ckpt_path=x.ckpt", "evall=1"], "error: unknown config key 'evall'; did you mean 'eval'?"),
        ("embed", [], "error: ckpt_path= is required"),
        ("search", ["index=nowhere", "query=idx:1"], "error: index=nowhere has no embeddings.npy"),
        (
            "evaluate",
            ["ckpt_path=x.ckpt", "eval.plots.methods=[umap,isomap]"],
            "error: eval.plots.methods must list methods among umap, tsne, pca, got 'isomap'",
        ),
    ],
)
def test_eval_embed_and_search_exit_2_with_one_line(tmp_path: Path, module: str, args: list[str], expected: str):
    """The other commands share contrastlab-train's error boundary (cli_errors.run_main)."""
    proc = subprocess.run(
        [sys.executable, "-m", f"contrastlab.cli.{module}", *args],
        capture_output=True,
        text=True,
        env=cli_env(tmp_path),
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_hydra_full_error_shows_the_traceback(tmp_path: Path) -> None:
    env = {**cli_env(tmp_path), "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "contrastlab.cli.train", "loss.temperature=0", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError: loss.temperature must be > 0" in proc.stderr
