"""Re-run, outside mutmut, every mutant that mutmut counted as killed by a crash or a timeout.

mutmut runs each mutant's tests in a process forked from its own; tests that run ranks as threads
(``tests/ranks.py``) can crash there (SIGSEGV/SIGABRT) whatever the mutant does, and mutmut counts a crash or
a timeout as a kill. This script re-runs those mutants in fresh pytest processes (mutmut's trampolines pick
the mutant from ``MUTANT_UNDER_TEST``) on the tests mutmut selected for them, and prints one line each:
``killed`` (a test failed), ``survived`` (every test passed: a real survivor to classify), ``crashed`` or
``timeout``. mutmut has no option for this; it is our own for that reason.

    python tools/recheck_mutants.py [build/mutate] [--timeout 300]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

KILLED, SURVIVED = 1, 0


def crashed_mutants(mutants: Path) -> dict[str, int]:
    """``{mutant name: exit code}`` of the mutants whose mutmut result is neither a pass nor a test failure."""
    found = {}
    for meta in sorted((mutants / "src").rglob("*.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if code is not None and code not in (KILLED, SURVIVED):
                found[name] = code
    return found


def tests_for(mutants: Path, name: str) -> list[str]:
    """The test ids mutmut selected for ``name``'s function (``...x_fn__mutmut_3`` -> ``...x_fn``)."""
    by_function = json.loads((mutants / "mutmut-stats.json").read_text())["tests_by_mangled_function_name"]
    return sorted(by_function.get(name.rsplit("__mutmut_", 1)[0], []))


def recheck(mutants: Path, name: str, timeout: float) -> str:
    tests = tests_for(mutants, name)
    if not tests:
        return "no tests"
    env = {**os.environ, "MUTANT_UNDER_TEST": name, "PYTHONPATH": "src:tests", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests]
    try:
        code = subprocess.run(cmd, cwd=mutants, env=env, capture_output=True, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return "timeout"
    return {0: "survived", 1: "killed"}.get(code, f"crashed (exit {code})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="build/mutate", help="the folder `make mutate` ran in")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant")
    args = parser.parse_args()
    mutants = Path(args.root) / "mutants"
    if not (mutants / "mutmut-stats.json").exists():
        sys.exit(f"error: {mutants} has no mutmut results; run `make mutate` first.")
    found = crashed_mutants(mutants)
    print(f"{len(found)} mutants crashed or timed out under mutmut; re-running them outside it")
    for name, code in found.items():
        print(f"{name}  mutmut exit {code}: {recheck(mutants, name, args.timeout)}", flush=True)


if __name__ == "__main__":
    main()
