"""The README's SLURM commands, run on a fake one-machine SLURM cluster (``tests/docs/fake_slurm/``).

``sbatch``, ``srun``, ``sacct`` and ``scancel`` there emulate a cluster whose nodes are all this machine
(see the docstring of ``tests/docs/fake_slurm/fake_slurm.py`` for what is emulated and what differs). They come
first on ``PATH``, after them the venv's ``bin/`` (as after ``source .venv/bin/activate``), and the fake
cluster records what it was asked (``#SBATCH`` options), what it ran (each ``srun`` step's tasks and exit
codes) and how each job ended (``sacct``).

Substitutions forced by this machine (no GPU, one machine): ``trainer=ddp trainer.devices=4|8
trainer.num_nodes=2`` becomes ``trainer=ddp_cpu trainer.devices=2 trainer.num_nodes=1`` (two gloo processes,
the same DDP code path), and ``debug=fast logger=csv`` are added (seconds instead of hours, no W&B files).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import yaml
from conftest import cli_env

pytestmark = pytest.mark.slow  # two 2-process training runs under the fake scheduler

FAKE_SLURM = Path(__file__).resolve().parent / "fake_slurm"
VENV_BIN = Path(sys.executable).parent
FINAL = ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED")
# what a process launched by someone else (torchrun, a real SLURM job) would leak into ours
LAUNCHER_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


class FakeCluster:
    """The fake cluster of one test: its environment, and readers for what it recorded."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "slurm"
        env = cli_env(tmp_path)
        env = {k: v for k, v in env.items() if not k.startswith("SLURM") and k not in LAUNCHER_VARS}
        env.update(
            PATH=os.pathsep.join([str(FAKE_SLURM), str(VENV_BIN), env.get("PATH", "")]),
            FAKE_SLURM_DIR=str(self.root),
            FAKE_SLURM_PYTHON=sys.executable,
            OMP_NUM_THREADS="1",  # 2 ranks (x 2 jobs) of a tiny model on a few cores
        )
        self.env = env

    def run(self, *command: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
        exe = shutil.which(command[0], path=self.env["PATH"])
        assert exe, f"{command[0]} not found on {self.env['PATH']}"
        return subprocess.run(
            [exe, *command[1:]], env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout
        )

    def sacct(self) -> dict[str, tuple[str, str]]:
        """``{job id or <array id>_<index>: (State, ExitCode)}`` as ``sacct`` prints them."""
        proc = self.run("sacct", "-o", "JobID,State,ExitCode", "--parsable2", cwd=self.root)
        assert proc.returncode == 0, proc.stderr
        header, *rows = proc.stdout.splitlines()
        assert header == "JobID|State|ExitCode"
        return {job: (state, code) for job, state, code in (row.split("|") for row in rows)}

    def wait_until_ended(self, timeout: float = 120) -> dict[str, tuple[str, str]]:
        """The jobs' final states (a submitit sweep returns once the results are pickled, which is before
        its SLURM jobs have ended)."""
        deadline = time.time() + timeout
        while True:
            states = self.sacct()
            if all(state in FINAL for state, _ in states.values()) or time.time() > deadline:
                return states
            time.sleep(0.5)

    def submissions(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "jobs").glob("*.json"))]

    def steps(self) -> list[dict]:
        path = self.root / "steps.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def cancel_all(self) -> None:
        """Ends any job still running (a failed test must not leave training processes behind)."""
        if not (self.root / "jobs").is_dir():
            return
        running = [job for job, (state, _) in self.sacct().items() if state not in FINAL]
        if running:
            self.run("scancel", *running, cwd=self.root)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FakeCluster]:
    fake = FakeCluster(tmp_path)
    yield fake
    fake.cancel_all()


def logs_of(run_dir: Path) -> str:
    """The run directory's Hydra log files (``train.log``, and any per-rank log), concatenated."""
    return "".join(p.read_text() for p in sorted(run_dir.glob("*.log")))


def rank_lines(text: str) -> set[str]:
    return set(re.findall(r"Initializing distributed: GLOBAL_RANK: \d+, MEMBER: \d+/\d+", text))


def test_fake_srun_gives_lightning_its_ranks_and_sacct_reports_failures(cluster: FakeCluster, tmp_path: Path) -> None:
    """The fake cluster itself: ``srun`` spreads tasks over (fake) nodes as Lightning's SLURMEnvironment
    reads them, and a failing task fails its step, ends its peers and marks the job FAILED in ``sacct``."""
    dump_env = "import json, os; print(json.dumps(dict(os.environ)))"
    script = tmp_path / "probe.sh"
    script.write_text(
        "#!/bin/bash\n#SBATCH --nodes=2 --ntasks-per-node=1 --job-name=probe\n"
        f"srun --output=env_%t.json {sys.executable} -c '{dump_env}'\n"
        # rank 1 fails at once; rank 0 would sleep for a minute unless srun ends it
        "srun sh -c 'if [ $SLURM_PROCID = 1 ]; then exit 3; fi; exec sleep 60'\n"
    )
    proc = cluster.run("sbatch", "--wait", str(script), cwd=tmp_path, timeout=300)
    job = re.fullmatch(r"Submitted batch job (\d+)\n", proc.stdout).group(1)  # what submitit parses
    # the batch script's exit status is its last srun's: the tasks' highest, 128 + 15 for rank 0's SIGTERM
    assert proc.returncode == 143, proc.stderr
    assert cluster.sacct() == {job: ("FAILED", "143:0")}
    probe_step, failing_step = cluster.steps()
    assert [(t["procid"], t["localid"], t["nodeid"], t["exit_code"]) for t in probe_step["tasks"]] == [
        (0, 0, 0, 0),
        (1, 0, 1, 0),
    ]
    assert [t["exit_code"] for t in failing_step["tasks"]] == [143, 3]
    assert "srun: error" in (tmp_path / f"slurm-{job}.out").read_text()

    from lightning.fabric.plugins.environments import SLURMEnvironment

    for rank in (0, 1):
        task_env = json.loads((tmp_path / f"env_{rank}.json").read_text())
        with mock.patch.dict(os.environ, task_env, clear=True):
            assert SLURMEnvironment.detect()
            env = SLURMEnvironment()
            env.validate_settings(num_devices=1, num_nodes=2)  # raises on a mismatch with the allocation
            got = (env.global_rank(), env.local_rank(), env.node_rank(), env.world_size())
            assert got == (rank, 0, rank, 2)
            assert env.main_address == "127.0.0.1"  # the first node of 127.0.0.[1-2]
            assert env.main_port == int(job[-4:]) + 15000  # Lightning's port for the job id
        assert task_env["SLURM_JOB_NAME"] == "probe" and task_env["SLURMD_NODENAME"] == f"127.0.0.{rank + 1}"


def test_readme_slurm_sweep(cluster: FakeCluster, tmp_path: Path) -> None:
    """README::

        contrastlab-train -m hydra/launcher=submitit_slurm trainer=ddp trainer.devices=4 trainer.num_nodes=2 \\
            hydra.launcher.partition=gpu hydra.launcher.timeout_min=1440 loss.temperature=0.1,0.2

    run as ``contrastlab-train -m hydra/launcher=submitit_slurm trainer=ddp_cpu trainer.devices=2
    trainer.num_nodes=1 hydra.launcher.partition=gpu hydra.launcher.timeout_min=1440 loss.temperature=0.1,0.2
    debug=fast logger=csv`` (no GPUs, one machine). The allocation still asks for ``--gpus-per-node=2``
    (gpus_per_node follows trainer.devices); the fake cluster records that and has none to give, which
    gloo on CPU does not need. Hydra's submitit launcher submits one SLURM array (one element per sweep
    job), each element an ``srun`` of 2 tasks; both ranks of a job write into that job's directory.
    """
    proc = cluster.run(
        "contrastlab-train",
        "-m",
        "hydra/launcher=submitit_slurm",
        "trainer=ddp_cpu",
        "trainer.devices=2",
        "trainer.num_nodes=1",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=1440",
        "loss.temperature=0.1,0.2",
        "debug=fast",
        "logger=csv",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    assert "2 jobs: 0 failed" in proc.stdout + proc.stderr  # the sweep's closing table

    # one sbatch submission: an array of the two sweep jobs, asking for what the trainer will use
    (submission,) = cluster.submissions()
    asked = submission["header"]
    assert (asked["nodes"], asked["ntasks-per-node"], asked["gpus-per-node"]) == ("1", "2", "2")
    assert (asked["partition"], asked["time"], asked["array"]) == ("gpu", "1440", "0-1%2")
    array_id = str(submission["job_id"])
    elements = [f"{array_id}_0", f"{array_id}_1"]
    assert cluster.wait_until_ended() == dict.fromkeys(elements, ("COMPLETED", "0:0"))

    # each array element ran one srun step of 2 tasks (ranks 0 and 1 on node 0), both exiting 0
    steps = cluster.steps()
    assert sorted(s["job_id"] for s in steps) == sorted(str(e["job_id"]) for e in submission["elements"])
    for step in steps:
        assert [(t["procid"], t["localid"], t["nodeid"], t["exit_code"]) for t in step["tasks"]] == [
            (0, 0, 0, 0),
            (1, 1, 0, 0),
        ]
        assert step["argv"][-3:-1] == ["-m", "submitit.core._submit"]

    # the sweep: one directory per job and nothing else (no runs/, no per-rank directories)
    (sweep,) = (tmp_path / "outputs" / "simclr" / "multiruns").iterdir()
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["simclr"]
    assert [p.name for p in (tmp_path / "outputs" / "simclr").iterdir()] == ["multiruns"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0", "1"]
    assert sorted(p.relative_to(sweep).as_posix() for p in sweep.rglob("metrics.json")) == [
        "0/metrics.json",
        "1/metrics.json",
    ]
    for num, temperature in ((0, 0.1), (1, 0.2)):
        job_dir = sweep / str(num)
        element = elements[num]
        hydra_cfg = yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert hydra_cfg["job"]["id"] == element  # Hydra's job id is the SLURM array element
        assert yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text())["loss"]["temperature"] == temperature
        metrics = json.loads((job_dir / "metrics.json").read_text())
        assert metrics["trainer/global_step"] == 3
        # 2 ranks x 32 samples x 2 views gathered across ranks; one process would see 64
        assert metrics["train/num_candidates"] == 128
        assert not list(job_dir.glob("train_ddp_process_*.log"))  # Lightning did not start ranks itself
        assert "[rank: 1] Seed set to 42" in logs_of(job_dir)  # rank 1's Hydra run directory is the job's
        # submitit's per-task logs: both ranks joined one 2-process group, under Lightning's SLURMEnvironment
        logs = sweep / ".submitit" / element
        for rank in (0, 1):
            text = "".join((logs / f"{element}_{rank}_log.{ext}").read_text() for ext in ("out", "err"))
            assert rank_lines(text) == {f"Initializing distributed: GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2"}
            assert "SLURM auto-requeueing enabled" in text


def test_readme_sbatch_srun(cluster: FakeCluster, tmp_path: Path) -> None:
    """README (inside an ``#SBATCH --nodes=2 --ntasks-per-node=8 --gpus-per-node=8`` job)::

        srun .venv/bin/contrastlab-train trainer=ddp trainer.devices=8 trainer.num_nodes=2 \\
            hydra.run.dir=outputs/simclr/runs/slurm-$SLURM_JOB_ID

    run as the batch script below, submitted with ``sbatch --wait`` from a directory whose ``.venv`` links
    to this venv: ``#SBATCH --nodes=1 --ntasks-per-node=2`` (one machine, no GPUs, so no
    ``--gpus-per-node``) and ``trainer=ddp_cpu trainer.devices=2 trainer.num_nodes=1`` plus
    ``debug=fast logger=csv``. ``$SLURM_JOB_ID`` is expanded by the batch shell, as on a cluster.
    """
    venv = VENV_BIN.parent
    assert (venv / "bin" / "contrastlab-train").exists(), f"no contrastlab-train console script in {venv}"
    (tmp_path / ".venv").symlink_to(venv, target_is_directory=True)
    script = tmp_path / "train.sbatch"
    script.write_text(
        "#!/bin/bash\n"
        "#SBATCH --nodes=1 --ntasks-per-node=2\n"
        "srun .venv/bin/contrastlab-train trainer=ddp_cpu trainer.devices=2 trainer.num_nodes=1 \\\n"
        "    hydra.run.dir=outputs/simclr/runs/slurm-$SLURM_JOB_ID debug=fast logger=csv\n"
    )
    proc = cluster.run("sbatch", "--wait", script.name, cwd=tmp_path)
    job = re.fullmatch(r"Submitted batch job (\d+)\n", proc.stdout).group(1)
    job_out = (tmp_path / f"slurm-{job}.out").read_text()  # the batch script's output: both ranks'
    assert proc.returncode == 0, f"{proc.stderr}\n{job_out[-6000:]}"
    assert cluster.sacct() == {job: ("COMPLETED", "0:0")}

    (step,) = cluster.steps()
    assert step["argv"][0] == ".venv/bin/contrastlab-train"
    assert f"hydra.run.dir=outputs/simclr/runs/slurm-{job}" in step["argv"]
    assert [(t["procid"], t["localid"], t["nodeid"], t["exit_code"]) for t in step["tasks"]] == [
        (0, 0, 0, 0),
        (1, 1, 0, 0),
    ]

    # ONE run directory, named after the job, for both ranks
    assert [p.name for p in (tmp_path / "outputs" / "simclr" / "runs").iterdir()] == [f"slurm-{job}"]
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["simclr"]
    run_dir = tmp_path / "outputs" / "simclr" / "runs" / f"slurm-{job}"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["trainer/global_step"] == 3
    assert metrics["train/num_candidates"] == 128  # 2 ranks x 32 x 2 views (one process: 64)
    assert not list(run_dir.glob("train_ddp_process_*.log"))  # srun started the ranks, not Lightning
    assert "[rank: 1] Seed set to 42" in logs_of(run_dir)  # rank 1 logged into the same run directory
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    # the two srun tasks joined one 2-process group, with Lightning's SLURMEnvironment (its requeue handler)
    assert rank_lines(job_out) == {
        "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2",
        "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2",
    }
    assert job_out.count("SLURM auto-requeueing enabled") >= 2
