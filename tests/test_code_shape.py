"""The shape of the code: what a reader relies on without reading every line.

Small modules with one job (the training package), CuPy behind backends/,
and an ``import minires`` that needs NumPy alone.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import minires

PACKAGE = Path(minires.__file__).resolve().parent
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60


def _modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


@pytest.mark.parametrize(
    "path",
    [*_modules(PACKAGE / "train"), PACKAGE / "options.py"],
    ids=lambda p: p.relative_to(PACKAGE).as_posix(),
)
def test_training_modules_are_short(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    for fn in _functions(ast.parse(text)):
        length = fn.end_lineno - fn.lineno + 1
        assert length <= MAX_FUNCTION_LINES, f"{fn.name} has {length} lines"


def test_the_size_check_sees_long_functions() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (fn,) = _functions(ast.parse(f"def f():\n{body}\n"))
    assert fn.end_lineno - fn.lineno + 1 == MAX_FUNCTION_LINES + 1


def _imports_cupy(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        if any(n.split(".")[0] in ("cupy", "cupyx") for n in names):
            return True
    return False


def test_only_the_backends_import_cupy() -> None:
    assert _imports_cupy(ast.parse("def f():\n    import cupyx\n"))
    assert _imports_cupy(ast.parse("from cupy.cuda import runtime\n"))
    offenders = {
        path.relative_to(PACKAGE).as_posix()
        for path in _modules(PACKAGE)
        if "backends" not in path.relative_to(PACKAGE).parts
        and _imports_cupy(ast.parse(path.read_text(encoding="utf-8")))
    }
    assert not offenders, sorted(offenders)


_OPTIONAL = ("tqdm", "matplotlib", "threadpoolctl", "cupy", "cupyx", "PIL")


def test_import_minires_needs_numpy_alone() -> None:
    """The command's modules import without tqdm, matplotlib, threadpoolctl, CuPy or Pillow,
    and a plain ``import minires`` loads none of them."""
    code = (
        "import sys\n"
        f"blocked = {_OPTIONAL!r}\n"
        "if sys.argv[1] == 'block':\n"
        "    for name in blocked: sys.modules[name] = None  # import now raises ImportError\n"
        "import minires, minires.train, minires.cli, minires.bench, minires.plots\n"
        "import minires.predict, minires.data.imagenet\n"
        "loaded = [m for m in blocked if sys.modules.get(m) is not None]\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    for mode in ("block", "plain"):
        done = subprocess.run(
            [sys.executable, "-c", code, mode], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr


def test_the_autograd_core_is_a_one_sitting_read() -> None:
    """autograd.py: under 500 lines, and nothing about threads, BLAS or kernels."""
    source = (PACKAGE / "autograd.py").read_text(encoding="utf-8")
    assert len(source.splitlines()) < 500
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    forbidden = {"parallel", "threadpoolctl", "threading", "cpu_backend", "numpy_backend"}
    forbidden |= {"cuda_backend", "shifted_conv", "backends"}  # "backends.device" is allowed
    assert not imported & forbidden, sorted(imported & forbidden)
