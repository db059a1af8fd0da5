"""Run by tests/test_distributed_mpi.py as ``mpiexec -n 2 python tests/mpi_worker.py OUT``.

Each rank computes the distributed cases of distributed_cases.py and writes
what it got to OUT/<case>-rank<r>.npz; the test, in one process, compares
them with the same computations on the whole batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import minires as mr
from minires import distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distributed_cases as cases  # noqa: E402


def main(out: Path) -> None:
    mr.set_num_threads(1)  # two processes on two cores: one thread each
    comm = dist.init_process_group("mpi")
    assert comm.world_size == cases.WORLD, comm
    r = comm.rank
    np.savez(
        out / f"sync-rank{r}.npz", **cases.distributed_step(cases.make_model(True, comm), comm)
    )
    comm.stats.reset()  # what the plain step sends: only the gradients
    np.savez(out / f"plain-rank{r}.npz", **cases.distributed_step(cases.make_model(False), comm))
    stats = comm.stats
    np.savez(
        out / f"stats-rank{r}.npz",
        calls=stats.calls.get("all_reduce", 0),
        bytes=stats.bytes.get("all_reduce", 0),
    )
    np.savez(out / f"ddp-rank{r}.npz", **cases.ddp_step(comm))
    np.savez(out / f"layer-rank{r}.npz", **cases.sync_bn_layer_case(comm))
    np.savez(out / f"direction-rank{r}.npz", **cases.directional_check(comm))
    comm.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
