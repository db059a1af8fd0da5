"""Starting N processes: ``minires train --nproc N`` runs ``mpiexec -n N`` for the user.

    mpiexec -n 2 python -m minires train ...     what --nproc 2 runs

``mpiexec`` comes with the MPI wheel of ``pip install "minires[dist]"``
(MPICH), installed beside the Python that runs minires; one on the PATH is
used otherwise. Each process gets an equal share of the cores for its BLAS
and its threads (2 processes on 2 cores: one thread each), unless the
environment already says otherwise.

While the processes run, the launching process only waits: Ctrl-C in a
terminal reaches every process of the foreground group (the ranks stop after
their step and save, see minires/train/distributed.py), and a SIGTERM sent
to the launcher is passed on to mpiexec, which passes it on to the ranks.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
INSTALL_HINT = "pip install 'minires[dist]' (mpi4py and MPICH, with its mpiexec)"


def find_mpiexec() -> str | None:
    """The mpiexec beside this Python (the MPI wheel's), else the one on the PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec")


def threads_per_process(nproc: int) -> int:
    """An equal share of this machine's cores, at least 1."""
    return max(1, (os.cpu_count() or 1) // nproc)


def mpiexec_command(nproc: int, args: Sequence[str], mpiexec: str) -> list[str]:
    """The command that runs ``python -m minires ARGS`` on ``nproc`` processes."""
    return [mpiexec, "-n", str(nproc), sys.executable, "-m", "minires", *args]


def child_environment(nproc: int) -> dict[str, str]:
    """This environment, with a thread count per process where none is set."""
    env = dict(os.environ)
    threads = str(threads_per_process(nproc))
    for name in THREAD_VARIABLES:
        env.setdefault(name, threads)
    return env


def run_mpiexec(nproc: int, args: Sequence[str]) -> int:
    """Run ``minires ARGS`` on ``nproc`` processes; return their exit status.

    Raises FileNotFoundError (naming the install) when there is no mpiexec.
    """
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise FileNotFoundError(
            f"--nproc needs MPI's mpiexec, which is not installed: {INSTALL_HINT}"
        )
    proc = subprocess.Popen(mpiexec_command(nproc, args, mpiexec), env=child_environment(nproc))

    def forward(signum: int, frame: Any) -> None:
        proc.send_signal(signum)

    # Ctrl-C reaches the ranks directly (same process group): only wait for them.
    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
    }
    try:
        return proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
