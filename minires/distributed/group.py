"""The default process group, as torch.distributed's module-level functions.

    dist.init_process_group()                 # MPI when started by mpiexec, else one process
    dist.init_process_group(device="cuda")    # and NCCL for the arrays on the GPUs
    dist.get_rank(), dist.get_world_size()
    dist.all_reduce(a), dist.broadcast(a, src=0), dist.barrier()

The group is made on first use, once per process; the layers that need one
(SyncBatchNorm, DistributedDataParallel) ask ``get_communicator(device)``,
so that a model on a GPU gets NCCL without being told.
"""

from __future__ import annotations

from ..backends.device import check_device
from .comm import Array, Communicator, MPICommunicator, SingleProcess, launched_world_size
from .nccl import NCCLCommunicator

_group: Communicator | None = None


_BACKENDS = ("auto", "mpi", "nccl", "single")


def init_process_group(backend: str = "auto", device: str = "cpu") -> Communicator:
    """Join the default process group and return it.

    backend: "mpi", "nccl" (MPI, plus NCCL for the arrays on GPUs: see
    nccl.py), "single", or "auto": when this process was started by mpiexec
    with more than one process, NCCL if ``device`` is "cuda", else MPI; the
    group of one otherwise.

    Idempotent, with one exception: asking for NCCL when the group is MPI
    turns it into an NCCL group (the same processes, ranks and counts), and
    makes this process's GPU current. Every rank must ask at the same point,
    before its model or data is moved to the GPU.
    """
    global _group
    if backend not in _BACKENDS:
        raise ValueError(
            f"init_process_group: backend must be one of {', '.join(_BACKENDS)}, got {backend!r}"
        )
    check_device("init_process_group", device)
    if backend == "auto":
        many = launched_world_size() > 1
        backend = ("nccl" if device == "cuda" else "mpi") if many else "single"
    if _group is None:
        _group = SingleProcess() if backend == "single" else MPICommunicator()
    if backend == "nccl":
        _group = with_nccl(_group)
    return _group


def with_nccl(group: Communicator) -> Communicator:
    """``group`` with its collectives on CuPy arrays done by NCCL (see nccl.py).

    An MPI group becomes an NCCLCommunicator over the same processes (and
    replaces the default group if it was it); an NCCL group, or the group of
    one (whose collectives never copy anything), is returned as it is.
    """
    global _group
    if group.name != "mpi":
        return group
    upgraded = NCCLCommunicator(group.comm, stats=group.stats)
    if group is _group:
        _group = upgraded
    return upgraded


def is_initialized() -> bool:
    return _group is not None


def destroy_process_group() -> None:
    """Forget the default group (MPI itself is finalised when Python exits)."""
    global _group
    _group = None


def get_communicator(device: str = "cpu") -> Communicator:
    """The default group, joined on first use (see init_process_group).

    device: where the arrays to reduce live; for "cuda" the group uses NCCL
    (init_process_group(device="cuda")) when there is more than one process.
    """
    if _group is None or device == "cuda":
        return init_process_group(device=device)
    return _group


def get_rank() -> int:
    return get_communicator().rank


def get_world_size() -> int:
    return get_communicator().world_size


def all_reduce(a: Array, op: str = "sum") -> Array:
    return get_communicator().all_reduce(a, op)


def broadcast(a: Array, src: int = 0) -> Array:
    return get_communicator().broadcast(a, src)


def barrier() -> None:
    get_communicator().barrier()
