"""A one-machine SLURM for tests: ``sbatch``, ``srun``, ``sacct`` and ``scancel`` (the shell shims next to this
file call ``fake_slurm.py <command> ARGS``), with what a real allocation puts in the environment.

State lives under ``$FAKE_SLURM_DIR`` (required), so a test can read what was asked and what ran:

* ``jobs/<id>.json``: one record per ``sbatch``: the ``#SBATCH`` header and command-line options (long names,
  raw values, e.g. ``{"nodes": "1", "time": "1440"}``), the submit directory and the array elements;
* ``jobs/<id>.sh``: the script as submitted (sbatch copies it, as SLURM does);
* ``state/<element>.json``: ``PENDING`` -> ``RUNNING`` -> ``COMPLETED`` | ``FAILED`` | ``TIMEOUT`` |
  ``CANCELLED`` with the batch script's exit code; an element is ``<id>`` or ``<id>_<array index>``;
* ``steps.jsonl``: one line per finished ``srun`` step: job id, step, node count, and per task its
  ``SLURM_PROCID``/``SLURM_LOCALID``/``SLURM_NODEID``, pid and exit code.

The emulation (what differs from a real cluster):

* every node is this machine; node ``k`` is named ``127.0.0.<k+1>`` (all of 127/8 is loopback), so a job's
  node list is ``127.0.0.1`` or ``127.0.0.[1-N]``; GPUs, memory and CPUs are recorded, not enforced;
* each array element gets its own job id (``SLURM_JOB_ID``) as on SLURM, and ids are chosen so that the port
  Lightning derives from them (``15000 + last four digits``) is free on this machine;
* a job starts once the directory of its ``--output`` file exists (a real queue's delay gives submitit the
  time to create it; SLURM itself would fail the job), after a scheduling delay of ``$FAKE_SLURM_SCHED_DELAY``
  seconds (default 0.2);
* ``srun`` ends the other tasks of a step when one fails (like ``KillOnBadExit=1``), so a crashed rank
  does not leave its peers waiting in a collective; its exit status is the tasks' highest (128 + signal for
  a task ended by a signal), as SLURM's;
* ``--time`` is enforced (SIGTERM, 5 s, SIGKILL, state ``TIMEOUT``); ``--signal`` is recorded, not sent.

Only the standard library is used: the shims run under ``$FAKE_SLURM_PYTHON`` (or ``python3``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

FINAL_STATES = ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED")
SHORT = {
    "-J": "job-name", "-p": "partition", "-t": "time", "-N": "nodes", "-n": "ntasks", "-c": "cpus-per-task",
    "-o": "output", "-e": "error", "-a": "array", "-A": "account", "-q": "qos", "-C": "constraint",
    "-x": "exclude", "-w": "nodelist", "-D": "chdir", "-d": "dependency", "-G": "gpus", "-l": "label",
    "-u": "unbuffered", "-K": "kill-on-bad-exit", "-W": "wait", "-H": "hold",
}  # fmt: skip
# options that take no value (everything else takes one, as ``--key=value`` or ``--key value``)
FLAGS = {
    "exclusive", "requeue", "no-requeue", "parsable", "wait", "hold", "unbuffered", "label",
    "kill-on-bad-exit", "overlap", "quiet", "verbose",
}  # fmt: skip
UNSUPPORTED = {"dependency", "hold", "wrap", "label"}
KILL_WAIT_S = 5.0


class FakeSlurmError(Exception):
    """Bad input to a shim: printed as ``<command>: error: <message>`` with exit status 1."""


# ---------------------------------------------------------------- state directory


def state_dir() -> Path:
    root = os.environ.get("FAKE_SLURM_DIR")
    if not root:
        raise FakeSlurmError("FAKE_SLURM_DIR is not set; export it to the fake cluster's state directory")
    path = Path(root)
    for sub in ("jobs", "state", "steps"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    with open(root / "lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def set_state(root: Path, element: str, **fields: object) -> None:
    path = root / "state" / f"{element}.json"
    with locked(root):
        current = read_json(path) if path.exists() else {}
        current.update(fields)
        write_json(path, current)


def lightning_port(job_id: int) -> int:
    """The port Lightning's SLURMEnvironment derives from a job id (without MASTER_PORT)."""
    return int(str(job_id)[-4:]) + 15000


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def allocate_ids(root: Path, count: int) -> list[int]:
    """``count`` new job ids whose Lightning ports are free here (a random start keeps concurrent fake
    clusters of parallel tests apart)."""
    with locked(root):
        counter = root / "next_id"
        next_id = int(counter.read_text()) if counter.exists() else random.randint(1000, 9999) * 10
        ids: list[int] = []
        while len(ids) < count:
            if port_is_free(lightning_port(next_id)):
                ids.append(next_id)
            next_id += 1
        counter.write_text(str(next_id))
    return ids


def next_step(root: Path, job_id: str) -> int:
    with locked(root):
        path = root / "steps" / f"{job_id}.count"
        step = int(path.read_text()) if path.exists() else 0
        path.write_text(str(step + 1))
    return step


# ---------------------------------------------------------------- option parsing


def parse_options(args: Sequence[str], stop_at_positional: bool = True) -> tuple[dict, list]:
    """``--key=value``, ``--key value``, ``-k value``, ``-kvalue`` and flags -> ({long key: value}, rest)."""
    options: dict[str, str | bool] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return options, list(args[i + 1 :])
        if not arg.startswith("-") or arg == "-":
            if stop_at_positional:
                return options, list(args[i:])
            raise FakeSlurmError(f"unexpected argument {arg!r}")
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if eq:
                options[key] = value
            elif key in FLAGS:
                options[key] = True
            elif i + 1 < len(args):
                options[key] = args[i + 1]
                i += 1
            else:
                raise FakeSlurmError(f"option --{key} needs a value")
        else:
            key = SHORT.get(arg[:2])
            if key is None:
                raise FakeSlurmError(f"unknown option {arg[:2]!r} (the fake cluster knows {' '.join(SHORT)})")
            if key in FLAGS:
                options[key] = True
            elif len(arg) > 2:
                options[key] = arg[2:]
            elif i + 1 < len(args):
                options[key] = args[i + 1]
                i += 1
            else:
                raise FakeSlurmError(f"option {arg} needs a value")
        i += 1
    return options, []


def sbatch_header(script: str) -> list[str]:
    """The ``#SBATCH`` options of a script: lines after the shebang, up to the first command."""
    tokens: list[str] = []
    for line in script.splitlines()[1:]:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        if stripped.startswith("#SBATCH"):
            tokens += shlex.split(stripped[len("#SBATCH") :], comments=True)
    return tokens


def time_limit_min(value: str | None) -> float | None:
    """SLURM time formats: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``; ``None``/unlimited."""
    if value is None or value in ("UNLIMITED", "infinite", "-1"):
        return None
    days, _, rest = value.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:
        hours, (minutes, seconds) = 0, parts
    else:
        hours, minutes, seconds = parts
    return int(days or 0) * 1440 + hours * 60 + minutes + seconds / 60


def array_indices(spec: str) -> tuple[list[int], int | None]:
    """``0-3``, ``0,2,5``, ``0-9:3``, each optionally ``%limit`` -> (indices, limit)."""
    body, _, limit = spec.partition("%")
    indices: list[int] = []
    for part in body.split(","):
        rng, _, step = part.partition(":")
        low, _, high = rng.partition("-")
        indices += list(range(int(low), int(high or low) + 1, int(step or 1)))
    return indices, int(limit) if limit else None


def node_count(options: dict) -> int:
    return int(str(options.get("nodes", 1)).split("-")[0])


def node_list(nodes: int) -> str:
    return "127.0.0.1" if nodes == 1 else f"127.0.0.[1-{nodes}]"


def tasks_per_node_text(ntasks: int, nodes: int) -> str:
    """SLURM's compressed per-node task counts, e.g. ``2(x2)`` or ``2,1``."""
    counts = [len(range(n, ntasks, nodes)) for n in range(nodes)] if ntasks % nodes else [ntasks // nodes] * nodes
    groups: list[str] = []
    for count in counts:
        if groups and groups[-1].split("(")[0] == str(count):
            reps = int(groups[-1].split("(x")[1][:-1]) + 1 if "(x" in groups[-1] else 2
            groups[-1] = f"{count}(x{reps})"
        else:
            groups.append(str(count))
    return ",".join(groups)


def expand_pattern(pattern: str, env: dict, task: int | None = None, node: int | None = None) -> str:
    """SLURM file-name patterns: %A %a %j %J %s %t %n %N %x %u %%."""
    job_id = env.get("SLURM_JOB_ID", "")
    values = {
        "A": env.get("SLURM_ARRAY_JOB_ID", job_id),
        "a": env.get("SLURM_ARRAY_TASK_ID", "4294967294"),
        "j": job_id,
        "J": f"{job_id}.{env['SLURM_STEP_ID']}" if "SLURM_STEP_ID" in env else job_id,
        "s": env.get("SLURM_STEP_ID", "batch"),
        "t": str(task or 0),
        "n": str(node or 0),
        "N": env.get("SLURMD_NODENAME", "127.0.0.1"),
        "x": env.get("SLURM_JOB_NAME", ""),
        "u": env.get("USER", "user"),
        "%": "%",
    }
    return re.sub(r"%(\d*)([AajJstnNxu%])", lambda m: values[m.group(2)].zfill(int(m.group(1) or 0)), pattern)


# ---------------------------------------------------------------- sbatch


def sbatch(args: Sequence[str]) -> int:
    root = state_dir()
    cli_options, rest = parse_options(args)
    if not rest:
        raise FakeSlurmError("give the batch script to submit (sbatch [options] script [args])")
    script_path, script_args = Path(rest[0]), rest[1:]
    script = script_path.read_text()
    if not script.startswith("#!"):
        raise FakeSlurmError(
            "This does not look like a batch script. The first line must start with #! followed by the path"
            " to an interpreter."
        )
    header_options, _ = parse_options(sbatch_header(script), stop_at_positional=False)
    options = {**header_options, **cli_options}  # the command line wins over the header
    unsupported = sorted(UNSUPPORTED & set(options))
    if unsupported:
        raise FakeSlurmError(f"the fake cluster does not emulate --{', --'.join(unsupported)}")
    indices, limit = array_indices(str(options["array"])) if "array" in options else ([], None)
    ids = allocate_ids(root, max(1, len(indices)))
    master = ids[0]
    if indices:
        elements = [
            {"key": f"{master}_{index}", "job_id": job_id, "array_task_id": index}
            for index, job_id in zip(indices, ids, strict=True)
        ]
    else:
        elements = [{"key": str(master), "job_id": master, "array_task_id": None}]
    submit_dir = os.getcwd()
    record = {
        "job_id": master,
        "options": options,
        "header": header_options,
        "argv": ["sbatch", *args],
        "script_path": str(script_path.resolve()),
        "script_args": script_args,
        "submit_dir": submit_dir,
        "elements": elements,
        "array_indices": indices,
        "array_limit": limit,
        "submitted_at": time.time(),
    }
    (root / "jobs" / f"{master}.sh").write_text(script)
    (root / "jobs" / f"{master}.sh").chmod(0o755)
    for element in elements:
        set_state(root, str(element["key"]), state="PENDING", exit_code=None, job_id=element["job_id"])
    write_json(root / "jobs" / f"{master}.json", record)
    runner = subprocess.Popen(
        [sys.executable, __file__, "_run", str(master)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # submitit reads sbatch's stdout to its end: the job must not hold it
        stderr=open(root / "jobs" / f"{master}.runner.log", "a"),  # noqa: SIM115 - handed to the child
        start_new_session=True,
        env=dict(os.environ),  # --export=ALL: the job sees the submitter's environment
    )
    record["runner_pid"] = runner.pid
    write_json(root / "jobs" / f"{master}.json", record)
    print(master if options.get("parsable") else f"Submitted batch job {master}", flush=True)
    if not options.get("wait"):
        return 0
    keys = [str(e["key"]) for e in elements]
    while True:
        states = [read_json(root / "state" / f"{k}.json") for k in keys]
        if all(s["state"] in FINAL_STATES for s in states):
            failed = [int(s["exit_code"] or 1) for s in states if s["state"] != "COMPLETED"]
            return failed[0] if failed else 0
        time.sleep(0.2)


def batch_env(record: dict, element: dict) -> dict[str, str]:
    """The environment SLURM gives a batch script (with ``--export=ALL``)."""
    options = record["options"]
    nodes = node_count(options)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    env.update(
        SLURM_JOB_ID=str(element["job_id"]),
        SLURM_JOBID=str(element["job_id"]),
        SLURM_JOB_NAME=str(options.get("job-name", Path(record["script_path"]).name)),
        SLURM_JOB_NUM_NODES=str(nodes),
        SLURM_NNODES=str(nodes),
        SLURM_JOB_NODELIST=node_list(nodes),
        SLURM_NODELIST=node_list(nodes),
        SLURM_NODEID="0",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURMD_NODENAME="127.0.0.1",
        SLURM_SUBMIT_DIR=record["submit_dir"],
        SLURM_SUBMIT_HOST="127.0.0.1",
        SLURM_CLUSTER_NAME="fake",
        SLURM_JOB_PARTITION=str(options.get("partition", "fake")),
        SLURM_JOB_CPUS_PER_NODE=str(options.get("cpus-per-task", 1)),
    )
    if element["array_task_id"] is not None:
        indices = record["array_indices"]
        env.update(
            SLURM_ARRAY_JOB_ID=str(record["job_id"]),
            SLURM_ARRAY_TASK_ID=str(element["array_task_id"]),
            SLURM_ARRAY_TASK_COUNT=str(len(indices)),
            SLURM_ARRAY_TASK_MIN=str(min(indices)),
            SLURM_ARRAY_TASK_MAX=str(max(indices)),
        )
    ntasks = options.get("ntasks")
    if "ntasks-per-node" in options:
        env["SLURM_NTASKS_PER_NODE"] = str(options["ntasks-per-node"])
        ntasks = ntasks or int(options["ntasks-per-node"]) * nodes
    if ntasks is not None:
        env.update(SLURM_NTASKS=str(ntasks), SLURM_NPROCS=str(ntasks))
        env["SLURM_TASKS_PER_NODE"] = tasks_per_node_text(int(ntasks), nodes)
    for option, name in (
        ("cpus-per-task", "SLURM_CPUS_PER_TASK"),
        ("gpus-per-node", "SLURM_GPUS_PER_NODE"),
        ("gpus-per-task", "SLURM_GPUS_PER_TASK"),
        ("gpus", "SLURM_GPUS"),
        ("mem", "SLURM_MEM_PER_NODE"),
        ("account", "SLURM_JOB_ACCOUNT"),
        ("qos", "SLURM_JOB_QOS"),
    ):
        if option in options:
            env[name] = str(options[option])
    return env


def run_element(root: Path, record: dict, element: dict, delay_s: float) -> None:
    """Run one batch script (one array element) to its end and record its final state."""
    key = str(element["key"])
    env = batch_env(record, element)
    options = record["options"]
    default_out = "slurm-%A_%a.out" if element["array_task_id"] is not None else "slurm-%j.out"
    cwd = Path(str(options.get("chdir", record["submit_dir"])))
    stdout_path = cwd / expand_pattern(str(options.get("output", default_out)), env)
    stderr_path = cwd / expand_pattern(str(options["error"]), env) if "error" in options else None
    time.sleep(delay_s)
    deadline = time.time() + 60
    while not (stdout_path.parent.is_dir() and (stderr_path is None or stderr_path.parent.is_dir())):
        if time.time() > deadline:
            set_state(root, key, state="FAILED", exit_code=1, reason=f"no directory for {stdout_path}")
            return
        time.sleep(0.1)
    mode = "a" if options.get("open-mode", "truncate") == "append" else "w"
    limit = time_limit_min(options.get("time"))  # type: ignore[arg-type]
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(stdout_path, mode))
        err = stack.enter_context(open(stderr_path, mode)) if stderr_path else subprocess.STDOUT
        proc = subprocess.Popen(
            [str(root / "jobs" / f"{record['job_id']}.sh"), *record["script_args"]],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=cwd,
            env=env,
            start_new_session=True,  # one process group per job: scancel and time limits reach every task
        )
        set_state(root, key, state="RUNNING", pgid=proc.pid, start=time.time(), nodelist=env["SLURM_NODELIST"])
        try:
            code = proc.wait(timeout=None if limit is None else limit * 60)
            state = "COMPLETED" if code == 0 else "FAILED"
        except subprocess.TimeoutExpired:
            print(f"slurmstepd: error: *** JOB {element['job_id']} CANCELLED DUE TO TIME LIMIT ***", file=out)
            terminate_group(proc)
            code, state = proc.returncode, "TIMEOUT"
    current = read_json(root / "state" / f"{key}.json")
    if current.get("state") == "CANCELLED":
        state = "CANCELLED"
    set_state(root, key, state=state, exit_code=code if code >= 0 else 128 - code, end=time.time())


def terminate_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_job(master: str) -> int:
    """The scheduler for one submission: its array elements, at most ``%limit`` at once."""
    root = state_dir()
    record = read_json(root / "jobs" / f"{master}.json")
    delay = float(os.environ.get("FAKE_SLURM_SCHED_DELAY", "0.2"))
    slots = threading.Semaphore(record["array_limit"] or len(record["elements"]))

    def one(element: dict) -> None:
        with slots:
            run_element(root, record, element, delay)

    threads = [threading.Thread(target=one, args=(e,)) for e in record["elements"]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


# ---------------------------------------------------------------- srun


def srun(args: Sequence[str]) -> int:
    """Start ``ntasks`` copies of a command inside the current allocation, with each task's SLURM ranks."""
    root = state_dir()
    options, command = parse_options(args)
    if not command:
        raise FakeSlurmError("give the command to run (srun [options] command [args])")
    if "SLURM_JOB_ID" not in os.environ:
        raise FakeSlurmError("srun runs inside an allocation on the fake cluster; submit a script with sbatch")
    unsupported = sorted(UNSUPPORTED & set(options))
    if unsupported:
        raise FakeSlurmError(f"the fake cluster does not emulate --{', --'.join(unsupported)}")
    env = dict(os.environ)
    nodes = int(str(options.get("nodes", env.get("SLURM_NNODES", 1))).split("-")[0])
    if "ntasks" in options:
        ntasks = int(options["ntasks"])
    elif "ntasks-per-node" in options:
        ntasks = int(options["ntasks-per-node"]) * nodes
    elif "SLURM_NTASKS" in env:
        ntasks = int(env["SLURM_NTASKS"])
    elif "SLURM_NTASKS_PER_NODE" in env:
        ntasks = int(env["SLURM_NTASKS_PER_NODE"]) * nodes
    else:
        ntasks = nodes
    if ntasks < nodes:
        raise FakeSlurmError(f"--ntasks={ntasks} is fewer than --nodes={nodes}")
    job_id = env["SLURM_JOB_ID"]
    step = next_step(root, job_id)
    per_node = math.ceil(ntasks / nodes)  # block distribution: tasks 0..per_node-1 on node 0, ...
    env.update(
        SLURM_STEP_ID=str(step),
        SLURM_STEPID=str(step),
        SLURM_NTASKS=str(ntasks),
        SLURM_NPROCS=str(ntasks),
        SLURM_NNODES=str(nodes),
        SLURM_STEP_NUM_TASKS=str(ntasks),
        SLURM_STEP_NUM_NODES=str(nodes),
        SLURM_STEP_NODELIST=node_list(nodes),
        SLURM_STEP_TASKS_PER_NODE=tasks_per_node_text(ntasks, nodes),
        SLURM_TASKS_PER_NODE=tasks_per_node_text(ntasks, nodes),
        SLURM_LAUNCH_NODE_IPADDR="127.0.0.1",
        SLURM_SRUN_COMM_HOST="127.0.0.1",
    )
    if "ntasks-per-node" in options:
        env["SLURM_NTASKS_PER_NODE"] = str(options["ntasks-per-node"])
    if "job-name" in options:
        env["SLURM_JOB_NAME"] = str(options["job-name"])
    tasks: list[dict] = []
    procs: list[subprocess.Popen] = []
    with contextlib.ExitStack() as stack:
        for rank in range(ntasks):
            node, local = divmod(rank, per_node)
            task_env = {
                **env,
                "SLURM_PROCID": str(rank),
                "SLURM_LOCALID": str(local),
                "SLURM_NODEID": str(node),
                "SLURMD_NODENAME": f"127.0.0.{node + 1}",
                "SLURM_GTIDS": ",".join(str(r) for r in range(node * per_node, min(ntasks, (node + 1) * per_node))),
            }
            out = err = None
            if "output" in options:
                out = stack.enter_context(open(expand_pattern(str(options["output"]), task_env, rank, node), "a"))
            if "error" in options:
                err = stack.enter_context(open(expand_pattern(str(options["error"]), task_env, rank, node), "a"))
            proc = subprocess.Popen(command, env=task_env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
            procs.append(proc)
            tasks.append({"procid": rank, "localid": local, "nodeid": node, "pid": proc.pid})
        codes = wait_tasks(procs)
    for task, code in zip(tasks, codes, strict=True):
        task["exit_code"] = code
    line = {"job_id": job_id, "step": step, "ntasks": ntasks, "nodes": nodes, "argv": list(command), "tasks": tasks}
    with locked(root), open(root / "steps.jsonl", "a") as fh:
        fh.write(json.dumps(line) + "\n")
    if any(codes):
        print(f"srun: error: step {job_id}.{step}: tasks exited with {codes}", file=sys.stderr, flush=True)
    return max(codes)  # as SLURM's srun: the highest exit code, a signal counting as 128 + signal


def wait_tasks(procs: list[subprocess.Popen]) -> list[int]:
    """Wait for every task; once one fails, the others get SIGTERM (then SIGKILL) as with KillOnBadExit.
    SIGTERM/SIGINT to srun (scancel, a time limit) are forwarded to the tasks. Exit codes: 128+signal."""

    def forward(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, forward)
    killed_at: float | None = None
    while [p.poll() for p in procs].count(None):  # poll every task: it sets their return codes
        if killed_at is None and any(p.returncode not in (None, 0) for p in procs):
            killed_at = time.time()
            forward(signal.SIGTERM, None)
        elif killed_at is not None and time.time() - killed_at > KILL_WAIT_S:
            forward(signal.SIGKILL, None)
        time.sleep(0.05)
    return [p.returncode if p.returncode >= 0 else 128 - p.returncode for p in procs]


# ---------------------------------------------------------------- sacct, scancel


SACCT_FIELDS = ("JobID", "JobIDRaw", "JobName", "Partition", "State", "ExitCode", "NodeList", "NNodes")


def sacct(args: Sequence[str]) -> int:
    root = state_dir()
    options: dict[str, list[str] | str | bool] = {"jobs": []}
    fields = ["JobID", "JobName", "Partition", "State", "ExitCode"]
    i = 0
    while i < len(args):
        arg = args[i]
        value = args[i + 1] if i + 1 < len(args) else ""
        if arg in ("-j", "--jobs"):
            options["jobs"] += value.split(",")  # type: ignore[operator]
            i += 1
        elif arg.startswith("--jobs="):
            options["jobs"] += arg.split("=", 1)[1].split(",")  # type: ignore[operator]
        elif arg in ("-o", "--format"):
            fields = value.split(",")
            i += 1
        elif arg.startswith("--format="):
            fields = arg.split("=", 1)[1].split(",")
        elif arg in ("-P", "--parsable2", "-p", "--parsable", "-n", "--noheader", "-X", "--allocations"):
            options[arg] = True
        else:
            raise FakeSlurmError(f"the fake sacct does not know {arg!r} (it knows -j -o -P -p -n -X)")
        i += 1
    unknown = [f for f in fields if f not in SACCT_FIELDS]
    if unknown:
        raise FakeSlurmError(f"unknown field(s) {unknown}; the fake sacct reports {', '.join(SACCT_FIELDS)}")
    wanted = {str(j).split("_")[0] for j in options["jobs"]}  # type: ignore[union-attr]
    rows = []
    for path in sorted((root / "jobs").glob("*.json")):
        record = read_json(path)
        if wanted and str(record["job_id"]) not in wanted:
            continue
        for element in record["elements"]:
            state = read_json(root / "state" / f"{element['key']}.json")
            values = {
                "JobID": str(element["key"]),
                "JobIDRaw": str(element["job_id"]),
                "JobName": str(record["options"].get("job-name", Path(record["script_path"]).name)),
                "Partition": str(record["options"].get("partition", "fake")),
                "State": state["state"],
                "ExitCode": f"{state['exit_code'] or 0}:0",
                "NodeList": state.get("nodelist", "None assigned"),
                "NNodes": str(node_count(record["options"])),
            }
            rows.append([values[f] for f in fields])
    header = not any(options.get(k) for k in ("-n", "--noheader"))
    lines = ([fields] if header else []) + rows
    if any(options.get(k) for k in ("-P", "--parsable2", "-p", "--parsable")):
        tail = "|" if any(options.get(k) for k in ("-p", "--parsable")) else ""
        print("\n".join("|".join(line) + tail for line in lines))
    else:
        print("\n".join(" ".join(f"{v:>14}" for v in line) for line in lines))
    return 0


def scancel(args: Sequence[str]) -> int:
    """``scancel [--signal SIG] JOBID...``: signal (or end, state CANCELLED) jobs or array elements."""
    root = state_dir()
    options, ids = parse_options(args)
    if not ids:
        raise FakeSlurmError("give the job id(s) to cancel")
    signame = str(options.get("signal", ""))
    for job in ids:
        master = job.split("_")[0]
        record = read_json(root / "jobs" / f"{master}.json")
        for element in record["elements"]:
            if "_" in job and element["key"] != job:
                continue
            state = read_json(root / "state" / f"{element['key']}.json")
            if state["state"] in FINAL_STATES:
                continue
            if not signame:
                set_state(root, str(element["key"]), state="CANCELLED")
            pgid = state.get("pgid")
            if pgid is None:
                continue
            signum = getattr(signal, signame if signame.startswith("SIG") else f"SIG{signame}") if signame else 15
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pgid), signum)
    return 0


COMMANDS = {"sbatch": sbatch, "srun": srun, "sacct": sacct, "scancel": scancel}


def main(argv: Sequence[str]) -> int:
    if len(argv) >= 2 and argv[0] == "_run":
        return run_job(argv[1])
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: fake_slurm.py {{{','.join(COMMANDS)}}} ARGS", file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except (FakeSlurmError, FileNotFoundError, ValueError) as err:
        print(f"{argv[0]}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
