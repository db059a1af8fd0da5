"""The tutorials are part of the product: each one must run top to bottom.

Every notebook in tutorials/ is stored twice: a jupytext percent-format
``NN_name.py`` (the source, diff-friendly) and the paired ``NN_name.ipynb``
without outputs (for plain Jupyter). These tests check that the two hold the
same cells, that the .ipynb carries no outputs, and then execute each notebook
in a fresh ``python3`` kernel with ``MINIRES_QUICK=1`` (small sizes, short
training), failing if any cell raises -- every notebook ends its sections with
``assert`` cells, so a claim that stops being true fails here.

Set ``MINIRES_TUTORIALS_FULL=1`` to run them at full size instead (slow).
Re-pair after editing a source with ``jupytext --sync tutorials/NN_name.py``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
SOURCES = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
FULL = os.environ.get("MINIRES_TUTORIALS_FULL") == "1"
CELL_TIMEOUT = 1800 if FULL else 300


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


EXPECTED = [
    "01_autograd",
    "02_im2col",
    "03_batchnorm_relu",
    "04_residual_block",
    "05_residual_gradient",
    "06_degradation",
    "07_gpu",
    "08_data_parallel",
]


def test_every_tutorial_is_there():
    assert [p.stem for p in SOURCES] == EXPECTED, f"tutorials in {TUTORIALS}"


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_ipynb_matches_source(source: Path):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run `jupytext --to ipynb {source}`"
    from_py = jupytext.read(source)
    from_ipynb = nbformat.read(ipynb, as_version=4)
    assert _cells(from_ipynb) == _cells(from_py), (
        f"{ipynb.name} has drifted from {source.name}: run `jupytext --sync {source}`"
    )
    for cell in from_ipynb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{ipynb.name} is committed with outputs; strip them "
                f"(`jupytext --to ipynb {source}` writes none)"
            )


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_notebook_runs(source: Path, monkeypatch: pytest.MonkeyPatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    # The kernel inherits this process's environment.
    if FULL:
        monkeypatch.delenv("MINIRES_QUICK", raising=False)
    else:
        monkeypatch.setenv("MINIRES_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = jupytext.read(source)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the failing cell
    elapsed = time.perf_counter() - start
    print(f"{source.stem}: {elapsed:.1f} s ({'full' if FULL else 'quick'} mode)")
