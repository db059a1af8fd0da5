"""The exercises' reference solutions, and the two helpers the notebooks call.

In a notebook, an exercise is a cell marked ``# EXERCISE`` holding a stub
that raises NotImplementedError: the student replaces its body. The cell
after it checks the student's code against minires and against finite
differences, inside ``with exercise("5.A"):``. Until the stub is written
the check stops at the NotImplementedError, says so, and the notebook runs
on; once it is written every assert must pass.

This folder holds one file per notebook, ``NN_name.py``, with the solutions
(its ``__all__`` names them). With ``MINIRES_SOLUTIONS=1`` in the
environment, ``fill_in("NN_name", globals())`` at the top of a check cell
replaces the stubs with them, and an exercise left as a stub is an error:
the test suite runs every notebook both ways (tests/test_tutorials.py), so
the exercises are known to be solvable and their checks known to pass.

Try the exercise before reading the solution.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent


def solving() -> bool:
    """True when MINIRES_SOLUTIONS=1: the reference solutions replace the stubs."""
    return os.environ.get("MINIRES_SOLUTIONS") == "1"


def load(notebook: str) -> ModuleType:
    """The solutions of one notebook, e.g. ``load("05_residual_gradient")``."""
    path = HERE / f"{notebook}.py"
    if not path.exists():
        raise FileNotFoundError(f"no solutions for {notebook}: {path} is missing")
    spec = importlib.util.spec_from_file_location(f"solutions_{notebook}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fill_in(notebook: str, namespace: MutableMapping[str, Any]) -> list[str]:
    """With MINIRES_SOLUTIONS=1, put the notebook's solutions into ``namespace``
    (pass ``globals()``) over the stubs; otherwise do nothing. Returns the
    names replaced."""
    if not solving():
        return []
    module = load(notebook)
    for name in module.__all__:
        namespace[name] = getattr(module, name)
    print(f"MINIRES_SOLUTIONS=1: the reference solution of {', '.join(module.__all__)} is used")
    return list(module.__all__)


@contextmanager
def exercise(label: str) -> Iterator[None]:
    """Run an exercise's checks; a stub still raising NotImplementedError ends
    them with a message (an error with MINIRES_SOLUTIONS=1)."""
    try:
        yield
    except NotImplementedError as err:
        if solving():
            raise
        print(f"Exercise {label} is not done yet ({err}).")
        print("Write it in the cell marked EXERCISE above, run that cell, then this one.")
    else:
        print(f"Exercise {label}: every check passed.")
