"""Every notebook in tutorials/ executes top to bottom in fast mode (``PPL_FAST=1``).

The executions carry the ``notebooks`` marker (about 7 CPU-minutes for all six): CI runs
them in their own step, ``python -m pytest -m notebooks``.

Needs the ``tutorials`` extra (jupyter: nbclient, nbformat, ipykernel; matplotlib); without
it the module is skipped at collection, with the reason. nbformat and nbclient are imported
by the notebook test itself: importing nbformat costs seconds (its JSON-schema validator
compiles a grammar), which every pytest worker would otherwise pay at collection.
"""

import importlib.util
import os
from pathlib import Path

import pytest

_NEEDED = ("nbformat", "nbclient", "ipykernel", "matplotlib")
_MISSING = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
if _MISSING:
    pytest.skip(
        f'needs the tutorials extra ({", ".join(_MISSING)} missing): pip install -e ".[tutorials]"',
        allow_module_level=True,
    )

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


def test_tutorials_exist():
    assert NOTEBOOKS, f"no notebooks in {TUTORIALS}"


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_tutorial_executes(path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("PPL_FAST", "1")
    monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, errors
