"""README recipes that no other test runs, run as the README writes them (plus ``debug=fast logger=csv`` and a
run directory in ``tmp_path``). The map of every README command to its test is in ``test_readme_commands.py``."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, Run, cli_env, make_train, train_run
from writers import write_cifar10, write_image_text_csv, write_tiny_bert

README = (ROOT / "README.md").read_text()
FAST = ("debug=fast", "logger=csv", "print_config=false")
BIN = Path(sys.executable).parent


def _config(run: Run) -> dict:
    return yaml.safe_load((run.run_dir / ".hydra" / "config.yaml").read_text())


def _last_ckpt(run: Run) -> dict:
    return torch.load(run.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def _shell(command: str, tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``command`` through bash in ``tmp_path``, with this venv's console scripts first on PATH."""
    env = {**cli_env(tmp_path), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{command}\nexited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


# --- the worked example: a new loss from the README text ------------------------------------------------
def _worked_example() -> tuple[str, str, str]:
    """The README's python, yaml and bash blocks after "Adding a loss"."""
    section = README.split("Adding a loss is one pure function", 1)[1]
    python = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    conf = re.search(r"```yaml\n(.*?)```", section, flags=re.S).group(1)
    command = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1).strip()
    return python, conf, command


def _decoupled_loop(q: torch.Tensor, k: torch.Tensor, pos: list[int], temperature: float, excl: list[int]):
    q = q / q.norm(dim=1, keepdim=True)
    k = k / k.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(len(q)):
        terms = [q[i] @ k[j] / temperature for j in range(len(k)) if j not in (pos[i], excl[i])]
        total = total + torch.logsumexp(torch.stack(terms), 0) - q[i] @ k[pos[i]] / temperature
    return total / len(q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_worked_example_loss_equals_a_loop_over_pairs(tmp_path: Path, dtype: torch.dtype) -> None:
    python, _, _ = _worked_example()
    (tmp_path / "decoupled.py").write_text(python)
    spec = importlib.util.spec_from_file_location("readme_decoupled", tmp_path / "decoupled.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    gen = torch.Generator().manual_seed(0)
    n = 6  # NT-Xent layout: queries = keys = [z1; z2], positive = the other view, the own copy excluded
    z = torch.randn(2 * n, 5, generator=gen, dtype=dtype, requires_grad=True)
    pos = [(i + n) % (2 * n) for i in range(2 * n)]
    excl = list(range(2 * n))
    got = module.decoupled_nce(z, z, torch.tensor(pos), 0.3, exclude_index=torch.tensor(excl))
    want = _decoupled_loop(z, z, pos, 0.3, excl)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    (g_got,) = torch.autograd.grad(got, z)
    (g_want,) = torch.autograd.grad(want, z)
    torch.testing.assert_close(g_got, g_want, atol=tol, rtol=tol)
    with torch.no_grad():  # and without a graph
        torch.testing.assert_close(
            module.decoupled_nce(z, z, torch.tensor(pos), 0.3, exclude_index=torch.tensor(excl)), want.detach()
        )


def test_worked_example_trains_from_its_own_folder(tmp_path: Path) -> None:
    """The three README blocks written where they say, then the README's command line."""
    python, conf, command = _worked_example()
    (tmp_path / "my_losses").mkdir()
    (tmp_path / "my_losses" / "decoupled.py").write_text(python)
    (tmp_path / "my_conf" / "loss").mkdir(parents=True)
    (tmp_path / "my_conf" / "loss" / "decoupled.yaml").write_text(conf)
    assert command == "PYTHONPATH=. contrastlab-train loss=decoupled hydra.searchpath=[file://$PWD/my_conf]"
    _shell(f"{command} {' '.join(FAST)} hydra.run.dir=run", tmp_path)
    run = Run(None, tmp_path / "run")
    assert _config(run)["loss"] == {
        "_target_": "my_losses.decoupled.decoupled_nce",
        "_partial_": True,
        "temperature": 0.1,
    }
    m = run.metrics
    assert m["trainer/global_step"] == 3 and torch.isfinite(torch.tensor(m["train/loss"]))
    assert m["val/knn_top1"] > 0.5  # chance is 0.1 on digits: a monitor with misaligned labels or features misses this


# --- Quick start: make train passes ARGS through --------------------------------------------------------
def test_make_train_passes_overrides_through(tmp_path: Path) -> None:
    """``make train ARGS="loss.temperature=0.1 encoder=timm encoder.name=resnet18"``."""
    readme_args = re.search(r'make train ARGS="([^"]+)"', README).group(1)
    assert readme_args == "loss.temperature=0.1 encoder=timm encoder.name=resnet18"
    proc = make_train(tmp_path, f"ARGS={readme_args} {' '.join(FAST)} hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "pip install" not in proc.stdout
    run = Run(proc, tmp_path / "run")
    cfg = _config(run)
    assert cfg["loss"]["temperature"] == 0.1 and cfg["encoder"]["name"] == "resnet18"
    assert cfg["encoder"]["_target_"].endswith("TimmEncoder")
    assert run.metrics["trainer/global_step"] == 3 and "val/knn_top1" in run.metrics


# --- Recipes --------------------------------------------------------------------------------------------
def test_lars_with_linear_lr_scaling(tmp_path: Path) -> None:
    """``loss.temperature=0.1 optimizer=lars optimizer.lr=0.6 objective.lr_scaling=linear``: the optimiser is
    LARS and its base LR is 0.6 x global batch / objective.base_batch_size."""
    run = train_run(
        tmp_path, "loss.temperature=0.1", "optimizer=lars", "optimizer.lr=0.6", "objective.lr_scaling=linear", *FAST
    )
    cfg = _config(run)
    want = 0.6 * cfg["data"]["batch_size"] / cfg["objective"]["base_batch_size"]
    groups = _last_ckpt(run)["optimizer_states"][0]["param_groups"]
    assert cfg["optimizer"]["_target_"].endswith("Lars") and cfg["loss"]["temperature"] == 0.1
    assert [g["initial_lr"] for g in groups] == pytest.approx([want] * len(groups))


def test_memory_bank_of_4096(tmp_path: Path) -> None:
    """``sampler=memory_bank sampler.size=4096``: a 4096-row queue, saved in the checkpoint, adds its rows
    to the candidates."""
    run = train_run(tmp_path, "sampler=memory_bank", "sampler.size=4096", *FAST)
    state = _last_ckpt(run)["state_dict"]
    queue = next(v for k, v in state.items() if k.endswith("queue"))
    filled = next(v for k, v in state.items() if k.endswith("filled"))
    assert queue.shape[0] == 4096
    assert 0 < int(filled) <= 4096 and queue[: int(filled)].norm(dim=1).gt(0).all()
    assert run.metrics["train/num_candidates"] > 2 * 32  # more keys than the batch's 2N views


def test_triplet_digits_recipe(tmp_path: Path) -> None:
    """``experiment=triplet_digits``: triplet objective, semi-hard mining, P x K batches (k = 16)."""
    run = train_run(tmp_path, "experiment=triplet_digits", *FAST)
    cfg = _config(run)
    assert cfg["objective"]["_target_"].endswith("Triplet") and cfg["sampler"]["strategy"] == "semi_hard"
    assert cfg["data"]["batch_sampler"]["k"] == 16
    m = run.metrics
    assert (
        m["trainer/global_step"] == 3 and m["val/knn_top1"] > 0.5
    )  # chance is 0.1 on digits: a monitor with misaligned labels or features misses this
    assert any(k.startswith("train/mining/") for k in m)


def test_clip_on_a_caption_table_with_timm_and_hf_towers(tmp_path: Path) -> None:
    """The COCO-captions command, with the README's paths replaced by a caption CSV and a BERT folder the test
    writes: ``objective=clip data=image_text_csv augment=clip encoder=timm encoder.name=resnet50
    text_encoder=hf text_encoder.name=<folder>``."""
    import csv

    path = write_image_text_csv(tmp_path / "coco", n_images=48)
    with open(path) as fh:
        captions = [row["caption"] for row in csv.DictReader(fh)]
    bert = write_tiny_bert(tmp_path / "models" / "bert-base-uncased", captions, hidden=32, intermediate=64)
    run = train_run(
        tmp_path, "objective=clip", "data=image_text_csv", f"data.path={path}", "augment=clip", "encoder=timm",
        "encoder.name=resnet50", "text_encoder=hf", f"text_encoder.name={bert}", *FAST, timeout=600,
    )  # fmt: skip
    cfg = _config(run)
    assert cfg["encoder"]["name"] == "resnet50" and cfg["text_encoder"]["_target_"].endswith("HFTextEncoder")
    m = run.metrics
    assert m["trainer/global_step"] >= 2 and 0 < m["train/logit_scale"] <= 100  # 43 training images: 2 batches
    run.assert_metrics_match_checkpoint("val/i2t_recall@5", "val/t2i_recall@5", "val/mean_recall")


def _visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.parametrize(
    ("overrides", "gpus"),
    [(("trainer=ddp", "trainer.devices=8"), 8), (("experiment=simclr_cifar10", "trainer=gpu"), 1)],
    ids=["ddp-8", "cifar10-gpu"],
)
def test_gpu_commands(tmp_path: Path, overrides: tuple[str, ...], gpus: int) -> None:
    """The GPU commands run where the GPUs are; anywhere else they stop at start-up with one sentence that
    names the key (no Lightning traceback). The CIFAR recipe gets tiny CIFAR files in the real format."""
    data: tuple[str, ...] = ()
    if "experiment=simclr_cifar10" in overrides:
        write_cifar10(tmp_path / "cifar", per_batch=8, n_test=16)
        data = (f"data.data_dir={tmp_path / 'cifar'}", "data.verify_md5=false")
    run = train_run(tmp_path, *overrides, *data, *FAST, check=False)
    if _visible_gpus() >= gpus:
        assert run.proc.returncode == 0, run.output[-4000:]
        assert run.metrics["trainer/global_step"] == 3
    else:
        assert run.proc.returncode == 2, run.output[-4000:]
        lines = [line for line in run.proc.stderr.splitlines() if line.strip()]
        assert lines[-1].startswith("error: trainer.") and "set trainer" in lines[-1], run.output[-3000:]
        assert "Traceback" not in run.output


def test_cifar10_recipe_trains_on_the_cpu(tmp_path: Path) -> None:
    """``experiment=simclr_cifar10`` (ResNet-18 CIFAR stem, SGD, T = 0.5) on tiny real-format files, on the CPU
    trainer: the recipe's model, data and optimiser work together end to end."""
    write_cifar10(tmp_path / "cifar", per_batch=8, n_test=16)
    run = train_run(
        tmp_path, "experiment=simclr_cifar10", "trainer=cpu", f"data.data_dir={tmp_path / 'cifar'}",
        "data.verify_md5=false", *FAST,
    )  # fmt: skip
    cfg = _config(run)
    assert cfg["encoder"]["name"] == "resnet18" and cfg["encoder"]["cifar_stem"] is True
    assert cfg["loss"]["temperature"] == 0.5
    assert run.metrics["trainer/global_step"] == 1 and run.metrics["val/knn_top1"] >= 0.5  # class colours; chance 0.1


def test_joblib_sweep(tmp_path: Path) -> None:
    """``-m hydra/launcher=joblib hydra.launcher.n_jobs=2 loss.temperature=0.1,0.5``: two jobs in worker
    processes, one run directory each, both finished."""
    sweep = tmp_path / "sweep"
    _shell(
        "contrastlab-train -m hydra/launcher=joblib hydra.launcher.n_jobs=2 loss.temperature=0.1,0.5 "
        f"{' '.join(FAST)} hydra.sweep.dir={sweep}",
        tmp_path,
        timeout=400,
    )
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(jobs) == 2
    temps = sorted(yaml.safe_load((j / ".hydra" / "config.yaml").read_text())["loss"]["temperature"] for j in jobs)
    assert temps == [0.1, 0.5]
    multirun = yaml.safe_load((sweep / "multirun.yaml").read_text())
    assert multirun["hydra"]["runtime"]["choices"]["hydra/launcher"] == "joblib"
    assert multirun["hydra"]["launcher"]["n_jobs"] == 2
