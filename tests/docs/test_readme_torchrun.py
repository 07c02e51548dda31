"""The README's multi-node torchrun command, run for real as two "nodes" on this machine.

README::

    RUN_ID=simclr-$(date +%F)-a
    torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-id=$RUN_ID --rdzv-endpoint=$HOST:29500 \\
        -m contrastlab.cli.train trainer=ddp trainer.devices=8 trainer.num_nodes=2 \\
        hydra.run.dir=outputs/simclr/runs/$RUN_ID

Run here: two ``torchrun`` agents (the venv's), started side by side from the same working directory (the
"shared filesystem"), each exactly as above except for what the machine forces:

* ``--nproc-per-node=1`` and ``trainer.devices=1`` instead of 8 (2 CPU cores, no GPUs; devices x
  num_nodes must equal torchrun's world size, Lightning checks it), ``trainer=ddp_cpu`` instead of
  ``trainer=ddp`` (gloo on CPU instead of NCCL/bf16/SyncBatchNorm on GPUs);
* ``--rdzv-endpoint=127.0.0.1:<a free port>`` instead of ``$HOST:29500`` (both agents are on this host;
  29500 may be taken); ``GLOO_SOCKET_IFNAME=lo`` in the environment (gloo over loopback);
* ``debug=fast logger=csv`` added (3 steps; no W&B), and the test environment of ``conftest.cli_env``
  (``CONTRASTLAB_OUTPUTS``, W&B offline, one thread per process).

Each process also loads a ``sitecustomize`` (via ``PYTHONPATH``) that records its launcher
environment (``RANK``, ``GROUP_RANK`` = node rank, ``WORLD_SIZE``...) and, through a Python audit hook,
every file it opens for writing or renames into place under the working directory: that is how the
test sees which rank wrote which file, not by inference from the files that exist.

The same config launched by Lightning itself (``trainer=ddp_cpu trainer.devices=2``, one command, two
processes) runs alongside; both launches have the same global batch, seed, data sharding (the
``DistributedSampler`` and the data order depend on the global rank only) and so the same results.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_env

from contrastlab.training import launched_ranks

pytestmark = pytest.mark.slow  # two 2-process CLI launches

RUN_ID = f"simclr-{datetime.date.today().isoformat()}-a"  # RUN_ID=simclr-$(date +%F)-a
RUN_DIR = f"outputs/simclr/runs/{RUN_ID}"
TRAIN = ["debug=fast", "logger=csv"]  # what every launch here adds to the README command
BATCH = 32  # debug=fast's data.batch_size (per process)
TIMEOUT_S = 300

# Loaded by every Python process of the torchrun launch (agents and ranks): one JSON line with the
# launcher's environment, then one per file opened for writing / renamed into place under WATCH.
AUDIT_SITECUSTOMIZE = """
import json, os, sys

_dir, _watch = os.environ.get("AUDIT_DIR"), os.environ.get("AUDIT_WATCH")
if _dir and _watch:
    _watch = os.path.realpath(_watch)
    _keys = ("RANK", "GROUP_RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID")
    _log = open(os.path.join(_dir, f"{os.getpid()}.jsonl"), "a", buffering=1)
    _log.write(json.dumps({k: os.environ.get(k) for k in _keys} | {"argv": sys.argv}) + "\\n")
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _record(event, path):
        if isinstance(path, int) or path is None:
            return
        path = os.path.realpath(os.fsdecode(path))
        if path.startswith(_watch + os.sep):
            _log.write(json.dumps({"event": event, "path": os.path.relpath(path, _watch)}) + "\\n")

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS
            ):
                _record(event, path)
        elif event in ("os.rename", "os.replace"):
            _record(event, args[1])

    sys.addaudithook(_hook)
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    """A process in its own process group (so a hung launch can be killed with all its workers)."""
    with log.open("w") as out:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_all(procs: dict[str, subprocess.Popen], logs: dict[str, Path]) -> None:
    """Wait for every process; on a timeout or a failure kill every process group and show the output."""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for proc in procs.values():
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    failed = {name: proc.returncode for name, proc in procs.items() if proc.returncode != 0}
    if failed:
        tails = "\n".join(f"--- {n} (exit {rc})\n{logs[n].read_text()[-4000:]}" for n, rc in failed.items())
        raise AssertionError(f"launches failed or timed out after {TIMEOUT_S} s: {failed}\n{tails}")


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two torchrun "nodes" in ``shared/`` and Lightning's own 2-process launch in ``lightning/``, at once."""
    shared = tmp_path_factory.mktemp("shared")  # the nodes' common working directory
    aux = tmp_path_factory.mktemp("aux")  # logs, audit records, and the Lightning-launched comparison run
    (aux / "site").mkdir()
    (aux / "site" / "sitecustomize.py").write_text(AUDIT_SITECUSTOMIZE)
    (aux / "audit").mkdir()
    env = {
        **cli_env(shared),
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(aux / "site"), os.environ.get("PYTHONPATH")])),
        "AUDIT_DIR": str(aux / "audit"),
        "AUDIT_WATCH": str(shared),
    }
    torchrun = str(Path(sys.executable).parent / "torchrun")
    port = _free_port()
    node_cmd = [
        torchrun,
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-id={RUN_ID}",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "-m",
        "contrastlab.cli.train",
        "trainer=ddp_cpu",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        f"hydra.run.dir={RUN_DIR}",
        *TRAIN,
    ]
    lightning_cmd = [
        sys.executable,
        "-m",
        "contrastlab.cli.train",
        "trainer=ddp_cpu",
        "trainer.devices=2",
        f"hydra.run.dir={aux / 'lightning'}",
        *TRAIN,
    ]
    logs = {name: aux / f"{name}.log" for name in ("node_a", "node_b", "lightning")}
    procs = {
        "node_a": _start(node_cmd, env, shared, logs["node_a"]),
        "node_b": _start(node_cmd, env, shared, logs["node_b"]),
        "lightning": _start(
            lightning_cmd,
            {**cli_env(aux), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"},
            aux,
            logs["lightning"],
        ),
    }
    _wait_all(procs, logs)
    return {"shared": shared, "aux": aux, "run_dir": shared / RUN_DIR, **logs}


def _audit(launch: dict[str, Path]) -> list[dict]:
    """One entry per process of the torchrun launch: its environment and the files it wrote."""
    procs = []
    for record in sorted((launch["aux"] / "audit").glob("*.jsonl")):
        head, *events = (json.loads(line) for line in record.read_text().splitlines())
        procs.append({**head, "wrote": {e["path"] for e in events}})
    return procs


def _workers(launch: dict[str, Path]) -> dict[int, dict]:
    """The training processes (torchrun sets RANK for them, not for the agents), by global rank."""
    workers = [p for p in _audit(launch) if p["RANK"] is not None]
    assert len(workers) == 2, workers
    return {int(p["RANK"]): p for p in workers}


def test_two_nodes_join_one_world_of_two_ranks(launch: dict[str, Path]) -> None:
    workers = _workers(launch)
    assert sorted(workers) == [0, 1]
    for rank, w in workers.items():
        # one process per node: the global rank is the node rank; torchrun's run id is the README's RUN_ID
        assert (w["GROUP_RANK"], w["LOCAL_RANK"], w["WORLD_SIZE"], w["LOCAL_WORLD_SIZE"]) == (
            str(rank),
            "0",
            "2",
            "1",
        )
        assert w["TORCHELASTIC_RUN_ID"] == RUN_ID
    # Lightning joined the torchrun world (TorchElasticEnvironment) as two members, one on each node
    seen = {}
    for node in ("node_a", "node_b"):
        text = launch[node].read_text()
        ranks = {r for r in (0, 1) if f"Initializing distributed: GLOBAL_RANK: {r}, MEMBER: {r + 1}/2" in text}
        assert len(ranks) == 1, f"{node} should hold exactly one rank of 2: {ranks}\n{text[-3000:]}"
        seen[node] = ranks.pop()
    assert sorted(seen.values()) == [0, 1]


def test_one_run_directory_with_the_metrics_of_a_global_batch_of_two_ranks(launch: dict[str, Path]) -> None:
    shared, run_dir = launch["shared"], launch["run_dir"]
    # the only thing the two nodes made in their shared working directory is the one run directory
    dirs = {p.relative_to(shared).as_posix() for p in shared.rglob("*") if p.is_dir()}
    assert dirs == {"outputs", "outputs/simclr", "outputs/simclr/runs", RUN_DIR} | {
        f"{RUN_DIR}/{sub}" for sub in (".hydra", "checkpoints", "csv")
    }
    assert {p.name for p in run_dir.iterdir()} == {
        ".hydra",
        "checkpoints",
        "csv",
        "history.jsonl",
        "metrics.json",
        "run_key",
        "train.log",
        "train_rank1.log",
    }
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["trainer/global_step"] == 3 and metrics["trainer/epoch"] == 1
    # SimCLR over the gathered global batch: 2 views x 32 images x 2 ranks candidates (1 process: 64)
    assert metrics["train/num_candidates"] == 2 * BATCH * 2
    assert metrics["val/knn_top1"] > 0.5 and torch.isfinite(torch.tensor(metrics["train/loss"]))  # digits: chance 0.1


def test_only_rank_0_writes_logs_configs_and_checkpoints(launch: dict[str, Path]) -> None:
    run = os.path.relpath(launch["run_dir"], launch["shared"])
    workers = _workers(launch)
    rank0 = {os.path.relpath(p, run) for p in workers[0]["wrote"]}
    assert {
        "metrics.json",
        "run_key",
        "train.log",
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "csv/metrics.csv",
        "history.jsonl",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
    } <= rank0, rank0
    # rank 1 wrote its own Hydra log and nothing else: no .hydra/, train.log, csv, checkpoint or metrics
    assert {os.path.relpath(p, run) for p in workers[1]["wrote"]} == {"train_rank1.log"}
    agents = [p for p in _audit(launch) if p["RANK"] is None]
    assert len(agents) == 2 and all(not a["wrote"] for a in agents)  # the torchrun agents wrote nothing
    # and the logs say the same: each rank's lines in its own file, one CSV row per optimizer step
    run_dir = launch["run_dir"]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in (run_dir / "train.log").read_text()
    assert "GLOBAL_RANK: 1" not in (run_dir / "train.log").read_text()
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in (run_dir / "train_rank1.log").read_text()
    rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    loss_col = rows[0].split(",").index("train/loss")
    assert sum(1 for row in rows[1:] if row.split(",")[loss_col]) == 3


def test_same_result_as_the_lightning_launched_two_process_run(launch: dict[str, Path]) -> None:
    """Same global batch (2 x 32), seed and per-global-rank data: the same final metrics and weights."""
    mine = json.loads((launch["run_dir"] / "metrics.json").read_text())
    lightning_dir = launch["aux"] / "lightning"
    ref = json.loads((lightning_dir / "metrics.json").read_text())
    assert mine.keys() == ref.keys()
    for key in sorted(ref.keys() - {"time/wall_s"}):
        assert mine[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key
    assert "train_ddp_process_1.log" in {p.name for p in lightning_dir.iterdir()}  # it really was 2 processes
    a = torch.load(launch["run_dir"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(lightning_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys() and a["global_step"] == b["global_step"] == 3
    for name, value in b["state_dict"].items():
        torch.testing.assert_close(a["state_dict"][name], value, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------ which processes count as launched ranks


@pytest.mark.parametrize(
    ("env", "rank"),
    [
        ({}, 0),  # a plain run
        ({"TORCHELASTIC_RUN_ID": "r", "RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1"}, 3),  # torchrun
        ({"TORCHELASTIC_RUN_ID": "r", "RANK": "0"}, 0),
        ({"SLURM_NTASKS": "16", "SLURM_PROCID": "9"}, 9),  # srun, 16 tasks
        ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, 0),  # a one-task job step
        (
            {"LOCAL_RANK": "1", "WORLD_SIZE": "2", "NODE_RANK": "0"},
            0,
        ),  # Lightning's own child: named by Lightning
    ],
)
def test_launcher_rank(env: dict[str, str], rank: int) -> None:
    assert launched_ranks.launcher_rank(env) == rank


def test_rank_overrides_leave_rank_0_alone_and_keep_the_users_keys() -> None:
    torchrun_rank = {"TORCHELASTIC_RUN_ID": "r", "RANK": "2"}
    assert launched_ranks.hydra_rank_overrides(["trainer=ddp"], {"TORCHELASTIC_RUN_ID": "r", "RANK": "0"}) == []
    assert launched_ranks.hydra_rank_overrides(["trainer=ddp"], torchrun_rank) == [
        "hydra.job.name=train_rank2",
        "hydra.output_subdir=null",
    ]
    assert launched_ranks.hydra_rank_overrides(["hydra.job.name=mine"], torchrun_rank) == ["hydra.output_subdir=null"]
