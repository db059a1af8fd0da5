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

Exercises: a notebook with a solutions file ``tutorials/solutions/NN_name.py``
holds stubs (marked ``# EXERCISE``, raising NotImplementedError) that the
student writes. It is executed twice: as shipped, where each check cell
notes that its exercise is not done and the notebook runs on, and with
``MINIRES_SOLUTIONS=1``, where ``fill_in`` puts the solutions in place of
the stubs and every check must pass (tutorials/solutions/__init__.py).
"""

from __future__ import annotations

import ast
import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
SOURCES = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
SOLUTIONS = sorted((TUTORIALS / "solutions").glob("[0-9][0-9]_*.py"))
# Every notebook as shipped, then each one with exercises again with its solutions filled in.
RUNS = [(source, False) for source in SOURCES] + [
    (TUTORIALS / s.name, True) for s in SOLUTIONS if (TUTORIALS / s.name).exists()
]
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


def _defined_names(tree: ast.Module) -> dict[str, ast.AST]:
    return {
        node.name: node
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    }


def _solution_names(solution: Path) -> list[str]:
    for node in ast.parse(solution.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"{solution} has no __all__ naming its solutions")


def test_the_course_has_exercises():
    """The im2col convolution, BatchNorm's backward, a residual block's forward
    and the residual gradient formula, at least, are exercises with solutions."""
    solved = {p.stem for p in SOLUTIONS}
    for stem in ("02_im2col", "03_batchnorm_relu", "04_residual_block", "05_residual_gradient"):
        assert stem in solved, f"tutorials/solutions/{stem}.py is missing"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_exercises_have_stubs_and_solutions(solution: Path):
    """Each solution replaces a stub of the same name in its notebook, marked
    EXERCISE and raising NotImplementedError, and the notebook calls fill_in."""
    source = TUTORIALS / solution.name
    assert source.exists(), f"{solution.name} solves a notebook that does not exist"
    text = source.read_text()
    assert f'fill_in("{source.stem}", globals())' in text
    assert "# EXERCISE" in text and "with exercise(" in text
    stubs = _defined_names(ast.parse(text))
    solved = _defined_names(ast.parse(solution.read_text()))
    for name in _solution_names(solution):
        assert name in stubs, f"{source.name} has no stub named {name}"
        assert name in solved, f"{solution.name} does not define {name}"
        raises = [
            n
            for n in ast.walk(stubs[name])
            if isinstance(n, ast.Raise)
            and "NotImplementedError" in ast.unparse(n.exc if n.exc is not None else n)
        ]
        assert raises, f"the stub {name} in {source.name} must raise NotImplementedError"


@pytest.mark.parametrize(
    "source, solved",
    RUNS,
    ids=[p.stem + ("[solutions]" if solved else "") for p, solved in RUNS],
)
def test_notebook_runs(source: Path, solved: bool, monkeypatch: pytest.MonkeyPatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    # The kernel inherits this process's environment.
    if FULL:
        monkeypatch.delenv("MINIRES_QUICK", raising=False)
    else:
        monkeypatch.setenv("MINIRES_QUICK", "1")
    if solved:
        monkeypatch.setenv("MINIRES_SOLUTIONS", "1")
    else:
        monkeypatch.delenv("MINIRES_SOLUTIONS", raising=False)
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
    mode = ("full" if FULL else "quick") + (", solutions filled in" if solved else "")
    print(f"{source.stem}: {elapsed:.1f} s ({mode} mode)")
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    if solved:  # every exercise ran its checks to the end
        assert "is not done yet" not in outputs
    elif source.with_name("solutions").joinpath(source.name).exists():
        assert "is not done yet" in outputs  # the stubs ship as stubs
