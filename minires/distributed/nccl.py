"""The process group on GPUs: NCCL for device arrays, MPI for everything else.

    mpiexec -n 2 python train.py      # one process per GPU
    dist.init_process_group(device="cuda")   # NCCL; this process's GPU chosen
    model.to("cuda")                         # ...after it, so it lands there

``NCCLCommunicator`` has the interface of ``MPICommunicator`` (it is one):
the same ranks, the same ``all_reduce`` / ``broadcast`` / ``all_gather`` /
``barrier``, the same ``stats`` (group.py makes it the default group when
asked for a GPU). What it does differently is where the data goes. A CuPy
array is reduced by NCCL on its GPU, on the current stream, in place
(minires/backends/nccl.py), so gradient buckets and SyncBatchNorm's sums
never visit the host; a NumPy array (a loss to average, a flag to agree on,
a fingerprint) goes over MPI as before. (MPICommunicator given a CuPy array
copies it to the host and back: correct, and slow.)

Setting up, on every rank at once:

1. MPI as for the CPU: ranks and the host collectives.
2. The GPU: process k of a machine uses its GPU k (the *local* rank, from
   MPI's shared-memory split), made current before any array is put on it.
   Two ranks on one GPU would make NCCL fail obscurely: refused here.
3. Rank 0 makes NCCL's unique id and broadcasts it over MPI; every rank then
   joins the NCCL communicator with it.

Stats: the device collectives are counted as ``nccl_all_reduce``,
``nccl_broadcast`` and ``nccl_all_gather`` (calls and bytes, exact). NCCL
runs on the stream, asynchronously, so their seconds are the host's time to
*queue* the call, not the collective's; to time a collective, synchronise the
device around it (minires.backends.device.synchronize).
"""

from __future__ import annotations

import time
from typing import Any

from ..backends import nccl as backend
from ..backends.device import is_cupy_array
from .comm import Array, CommStats, DistributedError, MPICommunicator, _check_op


class NCCLCommunicator(MPICommunicator):
    """Collectives on CuPy arrays through NCCL, on NumPy arrays through MPI.

    comm: the MPI communicator of the processes (default MPI_COMM_WORLD).
    device: the GPU to use (default: the local rank, one GPU per process).
    stats: counts to continue (when an MPI group becomes an NCCL one).
    """

    name = "nccl"

    def __init__(self, comm: Any = None, device: int | None = None, stats: CommStats | None = None):
        super().__init__(comm)
        if stats is not None:
            self.stats = stats
        self.local_rank, self.local_size = self._local_rank()
        error: Exception | None = None
        try:  # local checks first, so that no rank waits below for one that failed
            backend.nccl_module()
            self.device = self._choose_gpu(device)
        except (backend.NcclUnavailable, DistributedError) as e:
            error = e
        if self.agree(error is not None):
            raise DistributedError(
                str(error) if error else "another process could not start NCCL (see its error)"
            )
        self._check_one_gpu_per_process()
        uid = self.comm.bcast(backend.unique_id() if self.rank == 0 else None, root=0)
        self.group = backend.NcclGroup(self.world_size, uid, self.rank)

    # -- setting up ---------------------------------------------------------------

    def _local_rank(self) -> tuple[int, int]:
        """This process's rank among those on its machine, and their number."""
        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        try:
            return local.Get_rank(), local.Get_size()
        finally:
            local.Free()

    def _choose_gpu(self, device: int | None) -> int:
        count = backend.device_count()
        index = self.local_rank if device is None else device
        if not 0 <= index < count:
            raise DistributedError(
                f"NCCL: process {self.local_rank} of the {self.local_size} on this machine "
                f"needs GPU {index}, but the machine has {count} GPU(s): start at most {count} "
                "process(es) per machine, one per GPU"
            )
        backend.use_device(index)
        return index

    def _check_one_gpu_per_process(self) -> None:
        places = self.comm.allgather((self.MPI.Get_processor_name(), self.device))
        shared = [r for r, place in enumerate(places) if places.count(place) > 1]
        if shared:
            raise DistributedError(
                f"NCCL: ranks {shared} would share a GPU ({places[shared[0]][1]} on "
                f"{places[shared[0]][0]}); NCCL needs one GPU per process"
            )

    # -- the collectives ----------------------------------------------------------

    def all_reduce(self, a: Array, op: str = "sum") -> Array:
        if not is_cupy_array(a):
            return super().all_reduce(a, op)
        _check_op(op)
        self._check_on_my_gpu(a, "all_reduce")
        t0 = time.perf_counter()
        self.group.all_reduce(a, op)
        self.stats.add("nccl_all_reduce", a.nbytes, time.perf_counter() - t0)
        return a

    def broadcast(self, a: Array, src: int = 0) -> Array:
        if not is_cupy_array(a):
            return super().broadcast(a, src)
        self._check_on_my_gpu(a, "broadcast")
        t0 = time.perf_counter()
        self.group.broadcast(a, src)
        self.stats.add("nccl_broadcast", a.nbytes, time.perf_counter() - t0)
        return a

    def all_gather(self, a: Array) -> Array:
        if not is_cupy_array(a):
            return super().all_gather(a)
        self._check_on_my_gpu(a, "all_gather")
        t0 = time.perf_counter()
        out = self.group.all_gather(a)
        self.stats.add("nccl_all_gather", a.nbytes, time.perf_counter() - t0)
        return out

    def _check_on_my_gpu(self, a: Array, op: str) -> None:
        if a.device.id != self.device:
            raise DistributedError(
                f"{op}: the array is on GPU {a.device.id}, but this process (rank {self.rank}) "
                f"uses GPU {self.device}: call minires.distributed.init_process_group("
                "device='cuda') before moving the model or the data to the GPU"
            )

    def __repr__(self) -> str:
        return (
            f"NCCLCommunicator(rank={self.rank}, world_size={self.world_size}, gpu={self.device})"
        )
