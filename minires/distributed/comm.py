"""The process group: who am I, how many are we, and the collectives on arrays.

A ``Communicator`` has a rank (0 .. world_size - 1) and four collectives,
each called by every process, in the same order, with arrays of the same
shape and dtype on every rank:

    all_reduce(a, op="sum")   a := the elementwise sum (max, min) over the ranks
    broadcast(a, src=0)       a := rank src's a
    all_gather(a)             -> (world_size, *a.shape): every rank's a, by rank
    barrier()                 wait until every rank is here

``SingleProcess`` is the group of one (every collective returns at once);
``MPICommunicator`` runs them with mpi4py's buffer methods (``Allreduce``,
``Bcast``, ``Allgather``), which hand the NumPy array's memory to MPI with no
pickling. Both count what they send (``stats``): calls, bytes and seconds per
collective, which is how the tutorial and docs/benchmarks.md measure what an
all-reduce costs. Bytes are the size of the array handed to the collective
(what one rank contributes), not the traffic of MPI's algorithm for it.

On identical results: the MPI standard advises, and MPICH does, that an
all-reduce gives every rank the same bits. minires relies on it (every rank
applies the same update to the same weights) and checks it: the Trainer
compares a fingerprint of every rank's weights at every checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np

from ..backends.device import get_array_module, to_numpy

Array = Any
_OPS = ("sum", "max", "min")


class DistributedError(RuntimeError):
    """MPI could not be started, or the ranks disagree where they must agree."""


@dataclasses.dataclass
class CommStats:
    """Calls, bytes and seconds spent in each kind of collective."""

    calls: dict[str, int] = dataclasses.field(default_factory=dict)
    bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def add(self, kind: str, nbytes: int, seconds: float) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + 1
        self.bytes[kind] = self.bytes.get(kind, 0) + int(nbytes)
        self.seconds[kind] = self.seconds.get(kind, 0.0) + seconds

    def reset(self) -> None:
        self.calls.clear()
        self.bytes.clear()
        self.seconds.clear()


class Communicator:
    """The collectives every backend provides; this base class is the group of one."""

    rank: int = 0
    world_size: int = 1
    name = "single"

    def __init__(self) -> None:
        self.stats = CommStats()

    def all_reduce(self, a: Array, op: str = "sum") -> Array:
        """Replace ``a`` (in place) by the elementwise sum / max / min over the ranks."""
        _check_op(op)
        return a

    def broadcast(self, a: Array, src: int = 0) -> Array:
        """Replace ``a`` (in place) by rank ``src``'s ``a``."""
        return a

    def all_gather(self, a: Array) -> Array:
        """Every rank's ``a``, stacked by rank: shape (world_size, *a.shape)."""
        return get_array_module(a).asarray(a)[None].copy()

    def barrier(self) -> None:
        """Return when every rank has called barrier()."""

    def agree(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (one tiny all-reduce)."""
        return bool(self.all_reduce(np.array([int(bool(flag))], np.int64), op="max")[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size})"


class SingleProcess(Communicator):
    """The process group of one process: every collective is the identity."""


class MPICommunicator(Communicator):
    """Collectives over MPI_COMM_WORLD (or ``comm``), through mpi4py's buffer methods."""

    name = "mpi"

    def __init__(self, comm: Any = None) -> None:
        super().__init__()
        try:
            from mpi4py import MPI
        except ImportError as e:  # not installed, or no MPI library behind it
            raise DistributedError(
                f"MPI is not available ({e}); install it with: pip install 'minires[dist]'"
            ) from None
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
        self._ops = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}

    def all_reduce(self, a: Array, op: str = "sum") -> Array:
        _check_op(op)
        t0 = time.perf_counter()
        host = _host_contiguous(a)
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self._ops[op])
        _copy_back(host, a)
        self.stats.add("all_reduce", host.nbytes, time.perf_counter() - t0)
        return a

    def broadcast(self, a: Array, src: int = 0) -> Array:
        t0 = time.perf_counter()
        host = _host_contiguous(a)
        self.comm.Bcast(host, root=src)
        _copy_back(host, a)
        self.stats.add("broadcast", host.nbytes, time.perf_counter() - t0)
        return a

    def all_gather(self, a: Array) -> Array:
        t0 = time.perf_counter()
        host = np.ascontiguousarray(to_numpy(a))
        out = np.empty((self.world_size, *host.shape), host.dtype)
        self.comm.Allgather(host, out)
        self.stats.add("all_gather", host.nbytes, time.perf_counter() - t0)
        return get_array_module(a).asarray(out)

    def barrier(self) -> None:
        self.comm.Barrier()


def _check_op(op: str) -> None:
    if op not in _OPS:
        raise ValueError(f"all_reduce: op must be one of {', '.join(_OPS)}, got {op!r}")


def _host_contiguous(a: Array) -> np.ndarray:
    """A C-contiguous NumPy array MPI can write into: ``a`` itself when it is one.

    A CuPy array is copied to the host (an MPI built without CUDA support
    cannot read device memory; NCCL is the engine for GPUs, see docs).
    """
    if isinstance(a, np.ndarray) and a.flags.c_contiguous and a.flags.writeable:
        return a
    return np.ascontiguousarray(to_numpy(a))


def _copy_back(host: np.ndarray, a: Array) -> None:
    if host is not a:
        a[...] = get_array_module(a).asarray(host)


def launched_world_size() -> int:
    """How many processes the launcher started (1 when not started by mpiexec).

    Read from the environment MPICH's (PMI_SIZE) and Open MPI's
    (OMPI_COMM_WORLD_SIZE) launchers give each process, so that a single
    process never has to load MPI to find out that it is alone.
    """
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1
