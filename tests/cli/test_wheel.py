"""The built wheel works anywhere: installed (not editable) in a fresh virtual environment, its console script
trains from an empty directory with the configs shipped inside the package, writes its outputs under that
directory, and takes a user's own config folder (``--config-dir``) beside the installed groups.

The fresh environment reuses the test environment's third-party packages through a path file, so nothing is
downloaded: a path listed in a ``.pth`` file is added to ``sys.path`` but its own ``.pth`` files are not run, so
the editable install of the test environment stays invisible and only the wheel provides ``contrastlab``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import ROOT, cli_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the project's wheel installed; returns its ``bin/`` folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    # build from a copy of the sources: setuptools' build/ folder would otherwise land in (and go stale in) the repo
    skip = shutil.ignore_patterns(".git", ".venv", "build", "outputs", "*.egg-info", "__pycache__", ".*_cache")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=skip)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
         str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("contrastlab-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(subprocess.check_output([venv / "bin/python", "-c", where], text=True).strip())
    (purelib / "test_env_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [venv / "bin/python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    return venv / "bin"


def wheel_cmd(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in cli_env(cwd).items() if k not in ("PYTHONPATH", "CONTRASTLAB_OUTPUTS")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(bin_dir / "contrastlab-train"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_wheel_ships_its_configs_and_imports_from_site_packages(wheel_env: Path, tmp_path: Path) -> None:
    code = "import contrastlab, contrastlab.config as c; print(contrastlab.__file__); print(c.CONF_DIR)"
    out = subprocess.check_output([wheel_env / "python", "-c", code], cwd=tmp_path, text=True).split("\n")
    package_file, conf_dir = Path(out[0]), Path(out[1])
    assert ROOT not in package_file.parents, f"the wheel's python imported the source tree: {package_file}"
    assert "site-packages" in package_file.parts
    assert conf_dir == package_file.parent / "conf"
    groups = {p.name for p in conf_dir.iterdir() if p.is_dir()}
    assert {p.name for p in (ROOT / "conf").iterdir() if p.is_dir()} <= groups  # every group shipped
    assert len(list(conf_dir.rglob("*.yaml"))) == len(list((ROOT / "conf").rglob("*.yaml")))


def test_installed_train_runs_from_an_empty_directory(wheel_env: Path, tmp_path: Path) -> None:
    work = tmp_path / "empty"
    work.mkdir()
    proc = wheel_cmd(wheel_env, work, "debug=fast", "logger=csv", "print_config=false")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (work / "outputs" / "simclr" / "runs").iterdir()
    assert (run_dir / "metrics.json").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()


def test_a_user_config_folder_extends_the_installed_groups(wheel_env: Path, tmp_path: Path) -> None:
    """``--config-dir`` adds the user's own ``experiment/`` file; the installed groups stay available."""
    work = tmp_path / "empty"
    (work / "my_conf" / "experiment").mkdir(parents=True)
    (work / "my_conf" / "experiment" / "tiny_temp.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /optimizer: sgd\nloss:\n  temperature: 0.33\n"
    )
    proc = wheel_cmd(wheel_env, work, "--config-dir", "my_conf", "experiment=tiny_temp", "--cfg", "job")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "temperature: 0.33" in proc.stdout and "torch.optim.SGD" in proc.stdout
    assert "_target_: contrastlab.objectives.SimCLR" in proc.stdout  # the installed groups compose too
