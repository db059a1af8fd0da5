"""The ``cupy`` and ``cupyx`` modules of the stand-in: the calls minires makes.

:func:`make_cupy` builds a fresh ``cupy`` module object (and ``cupyx``) whose
names are those listed here and nothing else: a name minires starts to use
that the stand-in does not model fails with an AttributeError saying so,
rather than with a silent NumPy fallback.

Every function follows CuPy's rules as far as minires can see them: device
arrays in, device arrays out (0-d for full reductions), host arrays refused
except by ``array``/``asarray`` (which copy them to the device, counted), and
each call counted as the kernels a GPU would run (counts.py).
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np

from . import kernels, libraries, nccl
from .array import (
    device_array,
    elementwise,
    guarded_empty,
    matmul,
    ndarray,
    operand,
    reduction,
    wrap,
)
from .counts import record

DEVICE_NAME = b"cupy stand-in (NumPy, kernels run on the CPU)"

# --------------------------------------------------------------------------
# Creating arrays and moving them between host and device
# --------------------------------------------------------------------------


def _c_order(order: str | None) -> None:
    if order not in (None, "C", "K", "A"):
        raise NotImplementedError(f"cupy stand-in: order={order!r} is not modelled")


def empty(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    _c_order(order)
    return wrap(guarded_empty(shape, dtype))


def _like(a: Any, dtype: Any, shape: Any) -> np.ndarray:
    """Uninitialised memory in the layout of ``a`` (order "K"), poisoned."""
    a = device_array(a, "cupy.*_like")
    out = np.empty_like(a._a, dtype=dtype, shape=shape)
    out.fill(np.nan if out.dtype.kind in "fc" else -7777 if out.dtype.kind == "i" else 0)
    return out


def empty_like(a: Any, dtype: Any = None, order: str = "K", shape: Any = None) -> ndarray:
    return wrap(_like(a, dtype, shape))


def zeros(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    _c_order(order)
    record("fill", "zeros")  # cudaMemsetAsync
    return wrap(np.zeros(shape, dtype=dtype))


def _filled(out: np.ndarray, value: Any, what: str) -> ndarray:
    record("fill", what)
    out[...] = operand(value)
    return wrap(out)


def zeros_like(a: Any, dtype: Any = None, order: str = "K", shape: Any = None) -> ndarray:
    return _filled(_like(a, dtype, shape), 0, "zeros_like")


def ones(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    return _filled(empty(shape, dtype, order)._a, 1, "ones")


def ones_like(a: Any, dtype: Any = None, order: str = "K", shape: Any = None) -> ndarray:
    return _filled(_like(a, dtype, shape), 1, "ones_like")


def full(shape: Any, fill_value: Any, dtype: Any = None, order: str = "C") -> ndarray:
    if dtype is None:
        dtype = np.asarray(operand(fill_value)).dtype
    return _filled(empty(shape, dtype, order)._a, fill_value, "full")


def full_like(a: Any, fill_value: Any, dtype: Any = None, order: str = "K", shape: Any = None):
    return _filled(_like(a, dtype, shape), fill_value, "full_like")


def arange(*args: Any, dtype: Any = None) -> ndarray:
    record("elementwise", "arange")
    return wrap(np.arange(*args, dtype=dtype))


def _to_device(obj: Any, dtype: Any, ndmin: int) -> ndarray:
    """A host object (NumPy array, list, number) copied to the device."""
    host = np.array(obj, dtype=dtype, copy=True, ndmin=ndmin)
    if host.dtype == object:  # e.g. a list holding device arrays, or None
        raise ValueError(f"Unsupported dtype object (cannot copy {type(obj)} to the device)")
    if not (host.flags.c_contiguous or host.flags.f_contiguous):
        host = np.ascontiguousarray(host)
    record("h2d", "asarray", host.nbytes)
    return wrap(host)


def array(obj: Any, dtype: Any = None, copy: bool = True, order: str = "K", ndmin: int = 0):
    _c_order(order)
    if not isinstance(obj, ndarray):
        return _to_device(obj, dtype, ndmin)
    dtype = obj.dtype if dtype is None else np.dtype(dtype)
    a = obj._a if obj.ndim >= ndmin else obj._a.reshape((1,) * (ndmin - obj.ndim) + obj.shape)
    if dtype != obj.dtype:
        record("elementwise", "astype")
    elif copy:
        record("copy", "array")
    else:
        return obj if a is obj._a else wrap(a)
    return wrap(np.array(a, dtype=dtype, copy=True))


def asarray(a: Any, dtype: Any = None, order: str | None = None) -> ndarray:
    return array(a, dtype, copy=False, order=order or "K")


def ascontiguousarray(a: Any, dtype: Any = None) -> ndarray:
    """``a`` as it is if C-contiguous with that dtype; else a copy (a layout copy).

    As CuPy's, a 0-d array comes back 1-d (ndmin=1).
    """
    if not isinstance(a, ndarray):
        return _to_device(np.ascontiguousarray(a, dtype=dtype), None, 1)
    dtype = a.dtype if dtype is None else np.dtype(dtype)
    view = a._a if a.ndim else a._a.reshape(1)
    if view.flags.c_contiguous and dtype == a.dtype:
        return a if view is a._a else wrap(view)
    record("copy", "ascontiguousarray")
    if not view.flags.c_contiguous:
        record("layout_copy", "ascontiguousarray")
    else:
        record("elementwise", "astype")
    return wrap(np.ascontiguousarray(view, dtype=dtype))


def asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None) -> np.ndarray:
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return np.asarray(a, order=order)


def get_array_module(*args: Any) -> ModuleType:
    import sys

    if any(isinstance(a, ndarray) for a in args):
        return sys.modules["cupy"]
    return np


# --------------------------------------------------------------------------
# Kernels: elementwise, reductions, GEMMs
# --------------------------------------------------------------------------

UFUNCS = (
    "add subtract multiply divide true_divide floor_divide power float_power remainder mod "
    "negative positive absolute fabs sign reciprocal square sqrt cbrt exp exp2 expm1 log log2 "
    "log10 log1p sin cos tan tanh arctan arctan2 hypot maximum minimum fmax fmin floor ceil "
    "trunc rint copysign equal not_equal less less_equal greater greater_equal logical_and "
    "logical_or logical_not logical_xor bitwise_and bitwise_or bitwise_xor invert isfinite "
    "isnan isinf signbit"
).split()
REDUCTIONS = "sum mean var std prod max min amax amin argmax argmin all any count_nonzero".split()


def _ufunc(name: str) -> Any:
    uf = np.abs if name == "abs" else getattr(np, name)

    def f(*args: Any, **kwargs: Any) -> Any:
        return elementwise(uf, *args, what=name, **kwargs)

    f.__name__ = name
    return f


def _reduction(name: str) -> Any:
    fn = getattr(np, name)

    def f(a: Any, *args: Any, **kwargs: Any) -> Any:
        return reduction(fn, a, *args, what=name, **kwargs)

    f.__name__ = name
    return f


def where(condition: Any, x: Any = None, y: Any = None) -> Any:
    if x is None and y is None:
        raise NotImplementedError("cupy stand-in: where(condition) (nonzero) is not modelled")
    return elementwise(np.where, condition, x, y, what="where")


def clip(a: Any, a_min: Any = None, a_max: Any = None, out: Any = None) -> Any:
    return elementwise(np.clip, a, a_min, a_max, out=out, what="clip")


def copyto(dst: Any, src: Any, casting: str = "same_kind", where: Any = None) -> None:
    dst = device_array(dst, "cupy.copyto")
    kwargs = {} if where is None else {"where": operand(where)}
    record("elementwise", "copyto")
    np.copyto(dst._a, operand(src), casting=casting, **kwargs)


def dot(a: Any, b: Any, out: Any = None) -> Any:
    return matmul(a, b, out, what="dot")


def tensordot(a: Any, b: Any, axes: Any = 2) -> Any:
    a, b = device_array(a, "cupy.tensordot"), device_array(b, "cupy.tensordot")
    record("copy", "tensordot operands")  # CuPy transposes both operands to 2-D first
    libraries.load("cublas")
    record("cublas", "tensordot")
    return wrap(np.tensordot(a._a, b._a, axes))


def einsum(subscripts: str, *operands: Any, **kwargs: Any) -> Any:
    unknown = sorted(set(kwargs) - {"dtype", "optimize"})
    if unknown:  # CuPy's einsum has no out, order or casting
        raise TypeError(f"Did not understand the following kwargs: {unknown}")
    arrays = [device_array(a, "cupy.einsum")._a for a in operands]
    libraries.load("cublas")
    record("cublas", f"einsum {subscripts}")
    return wrap(np.einsum(subscripts, *arrays, **kwargs))


def array_equal(a1: Any, a2: Any, equal_nan: bool = False) -> ndarray:
    a1, a2 = device_array(a1, "cupy.array_equal"), device_array(a2, "cupy.array_equal")
    if a1.shape != a2.shape:
        return array(False)  # as CuPy: a new device array, copied from the host
    record("elementwise", "array_equal")
    record("reduction", "array_equal")
    return wrap(np.asarray(np.array_equal(a1._a, a2._a, equal_nan=equal_nan)))


def allclose(a: Any, b: Any, rtol: float = 1e-5, atol: float = 1e-8, equal_nan: bool = False):
    a, b = device_array(a, "cupy.allclose"), device_array(b, "cupy.allclose")
    record("elementwise", "isclose")
    record("reduction", "allclose")
    return wrap(np.asarray(np.allclose(a._a, b._a, rtol, atol, equal_nan)))


def isclose(a: Any, b: Any, rtol: float = 1e-5, atol: float = 1e-8, equal_nan: bool = False):
    return elementwise(np.isclose, a, b, rtol, atol, equal_nan, what="isclose")


# --------------------------------------------------------------------------
# Views and shapes (no kernel)
# --------------------------------------------------------------------------


def reshape(a: Any, newshape: Any, order: str = "C") -> ndarray:
    return device_array(a, "cupy.reshape").reshape(newshape, order=order)


def ravel(a: Any, order: str = "C") -> ndarray:
    return device_array(a, "cupy.ravel").ravel(order)


def transpose(a: Any, axes: Any = None) -> ndarray:
    return wrap(np.transpose(device_array(a, "cupy.transpose")._a, axes))


def swapaxes(a: Any, axis1: int, axis2: int) -> ndarray:
    return device_array(a, "cupy.swapaxes").swapaxes(axis1, axis2)


def moveaxis(a: Any, source: Any, destination: Any) -> ndarray:
    return wrap(np.moveaxis(device_array(a, "cupy.moveaxis")._a, source, destination))


def expand_dims(a: Any, axis: Any) -> ndarray:
    return wrap(np.expand_dims(device_array(a, "cupy.expand_dims")._a, axis))


def squeeze(a: Any, axis: Any = None) -> ndarray:
    return device_array(a, "cupy.squeeze").squeeze(axis)


def broadcast_to(a: Any, shape: Any) -> ndarray:
    return wrap(np.broadcast_to(device_array(a, "cupy.broadcast_to")._a, shape))


def concatenate(arrays: Any, axis: int = 0, out: Any = None, dtype: Any = None) -> ndarray:
    parts = [device_array(a, "cupy.concatenate")._a for a in arrays]
    record("copy", "concatenate")
    return wrap(np.concatenate(parts, axis=axis, dtype=dtype))


def stack(arrays: Any, axis: int = 0, out: Any = None) -> ndarray:
    parts = [device_array(a, "cupy.stack")._a for a in arrays]
    record("copy", "stack")
    return wrap(np.stack(parts, axis=axis))


def may_share_memory(a: Any, b: Any, max_work: Any = None) -> bool:
    if not (isinstance(a, ndarray) and isinstance(b, ndarray)):
        return False
    return bool(np.may_share_memory(a._a, b._a))


def shares_memory(a: Any, b: Any, max_work: Any = None) -> bool:
    if not (isinstance(a, ndarray) and isinstance(b, ndarray)):
        return False
    return bool(np.shares_memory(a._a, b._a))


def shape(a: Any) -> tuple[int, ...]:
    return device_array(a, "cupy.shape").shape


def ndim(a: Any) -> int:
    return device_array(a, "cupy.ndim").ndim


def size(a: Any) -> int:
    return device_array(a, "cupy.size").size


# --------------------------------------------------------------------------
# cupy.cuda and cupyx
# --------------------------------------------------------------------------


class CUDARuntimeError(RuntimeError):
    __module__ = "cupy_backends.cuda.api.runtime"


class Device:
    """``cupy.cuda.Device(id)``: the current GPU, and a way to wait for it."""

    __module__ = "cupy.cuda.device"
    count = 1  # GPUs the stand-in pretends to have (install(device_count=...))
    current = 0  # the GPU made current by use(); every array is "on" it (one memory)

    def __init__(self, device: Any = None):
        self.id = Device.current if device is None else int(device)
        if not 0 <= self.id < Device.count:
            raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")

    compute_capability = "90"

    def synchronize(self) -> None:
        record("sync", "Device.synchronize")

    def use(self) -> None:
        # Any of the `count` devices may be current (one per MPI process in the
        # NCCL tests); a process that switched devices mid-way is not modelled.
        Device.current = self.id

    def __enter__(self) -> Device:
        self.use()
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"


class Stream:
    __module__ = "cupy.cuda.stream"
    ptr = 0  # the null stream's handle, as CuPy's

    def synchronize(self) -> None:
        record("sync", "Stream.synchronize")


def _get_device_count() -> int:
    return Device.count


def _get_device_properties(device: int) -> dict[str, Any]:
    Device(device)
    return {"name": DEVICE_NAME, "totalGlobalMem": 0, "multiProcessorCount": 1}


def scatter_add(a: Any, slices: Any, value: Any) -> None:
    """``cupyx.scatter_add``: a[slices] += value, every share of a repeated index kept."""
    from .array import _index

    a = device_array(a, "cupyx.scatter_add")
    index, _, _ = _index(slices)
    record("elementwise", "scatter_add")
    np.add.at(a._a, index, operand(value) if not isinstance(value, np.ndarray) else value)


def _routines_linalg() -> ModuleType:
    """``cupy._core._routines_linalg``'s compute types: whether float32 products use TF32.

    As CuPy: decided per dtype at first use, TF32 for float32 when CUPY_TF32 > 0;
    ``set_compute_type`` keeps the default (with a warning) below compute
    capability 8.0. Only the choice is modelled: the products stay NumPy's.
    """
    default, tf32 = 1, 7
    chosen: dict[str, int] = {}

    def get_compute_type(dtype: Any) -> int:
        char = np.dtype(dtype).char
        if char not in chosen:
            use_tf32 = char in "fF" and int(os.getenv("CUPY_TF32", "0")) > 0
            chosen[char] = tf32 if use_tf32 else default
        return chosen[char]

    def set_compute_type(dtype: Any, compute_type: int) -> None:
        if compute_type == tf32 and int(Device.compute_capability) < 80:
            warnings.warn(
                "COMPUTE_TYPE_BF16 and COMPUTE_TYPE_TF32 are only available on GPUs with "
                "compute capability 8.0 or higher. COMPUTE_TYPE_DEFAULT will be used instead.",
                stacklevel=2,
            )
            compute_type = default
        chosen[np.dtype(dtype).char] = compute_type

    return _module(
        "cupy._core._routines_linalg",
        "cuBLAS's compute types",
        get_compute_type=get_compute_type,
        set_compute_type=set_compute_type,
    )


def _module(name: str, doc: str, **attrs: Any) -> ModuleType:
    m = ModuleType(name, doc)

    def missing(attr: str) -> Any:
        raise AttributeError(
            f"module {name!r} of the test stand-in (tests/cupy_standin) has no attribute "
            f"{attr!r}: the stand-in models only what minires calls; add it there"
        )

    m.__dict__.update(attrs)
    m.__getattr__ = missing  # type: ignore[attr-defined]
    return m


_DTYPES = (
    "bool_ int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64 "
    "complex64 complex128 intp integer floating number generic dtype finfo iinfo "
    "result_type promote_types can_cast issubdtype nan inf pi e newaxis"
).split()

_FUNCTIONS = {
    **{name: _ufunc(name) for name in UFUNCS},
    "abs": _ufunc("abs"),
    **{name: _reduction(name) for name in REDUCTIONS},
    **{
        f.__name__: f
        for f in (
            empty,
            empty_like,
            zeros,
            zeros_like,
            ones,
            ones_like,
            full,
            full_like,
            arange,
            array,
            asarray,
            ascontiguousarray,
            asnumpy,
            get_array_module,
            where,
            clip,
            copyto,
            dot,
            matmul,
            tensordot,
            einsum,
            array_equal,
            allclose,
            isclose,
            reshape,
            ravel,
            transpose,
            swapaxes,
            moveaxis,
            expand_dims,
            squeeze,
            broadcast_to,
            concatenate,
            stack,
            may_share_memory,
            shares_memory,
            shape,
            ndim,
            size,
        )
    },
}
# What ndarray.__array_function__ dispatches NumPy's functions to.
functions = SimpleNamespace(**_FUNCTIONS)


def make_cupy() -> tuple[ModuleType, ModuleType]:
    """Fresh ``cupy`` and ``cupyx`` module objects."""
    runtime = _module(
        "cupy.cuda.runtime",
        "CUDA runtime calls",
        getDeviceCount=_get_device_count,
        getDeviceProperties=_get_device_properties,
        runtimeGetVersion=lambda: 12000,
        driverGetVersion=lambda: 12000,
        CUDARuntimeError=CUDARuntimeError,
    )
    null_stream = Stream()
    cuda = _module(
        "cupy.cuda",
        "CUDA devices and streams",
        Device=Device,
        Stream=SimpleNamespace(null=null_stream),
        get_current_stream=lambda: null_stream,
        runtime=runtime,
        nccl=nccl,
        is_available=lambda: Device.count > 0,
    )
    cupy = _module(
        "cupy",
        "A stand-in for CuPy (tests/cupy_standin): NumPy storage, counted like a GPU.",
        __version__="0+standin",
        __path__=[],
        ndarray=ndarray,
        cuda=cuda,
        RawModule=kernels.RawModule,
        RawKernel=kernels.RawKernel,
        **{name: getattr(np, name) for name in _DTYPES},
        **_FUNCTIONS,
    )
    linalg = _routines_linalg()
    cupy._core = _module("cupy._core", "CuPy's core", __path__=[], _routines_linalg=linalg)
    cupyx = _module("cupyx", "cupyx, as far as minires uses it", scatter_add=scatter_add)
    return cupy, cupyx


__all__ = ["make_cupy", "functions", "Device"]
