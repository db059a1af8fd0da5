"""Read the pickle inside a ``torch.save`` file without running any of its code.

Why a pickle is dangerous. A pickle is a small program for a stack machine.
Two of its instructions make it more than data: GLOBAL names any importable
object ("os system", "builtins eval"), and REDUCE calls whatever is on the
stack with arguments from the stack. ``pickle.load`` on a downloaded file
therefore runs whatever its author chose. ``torch.save`` writes such pickles,
and ``.pth`` files are shared and downloaded every day.

What a state dict needs. ``pickletools.dis`` on a file from ``torch.save``
shows how little a dict of tensors uses: dicts, lists, tuples, strings and
numbers (plain instructions), ``collections.OrderedDict``, one call of
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` per
tensor, and a "persistent id" ``('storage', torch.FloatStorage, '0', 'cpu',
numel)`` per storage, whose bytes are a separate file of the archive.

So this reader is ``pickle``'s own pure-Python unpickler with three changes:

1. ``find_class`` (the only way GLOBAL reaches an object) answers from
   ``ALLOW_LIST`` below and refuses every other name, before importing or
   calling anything. The answers are not torch's functions (torch need not be
   installed) but stand-ins here that rebuild a tensor as a NumPy array.
2. Instructions that make an instance of a class taken from the stack (OBJ,
   INST, NEWOBJ, NEWOBJ_EX) or from the extension registry (EXT1/2/4) are
   refused: a state dict never uses them. BUILD (set an object's state) is
   allowed only where torch uses it: on an OrderedDict, whose ``_metadata``
   (per-module version numbers) is dropped.
3. ``persistent_load`` accepts only storage ids and returns the storage's
   bytes as a 1-D NumPy array, read by the container (zip or legacy file).

REDUCE stays: the only callables that can reach the stack are the answers of
``find_class``, that is, the allow-list.

A tensor is rebuilt from its storage with ``as_strided`` (the storage seen
with the tensor's offset, shape and strides), after checking that every
element it reaches lies inside the storage, and then copied: the result owns
its memory, is C-contiguous and in native byte order, whatever view (a
transpose, a slice that shares storage) was saved.
"""

from __future__ import annotations

import math
import pickle
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from .common import UnsafePickleError, WeightsError, bfloat16_bits_to_float32

# torch's dtype names and the NumPy type of their elements (byte order is added
# from the file). bfloat16 is read as its uint16 bit patterns, then widened.
NUMPY_CODES = {
    "float64": "f8",
    "float32": "f4",
    "float16": "f2",
    "bfloat16": "u2",
    "int64": "i8",
    "int32": "i4",
    "int16": "i2",
    "int8": "i1",
    "uint8": "u1",
    "uint16": "u2",
    "uint32": "u4",
    "uint64": "u8",
    "bool": "b1",
    "complex64": "c8",
    "complex128": "c16",
}

# The legacy storage classes by which torch.save names a storage's dtype.
STORAGE_CLASSES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}


class TorchDType:
    """What ``torch.float32`` (or the dtype of ``torch.FloatStorage``) stands for here."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def numpy(self, byteorder: str) -> np.dtype:
        """The dtype of the elements as stored in the file ('<' little or '>' big endian)."""
        return np.dtype(byteorder + NUMPY_CODES[self.name])


class StorageClass:
    """What ``torch.FloatStorage`` (dtype float32) or ``torch.storage.UntypedStorage``
    (dtype None: bytes, the tensor says how to see them) stands for here."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: TorchDType | None) -> None:
        self.dtype = dtype


class Storage:
    """One storage: its dtype (None: raw bytes) and its elements (None until read)."""

    __slots__ = ("dtype", "array")

    def __init__(self, dtype: TorchDType | None, array: np.ndarray | None) -> None:
        self.dtype, self.array = dtype, array


# (module, name) -> why a state dict of tensors needs it. Nothing else is looked up.
ALLOW_LIST: dict[tuple[str, str], str] = {
    ("collections", "OrderedDict"): "the type of every state_dict (and of a tensor's empty hooks)",
    ("torch._utils", "_rebuild_tensor_v2"): "a tensor: storage, offset, shape, strides",
    ("torch._utils", "_rebuild_tensor_v3"): "the same, for dtypes with no storage class (uint16..)",
    ("torch._utils", "_rebuild_parameter"): "an nn.Parameter, as state_dict(keep_vars=True) holds",
    ("torch._utils", "_rebuild_parameter_with_state"): "the same with Python attributes (dropped)",
    ("torch.storage", "UntypedStorage"): "a storage of bytes, read with _rebuild_tensor_v3's dtype",
    **{("torch", c): f"a storage of {d} elements" for c, d in STORAGE_CLASSES.items()},
    **{("torch", d): "a dtype, as _rebuild_tensor_v3 names it" for d in NUMPY_CODES},
}

# storage reader: (key, dtype of the elements in the file, number of elements)
# -> the storage as a 1-D array, or None when the container cannot read it yet.
StorageReader = Callable[[str, np.dtype, int], "np.ndarray | None"]


def _refuse(opcode: str) -> Callable[[RestrictedUnpickler], None]:
    def refuse(self: RestrictedUnpickler) -> None:
        raise UnsafePickleError(
            f"{self.path}: refused to read: the pickle uses {opcode}, which makes an object "
            "of an arbitrary class; a state dict of tensors never does"
        )

    return refuse


_STORAGE_TAGS = ("storage", b"storage")  # bytes: a legacy file from Python 2


class RestrictedUnpickler(pickle._Unpickler):  # the pure-Python one: its opcodes can be replaced
    """Unpickle ``file`` allowing only ``ALLOW_LIST``; storages come from ``read_storage``."""

    dispatch = dict(pickle._Unpickler.dispatch)
    for _name in ("OBJ", "INST", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"):
        dispatch[getattr(pickle, _name)[0]] = _refuse(_name)
    del _name

    def __init__(self, file: Any, path: str, read_storage: StorageReader, byteorder: str) -> None:
        super().__init__(file, encoding="utf-8")  # utf-8: Python 2 strings, as torch.load
        self.path, self.read_storage, self.byteorder = path, read_storage, byteorder
        self.storages: dict[str, Storage] = {}

    # -- the three doors: GLOBAL, BUILD, persistent ids ----------------------

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOW_LIST:
            raise UnsafePickleError(
                f"{self.path}: refused to load {module}.{name}: {_why(module, name)}"
            )
        if module == "collections":
            return OrderedDict
        if module == "torch._utils":
            return getattr(self, name)
        if name == "UntypedStorage":
            return StorageClass(None)
        if name in STORAGE_CLASSES:
            return StorageClass(TorchDType(STORAGE_CLASSES[name]))
        return TorchDType(name)

    def load_build(self) -> None:
        state = self.stack.pop()
        if isinstance(self.stack[-1], OrderedDict) and isinstance(state, dict):
            return  # torch's `_metadata` on a state_dict: not needed to load arrays
        raise UnsafePickleError(
            f"{self.path}: refused to read: the pickle sets the state of a "
            f"{type(self.stack[-1]).__name__}; a state dict of tensors only does so on a dict"
        )

    dispatch[pickle.BUILD[0]] = load_build

    def persistent_load(self, pid: Any) -> Storage:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in _STORAGE_TAGS):
            raise WeightsError(f"{self.path}: unexpected persistent id {str(pid)[:80]!r}")
        _, cls, key, _location, numel, *view = pid  # legacy files add view metadata
        key = key.decode("ascii") if isinstance(key, bytes) else key
        if not (isinstance(cls, StorageClass) and isinstance(key, str) and _is_count(numel)):
            raise WeightsError(f"{self.path}: malformed storage id {str(pid)[:80]!r}")
        storage = self._storage(cls.dtype, key, numel)
        if view and view[0] is not None:  # (view key, offset, size): part of the storage
            _, start, size = view[0]
            if not (_is_count(start) and _is_count(size) and start + size <= numel):
                raise WeightsError(f"{self.path}: storage view {view[0]!r} outside its storage")
            part = None if storage.array is None else storage.array[start : start + size]
            storage = Storage(storage.dtype, part)
        return storage

    def _storage(self, dtype: TorchDType | None, key: str, numel: int) -> Storage:
        if key in self.storages:
            known = self.storages[key]
            if (known.dtype and known.dtype.name) != (dtype and dtype.name):
                raise WeightsError(f"{self.path}: storage {key} is read with two dtypes")
            return known
        element = dtype.numpy(self.byteorder) if dtype else np.dtype(np.uint8)
        self.storages[key] = Storage(dtype, self.read_storage(key, element, numel))
        return self.storages[key]

    # -- the stand-ins for torch._utils ------------------------------------

    def _rebuild_tensor_v2(
        self, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None
    ):
        if not isinstance(storage, Storage) or storage.dtype is None:
            raise WeightsError(f"{self.path}: a tensor without a typed storage")
        return self._tensor(storage, storage.dtype, offset, size, stride, metadata)

    def _rebuild_tensor_v3(
        self, storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None
    ):
        if not (isinstance(storage, Storage) and isinstance(dtype, TorchDType)):
            raise WeightsError(f"{self.path}: a tensor without a storage and a dtype")
        return self._tensor(storage, dtype, offset, size, stride, metadata)

    def _rebuild_parameter(self, data, requires_grad, hooks, state=None):
        if not (data is None or isinstance(data, np.ndarray)):  # None: storages not read yet
            raise WeightsError(f"{self.path}: a Parameter that does not hold a tensor")
        return data  # a Parameter is its array here; requires_grad and attributes are dropped

    _rebuild_parameter_with_state = _rebuild_parameter

    def _tensor(self, storage, dtype, offset, size, stride, metadata) -> np.ndarray | None:
        """The tensor ``storage[offset + sum(i_k * stride_k)]``, as a new C-contiguous array."""
        if not (
            _is_count(offset)
            and _is_counts(size)
            and _is_counts(stride)
            and len(size) == len(stride)
        ):
            raise WeightsError(
                f"{self.path}: malformed tensor (offset {offset!r}, size {size!r}, "
                f"stride {stride!r})"
            )
        if storage.array is None:
            return None  # the legacy reader's first pass: dtypes are all it wants
        element = dtype.numpy(self.byteorder)
        data = storage.array
        if storage.dtype is None:  # bytes, seen as elements of `dtype`
            if data.size % element.itemsize:
                raise WeightsError(f"{self.path}: a {dtype.name} tensor in a ragged storage")
            data = data.view(element)
        if math.prod(size) == 0:
            array = np.empty(size, element.newbyteorder("="))
        else:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= data.size:
                raise WeightsError(
                    f"{self.path}: a tensor reaches element {last} of a storage of {data.size}"
                )
            strides = [s * element.itemsize if n > 1 else 0 for n, s in zip(size, stride)]
            view = np.lib.stride_tricks.as_strided(
                data[offset:], shape=size, strides=strides, writeable=False
            )
            array = view.astype(element.newbyteorder("="), order="C")  # a copy, native order
        if dtype.name == "bfloat16":
            array = bfloat16_bits_to_float32(array)
        return _apply_metadata(self.path, array, metadata)


def _apply_metadata(path: str, array: np.ndarray, metadata: Any) -> np.ndarray:
    """torch's lazy views: {'neg': True} negates, {'conj': True} conjugates."""
    if not metadata:
        return array
    if not (isinstance(metadata, dict) and set(metadata) <= {"neg", "conj"}):
        raise WeightsError(f"{path}: unknown tensor metadata {str(metadata)[:80]!r}")
    if metadata.get("conj"):
        array = np.conj(array)
    return -array if metadata.get("neg") else array


def _is_count(x: Any) -> bool:
    return type(x) is int and x >= 0


def _is_counts(xs: Any) -> bool:
    return isinstance(xs, tuple) and all(_is_count(x) for x in xs)


def _why(module: str, name: str) -> str:
    """Why find_class refused ``module.name``, and what to do about it."""
    dtype_like = ("Storage", "float8", "float4", "complex32", "qint", "quint", "bits", "int1")
    if module == "torch" and any(part in name for part in dtype_like):
        return (
            "tensors of this dtype have no NumPy equivalent; convert them "
            "(e.g. tensor.float()) and save again"
        )
    return (
        "only what a dict of tensors needs is loaded (see minires.weights.ALLOW_LIST), because "
        "loading anything else from a pickle can run code; save a dict of tensors, with plain "
        "numbers and strings beside it"
    )
