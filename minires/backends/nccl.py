"""NCCL through CuPy: collectives on device arrays, which never leave the GPU.

The GPU twin of mpi4py's buffer methods. NCCL (NVIDIA's collective library)
moves data between GPUs directly (NVLink, PCIe, InfiniBand) and runs each
collective as a kernel on a CUDA stream, so an all-reduce of a gradient
bucket is queued behind the backward kernels that wrote it and before the
optimiser kernels that read it, with no copy to the host and no wait:

    uid = unique_id()                          # on rank 0; sent to the others over MPI
    group = NcclGroup(world_size, uid, rank)   # every rank, each on its own GPU
    group.all_reduce(a, "sum")                 # a := the sum over the ranks, in place
    group.broadcast(a, root=0)                 # a := rank 0's a
    group.all_gather(a)                        # -> (world_size, *a.shape)

CuPy's ``cupy.cuda.nccl`` is a thin layer over NCCL's C API: calls take raw
device pointers (``a.data.ptr``), element counts, NCCL's dtype and operation
constants, and the stream's pointer. This module is the only one that makes
those calls (minires/distributed/nccl.py builds the process group on it);
like cuda_backend.py it imports CuPy only when used.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

Array = Any  # a cupy.ndarray

# NCCL's element types, by NumPy dtype (bool travels as uint8, see _buffer).
_DTYPES = {
    "int8": "NCCL_INT8",
    "uint8": "NCCL_UINT8",
    "int32": "NCCL_INT32",
    "uint32": "NCCL_UINT32",
    "int64": "NCCL_INT64",
    "uint64": "NCCL_UINT64",
    "float16": "NCCL_FLOAT16",
    "float32": "NCCL_FLOAT32",
    "float64": "NCCL_FLOAT64",
}
_OPS = {"sum": "NCCL_SUM", "max": "NCCL_MAX", "min": "NCCL_MIN"}


class NcclUnavailable(RuntimeError):
    """CuPy or its NCCL bindings cannot be used here."""


def nccl_module() -> ModuleType:
    """``cupy.cuda.nccl``, or NcclUnavailable saying what to install."""
    try:
        import cupy  # noqa: F401
    except ImportError as e:
        raise NcclUnavailable(
            f"NCCL needs CuPy, which is not installed ({e}): pip install 'minires[gpu]'"
        ) from None
    try:
        from cupy.cuda import nccl
    except ImportError as e:
        raise NcclUnavailable(
            f"CuPy's NCCL bindings are not available ({e}): install NCCL for CuPy "
            "(pip install nvidia-nccl-cu12, or: python -m cupyx.tools.install_library "
            "--library nccl --cuda 12.x)"
        ) from None
    if not getattr(nccl, "available", True):
        raise NcclUnavailable("CuPy was built without NCCL (cupy.cuda.nccl.available is False)")
    return nccl


def device_count() -> int:
    """How many GPUs this process can see."""
    import cupy

    return int(cupy.cuda.runtime.getDeviceCount())


def use_device(index: int) -> None:
    """Make GPU ``index`` this process's current device (every new array is made there)."""
    import cupy

    cupy.cuda.Device(index).use()


def current_device() -> int:
    """The index of this process's current GPU."""
    import cupy

    return int(cupy.cuda.Device().id)


def unique_id() -> Any:
    """A new NCCL unique id (made by one rank, then given to every rank of the group)."""
    return nccl_module().get_unique_id()


def is_supported(dtype: Any) -> bool:
    """True when NCCL can reduce arrays of ``dtype`` (bool among them, as uint8)."""
    dtype = np.dtype(dtype)
    return dtype.name in _DTYPES or dtype == np.bool_


class NcclGroup:
    """One rank's NCCL communicator, on the current GPU and the current stream."""

    def __init__(self, world_size: int, uid: Any, rank: int) -> None:
        self.nccl = nccl_module()
        self.comm = self.nccl.NcclCommunicator(world_size, uid, rank)
        self.rank, self.world_size = rank, world_size

    def all_reduce(self, a: Array, op: str = "sum") -> Array:
        """Replace ``a`` (in place) by the elementwise sum / max / min over the ranks."""
        if op == "sum" and a.dtype == np.bool_:  # 2 in a bool's byte: neither True nor False
            raise TypeError(
                "NCCL all_reduce: a sum of bools is not a bool; use op='max' (logical or) "
                "or 'min' (logical and)"
            )
        buf = _buffer(a, "all_reduce")
        ptr = buf.data.ptr
        self.comm.allReduce(
            ptr, ptr, buf.size, self._dtype(buf), getattr(self.nccl, _OPS[op]), _stream()
        )
        _copy_back(buf, a)
        return a

    def broadcast(self, a: Array, root: int = 0) -> Array:
        """Replace ``a`` (in place) by rank ``root``'s ``a``."""
        buf = _buffer(a, "broadcast")
        self.comm.bcast(buf.data.ptr, buf.size, self._dtype(buf), root, _stream())
        _copy_back(buf, a)
        return a

    def all_gather(self, a: Array) -> Array:
        """Every rank's ``a``, stacked by rank: a new array of shape (world_size, *a.shape)."""
        import cupy

        src = _buffer(a, "all_gather")
        out = cupy.empty((self.world_size, *a.shape), src.dtype)
        self.comm.allGather(src.data.ptr, out.data.ptr, src.size, self._dtype(src), _stream())
        return out.view(a.dtype) if out.dtype != a.dtype else out

    def _dtype(self, buf: Array) -> int:
        return getattr(self.nccl, _DTYPES[buf.dtype.name])


def _buffer(a: Array, op: str) -> Array:
    """``a`` as NCCL can use it: C-contiguous memory of a type NCCL knows.

    ``a`` itself when it is (then the collective works in place); otherwise a
    contiguous device copy, which the caller copies back. Bool is sent as
    uint8: a view of the same bytes, so a max of bools is a logical or.
    """
    import cupy

    if not isinstance(a, cupy.ndarray):
        raise TypeError(f"NCCL {op}: expected a CuPy array, got {type(a).__name__}")
    if not is_supported(a.dtype):
        raise TypeError(
            f"NCCL {op}: cannot reduce dtype {a.dtype}; supported: bool, {', '.join(_DTYPES)}"
        )
    buf = a if a.flags.c_contiguous else cupy.ascontiguousarray(a)
    return buf.view(np.uint8) if buf.dtype == np.bool_ else buf


def _copy_back(buf: Array, a: Array) -> None:
    if not a.flags.c_contiguous:  # buf is a copy (else it is ``a``'s own memory)
        a[...] = buf.view(a.dtype) if buf.dtype != a.dtype else buf


def _stream() -> int:
    """The current stream's pointer: NCCL queues the collective there, behind the kernels."""
    import cupy

    return cupy.cuda.get_current_stream().ptr
