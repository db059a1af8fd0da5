"""``cupy.ndarray``, played by a NumPy array that will not pass for one.

An :class:`ndarray` holds a NumPy array (``_a``, the "device memory") and
behaves like CuPy's where minires can see it:

* ``type(x).__module__`` is "cupy" (minires's ``is_cupy_array``), and it is
  *not* a ``numpy.ndarray``: NumPy refuses it (``np.asarray(x)`` raises, as
  CuPy's "Implicit conversion to a NumPy array is not allowed"), and it
  refuses NumPy arrays as operands ("Unsupported type"), so code that mixes
  host and device arrays fails here as it would on a GPU.
* Reductions return 0-d device arrays, never Python or NumPy scalars; a
  scalar reaches the host only through ``get()``, ``item()``, ``float()``,
  ``int()``, ``bool()``..., each of which is counted as a host sync.
* NumPy's functions and ufuncs dispatch to the stand-in (``__array_ufunc__``,
  ``__array_function__``), as they do to CuPy.
* ``flags`` has CuPy's three flags (c_contiguous, f_contiguous, owndata) and
  no ``writeable``; ``data`` is a memory pointer with ``ptr``.

Where the stand-in is unsure of CuPy's exact behaviour it is stricter (CuPy
functions refuse host arrays here; kernels also refuse non-contiguous
arrays), with one exception: a host array as an index or as the value of
``x[...] = value`` is accepted, and counted as a host-to-device copy.

Every operation records what a GPU would do (counts.py). Arrays from
:func:`guarded_empty` (``cupy.empty``) are filled with NaN (integers: -7777)
and sit between guard zones that are checked after each kernel launch, as
the CPU harness does: a kernel that forgets an element, or writes past an
end, fails the test that made it.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import libraries
from .counts import record

PY_SCALARS = (bool, int, float, complex)
IMPLICIT_CONVERSION = (
    "Implicit conversion to a NumPy array is not allowed. "
    "Please use `.get()` to construct a NumPy array explicitly."
)

# --------------------------------------------------------------------------
# Guarded, poisoned allocations
# --------------------------------------------------------------------------

GUARD = 16  # elements of guard zone on each side of an allocation
_guards: dict[int, tuple[weakref.ref, Any]] = {}  # id(buffer) -> (buffer, guard value)


def _forget(key: int) -> Callable[[Any], None]:
    return lambda _ref: _guards.pop(key, None)


def guarded_empty(shape: Any, dtype: Any = float) -> np.ndarray:
    """A C-contiguous array of NaN (or -7777) inside a buffer with guard zones."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimensions are not allowed: {shape}")
    n = math.prod(shape)
    guard, poison = {"f": (7777.25, np.nan), "c": (7777.25, np.nan), "b": (True, False)}.get(
        dtype.kind, (77, -7777 if dtype.kind == "i" else 7777)
    )
    buffer = np.full(n + 2 * GUARD, guard, dtype=dtype)
    buffer[GUARD : GUARD + n] = poison
    _guards[id(buffer)] = (weakref.ref(buffer, _forget(id(buffer))), guard)
    return buffer[GUARD : GUARD + n].reshape(shape)


def check_guards(arrays: list[np.ndarray], kernel: str) -> None:
    """Raise if a kernel wrote into the guard zone around any of ``arrays``."""
    for a in arrays:
        owner = a if a.base is None else a.base
        entry = _guards.get(id(owner))
        if entry is None or entry[0]() is not owner:
            continue
        guard = entry[1]
        if not (np.all(owner[:GUARD] == guard) and np.all(owner[-GUARD:] == guard)):
            raise AssertionError(f"{kernel} wrote outside the bounds of an array it was given")


# --------------------------------------------------------------------------
# Small CuPy objects an array exposes
# --------------------------------------------------------------------------


class Flags:
    """CuPy's ``ndarray.flags``: three flags, no ``writeable``."""

    __module__ = "cupy._core.flags"

    def __init__(self, a: np.ndarray):
        self.c_contiguous = bool(a.flags.c_contiguous)
        self.f_contiguous = bool(a.flags.f_contiguous)
        self.owndata = a.base is None

    def __getitem__(self, name: str) -> bool:
        key = {"C_CONTIGUOUS": "c_contiguous", "F_CONTIGUOUS": "f_contiguous", "OWNDATA": "owndata"}
        return getattr(self, key[name])

    def __repr__(self) -> str:
        return (
            f"  C_CONTIGUOUS : {self.c_contiguous}\n  F_CONTIGUOUS : {self.f_contiguous}\n"
            f"  OWNDATA : {self.owndata}"
        )


class MemoryPointer:
    """``ndarray.data``: where the array's memory starts on the device."""

    __module__ = "cupy.cuda.memory"

    def __init__(self, a: np.ndarray):
        from .module import Device

        self.ptr = int(a.__array_interface__["data"][0])
        self.device_id = Device.current


# --------------------------------------------------------------------------
# Operands
# --------------------------------------------------------------------------


def wrap(a: Any) -> ndarray:
    """A stand-in array holding ``a`` (a NumPy scalar becomes a 0-d array)."""
    out = object.__new__(ndarray)
    out._a = a if isinstance(a, np.ndarray) else np.asarray(a)
    return out


def unsupported(x: Any) -> TypeError:
    return TypeError(f"Unsupported type {type(x)}")


def operand(x: Any) -> Any:
    """``x`` as NumPy sees it: a device array's memory, or a scalar; never a host array."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (*PY_SCALARS, np.generic)):
        return x
    raise unsupported(x)


def device_array(x: Any, what: str) -> ndarray:
    if not isinstance(x, ndarray):
        raise TypeError(f"{what}: needs a cupy.ndarray, got {type(x)} (Unsupported type)")
    return x


def _out(out: Any) -> tuple[Any, tuple[np.ndarray, ...] | None]:
    """``out=`` as given (one array or a tuple), and the NumPy arrays it names."""
    if out is None:
        return None, None
    outs = out if isinstance(out, tuple) else (out,)
    for o in outs:
        device_array(o, "out")
    return (outs[0] if len(outs) == 1 else outs), tuple(o._a for o in outs)


def _result(r: Any) -> Any:
    if isinstance(r, tuple):
        return tuple(wrap(x) for x in r)
    return wrap(r)


def elementwise(fn: Callable, *inputs: Any, what: str | None = None, **kwargs: Any) -> Any:
    """One elementwise kernel: ``fn`` (a ufunc, or np.where/np.clip...) on device operands."""
    args = [operand(x) for x in inputs]
    given, outs = _out(kwargs.pop("out", None))
    if outs is not None:
        kwargs["out"] = outs
    if "where" in kwargs and isinstance(kwargs["where"], ndarray):
        kwargs["where"] = kwargs["where"]._a
    record("elementwise", what or fn.__name__)
    r = fn(*args, **kwargs)
    return given if given is not None else _result(r)


def reduction(fn: Callable, a: Any, *args: Any, what: str | None = None, **kwargs: Any) -> Any:
    """One reduction kernel: ``fn`` (np.sum, np.argmax...) giving a device array, 0-d or not."""
    a = device_array(a, f"cupy.{what or fn.__name__}")
    given, outs = _out(kwargs.pop("out", None))
    if outs is not None:
        kwargs["out"] = outs[0]
    record("reduction", what or fn.__name__)
    r = fn(a._a, *args, **kwargs)
    return given if given is not None else wrap(r)


def _gemm_operand(a: ndarray) -> None:
    """cuBLAS reads a matrix that is C- or F-contiguous; CuPy copies any other first."""
    if a.ndim == 2 and not (a._a.flags.c_contiguous or a._a.flags.f_contiguous):
        record("copy", "matmul operand")
        record("layout_copy", "matmul operand neither C- nor F-contiguous")


def matmul(a: Any, b: Any, out: Any = None, what: str = "matmul") -> Any:
    """One cuBLAS call (plus a copy for each operand cuBLAS cannot read as it is)."""
    a, b = device_array(a, f"cupy.{what}"), device_array(b, f"cupy.{what}")
    _gemm_operand(a)
    _gemm_operand(b)
    given, outs = _out(out)
    libraries.load("cublas")
    record("cublas", what)
    r = np.matmul(a._a, b._a, out=None if outs is None else outs[0])
    return given if given is not None else wrap(r)


def _index(key: Any) -> tuple[tuple, bool, bool]:
    """(NumPy index, whether it gathers/scatters, whether it holds a boolean mask).

    An Ellipsis is appended so that indexing every axis with an int gives a
    0-d *view* (CuPy's behaviour), not a NumPy scalar.
    """
    items = key if isinstance(key, tuple) else (key,)
    out: list[Any] = []
    advanced = mask = False
    for item in items:
        if isinstance(item, ndarray):
            advanced, mask = True, mask or item.dtype == np.bool_
            out.append(item._a)
        elif isinstance(item, (np.ndarray, list)):
            host = np.asarray(item)
            record("h2d", "index array", host.nbytes)
            advanced, mask = True, mask or host.dtype == np.bool_
            out.append(host)
        else:
            out.append(item)
    if not any(item is Ellipsis for item in out):
        out.append(Ellipsis)
    return tuple(out), advanced, mask


def _wrapped(index: tuple, shape: tuple[int, ...]) -> tuple:
    """``index`` with its integer arrays taken modulo their axis's length.

    CuPy's integer array indexing wraps out-of-bounds indices around where
    NumPy raises IndexError ("Differences between CuPy and NumPy"), so a
    gather with a bad index reads a wrong element and goes on: modelled here.
    """
    out, axis = [], 0
    for item in index:
        if item is Ellipsis:  # the axes after it are counted from the end: left as given
            return (*out, *index[len(out) :])
        if isinstance(item, np.ndarray) and item.dtype.kind in "iu" and axis < len(shape):
            out.append(np.mod(item, max(shape[axis], 1)))
        else:
            out.append(item)
        if item is not None:
            axis += item.ndim if isinstance(item, np.ndarray) and item.dtype == np.bool_ else 1
    return tuple(out)


# --------------------------------------------------------------------------
# The array
# --------------------------------------------------------------------------


def _binary(ufunc: np.ufunc, reflected: bool = False) -> Callable:
    def op(self: ndarray, other: Any) -> Any:
        # CuPy's rule: an operand of higher __array_priority__ that is not a
        # cupy.ndarray (a minires Tensor) gets the reflected operator.
        if not isinstance(other, ndarray) and getattr(other, "__array_priority__", 0) > 100:
            return NotImplemented
        return elementwise(ufunc, *((other, self) if reflected else (self, other)))

    return op


def _inplace(ufunc: np.ufunc) -> Callable:
    def op(self: ndarray, other: Any) -> Any:
        if not isinstance(other, ndarray) and getattr(other, "__array_priority__", 0) > 100:
            return NotImplemented
        return elementwise(ufunc, self, other, out=self)

    return op


def _unary(ufunc: np.ufunc) -> Callable:
    return lambda self: elementwise(ufunc, self)


def _reducer(fn: Callable) -> Callable:
    def method(self: ndarray, *args: Any, **kwargs: Any) -> Any:
        return reduction(fn, self, *args, **kwargs)

    method.__name__ = fn.__name__
    return method


class ndarray:  # noqa: N801 (CuPy's name)
    """A device array (see the module docstring)."""

    __module__ = "cupy"
    __array_priority__ = 100.0
    __slots__ = ("_a", "__weakref__")
    __hash__ = None  # type: ignore[assignment]
    _a: np.ndarray

    def __init__(self, shape: Any, dtype: Any = float) -> None:
        self._a = guarded_empty(shape, dtype)  # uninitialised memory, as CuPy's

    # -- what an array is --------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: Flags(self._a))
    data = property(lambda self: MemoryPointer(self._a))
    T = property(lambda self: wrap(self._a.T))

    @property
    def device(self) -> Any:
        from .module import Device

        return Device()  # the current one: a process of the tests uses one device

    # -- views (no kernel) -------------------------------------------------
    def reshape(self, *shape: Any, order: str = "C") -> ndarray:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        r = self._a.reshape(shape, order=order)
        if r.size and not np.may_share_memory(r, self._a):
            record("copy", "reshape")
            record("layout_copy", "reshape of a non-contiguous array")
        return wrap(r)

    def ravel(self, order: str = "C") -> ndarray:
        return self.reshape(-1, order=order)

    def transpose(self, *axes: Any) -> ndarray:
        return wrap(self._a.transpose(*axes))

    def swapaxes(self, a: int, b: int) -> ndarray:
        return wrap(self._a.swapaxes(a, b))

    def squeeze(self, axis: Any = None) -> ndarray:
        return wrap(self._a.squeeze(axis))

    def view(self, dtype: Any = None) -> ndarray:
        return wrap(self._a.view() if dtype is None else self._a.view(dtype))

    def __getitem__(self, key: Any) -> ndarray:
        index, advanced, mask = _index(key)
        if mask:  # the size of the result is known only on the device
            record("sync", "boolean-mask index")
        if advanced:
            record("elementwise", "gather (fancy index)")
            index = _wrapped(index, self._a.shape)
        return wrap(self._a[index])

    def __setitem__(self, key: Any, value: Any) -> None:
        index, advanced, mask = _index(key)
        if isinstance(value, (np.ndarray, list)):
            value = np.asarray(value)
            record("h2d", "setitem value", value.nbytes)
        else:
            value = operand(value)
        record("elementwise", "setitem")
        self._a[_wrapped(index, self._a.shape) if advanced else index] = value

    # -- copies and kernels ------------------------------------------------
    def copy(self, order: str = "C") -> ndarray:
        record("copy", "copy")
        return wrap(np.array(self._a, order=order, copy=True))

    __copy__ = copy

    def __deepcopy__(self, memo: dict) -> ndarray:
        return self.copy()

    def flatten(self, order: str = "C") -> ndarray:
        record("copy", "flatten")
        return wrap(self._a.flatten(order))

    def astype(self, dtype: Any, order: str = "K", casting: Any = None, copy: bool = True) -> Any:
        dtype = np.dtype(dtype)
        if not copy and dtype == self.dtype:
            return self
        record("elementwise", "astype")
        kwargs = {} if casting is None else {"casting": casting}
        return wrap(self._a.astype(dtype, order=order, copy=True, **kwargs))

    def fill(self, value: Any) -> None:
        record("fill", "fill")
        self._a.fill(operand(value))

    def dot(self, b: Any, out: Any = None) -> Any:
        return matmul(self, b, out, what="dot")

    def clip(self, a_min: Any = None, a_max: Any = None, out: Any = None) -> Any:
        return elementwise(np.clip, self, a_min, a_max, out=out, what="clip")

    sum = _reducer(np.sum)
    mean = _reducer(np.mean)
    var = _reducer(np.var)
    std = _reducer(np.std)
    prod = _reducer(np.prod)
    max = _reducer(np.max)
    min = _reducer(np.min)
    argmax = _reducer(np.argmax)
    argmin = _reducer(np.argmin)
    all = _reducer(np.all)
    any = _reducer(np.any)

    # -- to the host (each one waits for the GPU) --------------------------
    def get(self, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True):
        record("sync", "get")
        record("d2h", "get", self.nbytes)
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def _scalar(self, what: str) -> np.ndarray:
        if self.size != 1:  # refused on the host, before any copy
            return self._a
        record("sync", what)
        record("d2h", what, self.itemsize)
        return self._a

    def item(self, *args: Any) -> Any:
        if not args and self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        record("sync", "item")
        record("d2h", "item", self.itemsize)
        return self._a.item(*args)

    def tolist(self) -> Any:
        return self.get().tolist()

    def __bool__(self) -> bool:
        return bool(self._scalar("bool()"))

    def __float__(self) -> float:
        return float(self._scalar("float()"))

    def __int__(self) -> int:
        return int(self._scalar("int()"))

    def __complex__(self) -> complex:
        return complex(self._scalar("complex()"))

    def __index__(self) -> int:
        if self.dtype.kind not in "iu":
            raise TypeError("only integer arrays can be used as an index")
        return int(self._scalar("index"))

    def __repr__(self) -> str:
        return repr(self.get())

    def __str__(self) -> str:
        return str(self.get())

    def __format__(self, spec: str) -> str:
        return format(self.get() if self.ndim else self.get()[()], spec)

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(IMPLICIT_CONVERSION)

    def __reduce__(self) -> Any:
        raise TypeError("the cupy stand-in does not model pickling a device array")

    # -- Python's protocols --------------------------------------------------
    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self) -> Iterator[ndarray]:
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    # -- NumPy calling us ------------------------------------------------------
    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if method == "__call__":
            return elementwise(ufunc, *inputs, **kwargs)
        if method == "reduce":
            return reduction(ufunc.reduce, inputs[0], *inputs[1:], what=f"{ufunc.__name__}.reduce")
        return NotImplemented

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        from . import module

        impl = getattr(module.functions, func.__name__, None)
        if impl is None:
            return NotImplemented
        return impl(*args, **kwargs)

    # -- operators -------------------------------------------------------------
    __add__, __radd__, __iadd__ = _binary(np.add), _binary(np.add, True), _inplace(np.add)
    __sub__, __rsub__ = _binary(np.subtract), _binary(np.subtract, True)
    __isub__ = _inplace(np.subtract)
    __mul__, __rmul__ = _binary(np.multiply), _binary(np.multiply, True)
    __imul__ = _inplace(np.multiply)
    __truediv__, __rtruediv__ = _binary(np.true_divide), _binary(np.true_divide, True)
    __itruediv__ = _inplace(np.true_divide)
    __floordiv__, __rfloordiv__ = _binary(np.floor_divide), _binary(np.floor_divide, True)
    __mod__, __rmod__ = _binary(np.remainder), _binary(np.remainder, True)
    __pow__, __rpow__, __ipow__ = _binary(np.power), _binary(np.power, True), _inplace(np.power)
    __and__, __rand__, __iand__ = (
        _binary(np.bitwise_and),
        _binary(np.bitwise_and, True),
        _inplace(np.bitwise_and),
    )
    __or__, __ror__, __ior__ = (
        _binary(np.bitwise_or),
        _binary(np.bitwise_or, True),
        _inplace(np.bitwise_or),
    )
    __xor__, __rxor__ = _binary(np.bitwise_xor), _binary(np.bitwise_xor, True)
    __eq__, __ne__ = _binary(np.equal), _binary(np.not_equal)  # type: ignore[assignment]
    __lt__, __le__ = _binary(np.less), _binary(np.less_equal)
    __gt__, __ge__ = _binary(np.greater), _binary(np.greater_equal)
    __neg__, __pos__ = _unary(np.negative), _unary(np.positive)
    __abs__, __invert__ = _unary(np.absolute), _unary(np.invert)

    def __matmul__(self, other: Any) -> Any:
        if not isinstance(other, ndarray) and getattr(other, "__array_priority__", 0) > 100:
            return NotImplemented
        return matmul(self, other)

    def __rmatmul__(self, other: Any) -> Any:
        return matmul(other, self)
