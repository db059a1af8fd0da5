"""The tutorials are part of the product: each one must run top to bottom.

Every notebook in tutorials/ is stored twice: a jupytext percent-format
``NN_name.py`` (the source, diff-friendly) and the paired ``NN_name.ipynb``
with the outputs of a full-mode run (``python tutorials/execute.py``), so a
reader on the web sees every number and figure. These tests check that the
.ipynb's cells are the source's, that its outputs come from one full-mode run
of exactly those cells, top to bottom and without an error, and that the
figures tutorials/README.md shows are the ones the notebooks drew. Then they
execute each notebook in a fresh ``python3`` kernel with ``MINIRES_QUICK=1``
(small sizes, short training), failing if any cell raises -- every notebook
ends its sections with ``assert`` cells, so a claim that stops being true
fails here.

Set ``MINIRES_TUTORIALS_FULL=1`` to run them at full size instead (slow).
After editing a source, run ``python tutorials/execute.py NN`` to rewrite its
.ipynb with fresh outputs.

Exercises: a notebook with a solutions file ``tutorials/solutions/NN_name.py``
holds stubs (marked ``# EXERCISE``, raising NotImplementedError) that the
student writes. It is executed twice: as shipped, where each check cell
notes that its exercise is not done and the notebook runs on, and with
``MINIRES_SOLUTIONS=1``, where ``fill_in`` puts the solutions in place of
the stubs and every check must pass (tutorials/solutions/__init__.py).
"""

from __future__ import annotations

import ast
import importlib.util
import os
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

# tutorials/execute.py: runs a notebook, and finds its tagged figures.
_spec = importlib.util.spec_from_file_location("tutorials_execute", TUTORIALS / "execute.py")
execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute)


def _cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", []))) for c in nb.cells]


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
    regenerate = f"run `python tutorials/execute.py {source.stem[:2]}`"
    assert ipynb.exists(), f"{ipynb.name} is missing: {regenerate}"
    from_py = jupytext.read(source)
    from_ipynb = nbformat.read(ipynb, as_version=4)
    assert _cells(from_ipynb) == _cells(from_py), (
        f"{ipynb.name} has drifted from {source.name}: {regenerate}"
    )
    run = from_ipynb.metadata.get("minires", {})
    assert run.get("mode") == "full", (
        f"{ipynb.name} carries no outputs of a full-mode run: {regenerate}"
    )
    code = [c for c in from_ipynb.cells if c.cell_type == "code"]
    # One run of exactly these cells, top to bottom: counts 1, 2, 3, ... and no error.
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), regenerate
    for cell in code:
        for output in cell.outputs:
            assert output.output_type != "error", f"{ipynb.name}: a cell failed:\n{cell.source}"


def test_readme_figures_are_the_notebooks_own():
    """docs/figures/NAME.png is the image of the cell tagged figure-NAME, byte for
    byte, and tutorials/README.md shows every one of them."""
    readme = (TUTORIALS / "README.md").read_text()
    tagged = {}
    for source in SOURCES:
        nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
        tagged.update(execute.figure_cells(nb))
    assert len(tagged) >= 6
    for name, cell in tagged.items():
        png = execute.FIGURES / f"{name}.png"
        assert png.exists(), f"{png} is missing: run `python tutorials/execute.py`"
        assert png.read_bytes() == execute.cell_png(cell), f"{png} is not the notebook's figure"
        assert f"../docs/figures/{name}.png" in readme, f"tutorials/README.md does not show {name}"
    on_disk = {p.stem for p in execute.FIGURES.glob("*.png")}
    assert on_disk == set(tagged), f"figures no notebook draws: {sorted(on_disk - set(tagged))}"


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
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    if FULL:
        monkeypatch.delenv("MINIRES_QUICK", raising=False)
    nb, elapsed = execute.run_notebook(source, quick=not FULL, solved=solved, timeout=CELL_TIMEOUT)
    mode = ("full" if FULL else "quick") + (", solutions filled in" if solved else "")
    print(f"{source.stem}: {elapsed:.1f} s ({mode} mode)")
    for cell in execute.figure_cells(nb).values():
        execute.cell_png(cell)  # each tagged cell draws its figure in this mode too
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    if solved:  # every exercise ran its checks to the end
        assert "is not done yet" not in outputs
    elif source.with_name("solutions").joinpath(source.name).exists():
        assert "is not done yet" in outputs  # the stubs ship as stubs
