"""Run by test_distributed_nccl.py: ``mpiexec -n 2 python mpi_nccl_cli_worker.py KERNELS ARGS``.

``minires ARGS`` (e.g. ``train --device cuda ...``) in each process, with the
CuPy + NCCL stand-in installed as ``cupy`` (two "GPUs"; the kernels loaded
from the folder KERNELS, where the test built them): the command line's
data-parallel path on GPUs, as ``minires train --nproc 2 --device cuda``
runs it on a machine with two.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cupy_standin  # noqa: E402

from minires.cli import main  # noqa: E402

if __name__ == "__main__":
    cupy_standin.prebuild_minires_kernels(Path(sys.argv[1]))
    with cupy_standin.install(device_count=2):
        status = main(sys.argv[2:])
    sys.exit(status)
