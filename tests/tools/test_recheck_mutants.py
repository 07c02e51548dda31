"""tools/recheck_mutants.py: which mutmut results it re-runs, and what a fresh pytest run under each mutant says."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("recheck_mutants", ROOT / "tools" / "recheck_mutants.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mutants(tmp_path: Path) -> Path:
    """A mutmut results tree: one module's meta (a kill, a survivor, a crash, a timeout, one not run) and the
    stats naming each function's tests; the test fails only under the mutant ``pkg.x_f__mutmut_2``."""
    mutants = tmp_path / "mutants"
    (mutants / "src" / "pkg").mkdir(parents=True)
    (mutants / "tests").mkdir()
    codes = {"pkg.x_f__mutmut_1": 1, "pkg.x_f__mutmut_2": -11, "pkg.x_f__mutmut_3": -24, "pkg.x_g__mutmut_1": 0}
    codes["pkg.x_g__mutmut_2"] = None  # type: ignore[assignment]
    (mutants / "src" / "pkg" / "m.py.meta").write_text(json.dumps({"exit_code_by_key": codes}))
    test = "tests/test_f.py::test_f"
    stats = {"tests_by_mangled_function_name": {"pkg.x_f": [test]}}
    (mutants / "mutmut-stats.json").write_text(json.dumps(stats))
    (mutants / "tests" / "test_f.py").write_text(
        textwrap.dedent(
            """
            import os

            def test_f():
                assert os.environ["MUTANT_UNDER_TEST"] != "pkg.x_f__mutmut_2"
            """
        )
    )
    return mutants


def test_only_crashes_and_timeouts_are_rechecked(tmp_path: Path) -> None:
    tool, mutants = _tool(), _mutants(tmp_path)
    assert tool.crashed_mutants(mutants) == {"pkg.x_f__mutmut_2": -11, "pkg.x_f__mutmut_3": -24}
    assert tool.tests_for(mutants, "pkg.x_f__mutmut_3") == ["tests/test_f.py::test_f"]
    assert tool.tests_for(mutants, "pkg.x_g__mutmut_1") == []


def test_a_fresh_run_tells_a_kill_from_a_survivor(tmp_path: Path) -> None:
    tool, mutants = _tool(), _mutants(tmp_path)
    assert tool.recheck(mutants, "pkg.x_f__mutmut_2", timeout=120) == "killed"
    assert tool.recheck(mutants, "pkg.x_f__mutmut_3", timeout=120) == "survived"
    assert tool.recheck(mutants, "pkg.x_g__mutmut_1", timeout=120) == "no tests"
