"""Several processes, one model: the collectives of data-parallel training (torch.distributed).

    mpiexec -n 2 python train.py            # or: minires train --nproc 2

    import minires.distributed as dist
    dist.init_process_group()               # MPI when started by mpiexec, else one process
    dist.get_rank(), dist.get_world_size()  # 0 or 1, 2
    dist.all_reduce(array)                  # in place: the sum over the processes
    dist.broadcast(array, src=0)            # in place: rank 0's values everywhere

Data parallelism in one paragraph: every process holds the same weights and
computes the gradient on its own shard of the batch; the gradient of the
whole batch is the average of the shards' gradients (a mean over 2B samples
is the mean of two means over B), so one all-reduce of the gradients, then
the same optimiser step everywhere, keeps every copy of the weights equal.
BatchNorm is the exception: it makes each sample's output depend on the
statistics of *its shard*, so its statistics are all-reduced too
(``minires.nn.SyncBatchNorm``). ``tutorials/08_data_parallel.py`` measures
both claims.

The engine is MPI, through mpi4py (``pip install "minires[dist]"`` brings
mpi4py and MPICH, whose ``mpiexec`` starts the processes). On GPUs (one
process per GPU) it is NCCL for the arrays on the device, through CuPy:
``init_process_group(device="cuda")``, or a model on CUDA, selects it.
Nothing here imports mpi4py until a process group with more than one
process is asked for, so single-process minires needs NumPy alone.

Modules: comm.py (the process group and its collectives, with a count of
the bytes and seconds they take), nccl.py (the same group with NCCL for
device arrays), group.py (the default group: init_process_group and the
module-level functions), buckets.py (gradients all-reduced in a few large buffers),
launch.py (starting ``mpiexec`` for the user).
"""

from .buckets import GradientBuckets, broadcast_arrays, check_ranks_agree
from .comm import (
    CommStats,
    Communicator,
    DistributedError,
    MPICommunicator,
    SingleProcess,
    launched_world_size,
)
from .group import (
    all_reduce,
    barrier,
    broadcast,
    destroy_process_group,
    get_communicator,
    get_rank,
    get_world_size,
    init_process_group,
    is_initialized,
    with_nccl,
)
from .nccl import NCCLCommunicator

__all__ = [
    "CommStats",
    "Communicator",
    "DistributedError",
    "GradientBuckets",
    "MPICommunicator",
    "NCCLCommunicator",
    "SingleProcess",
    "all_reduce",
    "barrier",
    "broadcast",
    "broadcast_arrays",
    "check_ranks_agree",
    "destroy_process_group",
    "get_communicator",
    "get_rank",
    "get_world_size",
    "init_process_group",
    "is_initialized",
    "launched_world_size",
    "with_nccl",
]
