"""``cupy.cuda.nccl``, played over MPI: the processes mpiexec started stand in for GPUs.

When the stand-in is installed, ``from cupy.cuda import nccl`` gives this
module. Its :class:`NcclCommunicator` has CuPy's signature and calling
convention (raw device pointers, element counts, NCCL's dtype and operation
constants, a stream pointer) and does each collective with the real mpi4py
between the real processes of the test: it reads and writes the memory
behind the pointers, which is the NumPy memory of the stand-in's arrays.

It is as strict as NCCL where minires could go wrong without noticing:

* the unique id must be the same on every rank (NCCL would hang), and
  ``ndev`` and ``rank`` must be MPI's size and rank;
* two ranks on one machine may not use the same GPU ("Duplicate GPU");
* a pointer into an array of the stand-in (``cupy.empty``'s, which sit
  between guard zones) must not reach past its end: a wrong count fails
  here, as NCCL would read or write past the buffer;
* an unknown dtype or op constant is refused.

Every call is counted (kind "nccl", what the call is, its bytes: one rank's
buffer); collectives run synchronously, so the stream pointer is only checked
to be an int.
"""

from __future__ import annotations

import ctypes
import os
import socket
from typing import Any

import numpy as np

from . import array
from .counts import record

available = True

# NCCL's enums (nccl.h), under CuPy's names.
NCCL_INT8, NCCL_UINT8, NCCL_INT32, NCCL_UINT32 = 0, 1, 2, 3
NCCL_INT64, NCCL_UINT64, NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64 = 4, 5, 6, 7, 8
NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN = 0, 1, 2, 3

_DTYPES = {
    NCCL_INT8: np.int8,
    NCCL_UINT8: np.uint8,
    NCCL_INT32: np.int32,
    NCCL_UINT32: np.uint32,
    NCCL_INT64: np.int64,
    NCCL_UINT64: np.uint64,
    NCCL_FLOAT16: np.float16,
    NCCL_FLOAT32: np.float32,
    NCCL_FLOAT64: np.float64,
}


class NcclError(RuntimeError):
    __module__ = "cupy_backends.cuda.libs.nccl"


def get_unique_id() -> tuple[int, ...]:
    """128 random bytes, as CuPy's tuple: only equal ids make one communicator."""
    return tuple(os.urandom(128))


def _mpi() -> Any:
    from mpi4py import MPI

    return MPI


def _memory(ptr: int, count: int, datatype: int, what: str) -> np.ndarray:
    """The ``count`` elements of ``datatype`` at device address ``ptr``, as a NumPy array."""
    if datatype not in _DTYPES:
        raise NcclError(f"ncclInvalidArgument: {what}: unknown datatype {datatype}")
    if not isinstance(ptr, int) or ptr == 0 or count < 0:
        raise NcclError(f"ncclInvalidArgument: {what}: pointer {ptr!r}, count {count}")
    dtype = np.dtype(_DTYPES[datatype])
    _check_inside_allocation(ptr, count * dtype.itemsize, what)
    raw = (ctypes.c_byte * (count * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype)


def _check_inside_allocation(ptr: int, nbytes: int, what: str) -> None:
    """Refuse a range that starts inside a guarded allocation and runs past its end."""
    for ref, _ in list(array._guards.values()):
        buffer = ref()
        if buffer is None:
            continue
        start = buffer.__array_interface__["data"][0] + array.GUARD * buffer.itemsize
        end = start + (buffer.size - 2 * array.GUARD) * buffer.itemsize
        if start <= ptr < end and ptr + nbytes > end:
            raise NcclError(
                f"ncclInvalidArgument: {what}: {nbytes} bytes from the pointer run "
                f"{ptr + nbytes - end} bytes past the end of its allocation"
            )


class NcclCommunicator:
    """``cupy.cuda.nccl.NcclCommunicator(ndev, commId, rank)``: one rank's communicator."""

    __module__ = "cupy.cuda.nccl"

    def __init__(self, ndev: int, commId: Any, rank: int) -> None:  # noqa: N803 (CuPy's)
        from .module import Device

        MPI = _mpi()
        self.mpi = MPI.COMM_WORLD.Dup()  # NCCL's own channel, apart from the caller's MPI
        self._ndev, self._rank, self._device = ndev, rank, Device().id
        if (ndev, rank) != (self.mpi.Get_size(), self.mpi.Get_rank()):
            raise NcclError(
                f"ncclInvalidArgument: NcclCommunicator({ndev}, id, {rank}) in MPI rank "
                f"{self.mpi.Get_rank()} of {self.mpi.Get_size()}"
            )
        ids = self.mpi.allgather(bytes(commId))
        if len(set(ids)) != 1:
            raise NcclError("ncclInvalidUsage: the ranks were given different unique ids")
        places = self.mpi.allgather((socket.gethostname(), self._device))
        if len(set(places)) != len(places):
            raise NcclError(f"ncclInvalidUsage: Duplicate GPU detected: {places}")
        record("nccl", "NcclCommunicator")

    def device_id(self) -> int:
        return self._device

    def rank_id(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._ndev

    def allReduce(  # noqa: N802 (CuPy's names)
        self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int, stream: int
    ) -> None:
        MPI = _mpi()
        ops = {NCCL_SUM: MPI.SUM, NCCL_PROD: MPI.PROD, NCCL_MAX: MPI.MAX, NCCL_MIN: MPI.MIN}
        if op not in ops:
            raise NcclError(f"ncclInvalidArgument: allReduce: unknown op {op}")
        _check_stream(stream)
        recv = _memory(recvbuf, count, datatype, "allReduce")
        in_place = sendbuf == recvbuf
        send = MPI.IN_PLACE if in_place else _memory(sendbuf, count, datatype, "allReduce")
        self.mpi.Allreduce(send, recv, op=ops[op])
        record("nccl", "allReduce", recv.nbytes)

    def bcast(self, buff: int, count: int, datatype: int, root: int, stream: int) -> None:
        _check_stream(stream)
        buf = _memory(buff, count, datatype, "bcast")
        self.mpi.Bcast(buf, root=root)
        record("nccl", "bcast", buf.nbytes)

    def allGather(  # noqa: N802
        self, sendbuf: int, recvbuf: int, count: int, datatype: int, stream: int
    ) -> None:
        _check_stream(stream)
        send = _memory(sendbuf, count, datatype, "allGather")
        recv = _memory(recvbuf, count * self._ndev, datatype, "allGather")
        self.mpi.Allgather(send, recv)
        record("nccl", "allGather", send.nbytes)

    def destroy(self) -> None:
        self.mpi.Free()


def _check_stream(stream: Any) -> None:
    if not isinstance(stream, int):
        raise NcclError(f"ncclInvalidArgument: the stream must be a pointer (int), got {stream!r}")
