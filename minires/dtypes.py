"""minires's dtype rules, PyTorch's: what a new tensor holds, what an op returns.

Two traps a from-scratch framework falls into without a word, and how
minires avoids them:
* NumPy makes ``asarray([1.0])`` float64; PyTorch makes ``tensor([1.0])``
  float32. A framework that silently computes in float64 is twice as slow and
  twice as heavy, so lists of Python floats become float32 (``as_array``).
* Under NumPy 2 (NEP 50) a NumPy float64 scalar promotes a float32 array to
  float64. Here a Python number never widens a tensor's dtype (float32 * 0.5
  stays float32), though it may change its *kind*: an int tensor times 0.5
  is float32, a bool tensor plus 1 is int64 (``result_dtype``).
Two tensors of different floating dtypes never mix silently: the operators
raise instead (``same_float_dtype``), where PyTorch would promote.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .backends.device import is_array

_KIND_RANK = {"b": 0, "i": 1, "u": 1, "f": 2}  # bool < integer < floating


def as_array(data: object, dtype: Any = None) -> Any:
    """Arrays keep their dtype; Python numbers and lists follow PyTorch:
    ``[1.0]`` is float32, ``[1]`` int64, a NumPy scalar keeps its dtype."""
    if is_array(data):
        return data if dtype is None else data.astype(dtype, copy=False)
    arr = np.asarray(data, dtype=dtype)
    if dtype is None and arr.dtype == np.float64 and not isinstance(data, np.generic):
        return arr.astype(np.float32)
    return arr


def _rank(dtype: np.dtype) -> int:
    return _KIND_RANK.get(dtype.kind, 3)


def _with_number(value: object, dtype: np.dtype) -> np.dtype:
    """The dtype after a Python number meets a tensor of ``dtype``."""
    if isinstance(value, (float, np.floating)) and dtype.kind in "biu":
        return np.dtype(np.float32)  # the default float dtype
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and dtype.kind == "b":
        return np.dtype(np.int64)
    return dtype


def result_dtype(tensor_dtypes: Sequence[np.dtype], numbers: Sequence[object]) -> np.dtype:
    """The dtype an op computes in: the highest kind among the tensors wins,
    whatever its size (float32 with an int64 tensor is float32), then a Python
    number may raise the kind. Operands of a lower kind are cast to it."""
    dtype = max(tensor_dtypes, key=_rank)
    for value in numbers:
        dtype = _with_number(value, dtype)
    return dtype


def is_lower_kind(dtype: np.dtype, than: np.dtype) -> bool:
    """Whether an operand of ``dtype`` must be cast to compute in ``than``."""
    return _rank(dtype) < _rank(than)


def same_float_dtype(op: str, a: Any, b: Any) -> None:
    """float32 and float64 never mix silently: the operators raise instead."""
    if a.dtype != b.dtype and a.dtype.kind == "f" and b.dtype.kind == "f":
        raise TypeError(
            f"{op}: operands must have the same floating dtype, got {a.dtype} and {b.dtype} "
            f"(convert one with .to(np.{b.dtype}) or .to(np.{a.dtype}))"
        )
