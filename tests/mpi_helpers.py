"""Starting MPI from the tests: skip (with the reason) only where MPI cannot start.

Outside CI, a machine without mpi4py and an mpiexec, or whose MPI cannot
start two processes, skips the MPI tests and says why. In CI the `test`
extra brings mpi4py and MPICH, so there MPI not starting is a broken install
and fails the test instead (as conftest.py does for missing packages).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import in_ci

from minires.distributed.launch import INSTALL_HINT, find_mpiexec

REPO = Path(__file__).resolve().parent.parent


def mpi_env() -> dict[str, str]:
    """One BLAS thread per process (two processes share two cores), minires importable."""
    path = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": path, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


@functools.lru_cache(maxsize=1)
def _why_mpi_cannot_start() -> str:
    """'' when `mpiexec -n 2` starts two mpi4py processes that meet; else the reason."""
    try:
        import mpi4py  # noqa: F401
    except ImportError as e:
        return f"mpi4py is not installed ({e}): {INSTALL_HINT}"
    mpiexec = find_mpiexec()
    if mpiexec is None:
        return f"no mpiexec: {INSTALL_HINT}"
    probe = "from mpi4py import MPI; c = MPI.COMM_WORLD; c.Barrier(); assert c.Get_size() == 2"
    try:
        done = subprocess.run(
            [mpiexec, "-n", "2", sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            timeout=60,
            env=mpi_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"mpiexec -n 2 could not run: {e}"
    if done.returncode != 0:
        return f"mpiexec -n 2 failed (exit {done.returncode}): {done.stderr.strip()[-500:]}"
    return ""


def require_mpi() -> str:
    """The mpiexec to use; skips the test (fails it in CI) when MPI cannot start."""
    why = _why_mpi_cannot_start()
    if why:
        if in_ci():
            pytest.fail(f"CI is set, so MPI must start, but: {why}")
        pytest.skip(f"MPI cannot start here: {why}")
    return find_mpiexec()


def run_mpi(
    n: int, args: Sequence[str], cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """``mpiexec -n N python ARGS``, one BLAS thread per process; output captured."""
    mpiexec = require_mpi()
    return subprocess.run(
        [mpiexec, "-n", str(n), sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=mpi_env(),
        cwd=cwd,
    )
