"""Every notebook in ``notebooks/`` runs top to bottom on this interpreter, offline, into a scratch folder;
notebooks are committed with their outputs stripped.

The kernel is the running interpreter's own ``python3`` kernel (``ipykernel``'s built-in spec, which
starts ``sys.executable``), not whatever ``python`` a ``kernel.json`` elsewhere on the machine names.
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = {"01_quickstart", "02_explore_embeddings", "03_compare_runs", "04_clip_zero_shot", "05_finetune_text"}


def test_the_notebooks_are_there_with_outputs_stripped() -> None:
    assert {p.stem for p in NOTEBOOKS} >= EXPECTED
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, f"{path.name} has no code cells"
        for cell in code:
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name} is committed with outputs; strip them (see notebooks/README.md)"
            )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    # the kernel inherits this environment: runs go under tmp_path, W&B stays offline
    monkeypatch.setenv("CONTRASTLAB_NOTEBOOK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("CONTRASTLAB_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    # no kernel directories: jupyter_client falls back to ipykernel's own spec, i.e. sys.executable
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = NotebookClient(
        nb, km=km, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    start = time.perf_counter()
    client.execute()
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    executed = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in executed)
    images = [o for c in executed for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no figure"
