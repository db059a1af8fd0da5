"""The one place that knows which device an array lives on, and moves it.

Every other module asks here: which array module (NumPy or CuPy) an array
belongs to, which device ("cpu" or "cuda") that is, and how to copy an array
to the host or to a device. CuPy is imported here and in ``cuda_backend.py``
only, and only when a CuPy array or the "cuda" device is actually in use, so
``import minires`` needs nothing but NumPy.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

Array = Any  # numpy.ndarray or cupy.ndarray

DEVICES = ("cpu", "cuda")


def is_cupy_array(x: object) -> bool:
    """True when ``x`` is a CuPy array (checked without importing CuPy)."""
    return type(x).__module__.startswith("cupy")


def is_array(x: object) -> bool:
    """True for a NumPy or a CuPy array."""
    return isinstance(x, np.ndarray) or is_cupy_array(x)


def get_array_module(x: object) -> ModuleType:
    """``numpy`` or ``cupy``, whichever ``x`` (an array or a Tensor) belongs to."""
    if is_cupy_array(getattr(x, "data", x)):
        import cupy

        return cupy
    return np


def device_of(x: object) -> str:
    """ "cuda" for a CuPy array (or a Tensor holding one), else "cpu"."""
    return "cuda" if is_cupy_array(getattr(x, "data", x)) else "cpu"


def check_device(op: str, device: object) -> str:
    """``device`` if it is "cpu" or "cuda"; a clear ValueError otherwise."""
    if device not in DEVICES:
        raise ValueError(f"{op}: expected device 'cpu' or 'cuda', got {device!r}")
    return str(device)


def to_numpy(x: object) -> np.ndarray:
    """A NumPy array with the values of ``x``: copied from the GPU if needed.

    NumPy arrays are returned as they are (no copy); numbers and lists become
    arrays. CuPy refuses implicit GPU-to-host copies, hence the explicit ``get``.
    """
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def to_device(x: object, device: str) -> Array:
    """``x`` as an array on ``device`` ("cpu" or "cuda"); no copy when already there.

    Moving to "cuda" first checks that the GPU path works here, and raises a
    RuntimeError saying what is missing otherwise.
    """
    check_device("to_device", device)
    if device == "cpu":
        return to_numpy(x)
    from . import cuda_backend

    cuda_backend.require_gpu()
    return cuda_backend.to_gpu(x)


def full_like_device(value: object, like: Array) -> Array:
    """``value`` (a number or a host array) as an array of ``like``'s dtype, on its device.

    Used where a Python number meets an array: ``np.asarray(0.5, float32)``
    keeps a float32 step in float32 (a bare Python float would be fine, but
    a NumPy float64 scalar would promote it under NumPy 2).
    """
    if is_cupy_array(value) and not is_cupy_array(like):
        value = value.get()
    return get_array_module(like).asarray(value, dtype=like.dtype)


def add_at(target: Array, index: object, values: Array) -> None:
    """``target[index] += values`` where a repeated index receives every share.

    (``target[index] += values`` would keep only one share of a repeated
    index: NumPy's ``add.at`` and CuPy's ``scatter_add`` sum them all.)
    """
    if is_cupy_array(target):
        import cupyx

        cupyx.scatter_add(target, index, values)
    else:
        np.add.at(target, index, values)


def synchronize(device: str) -> None:
    """Wait until the work queued on ``device`` has finished (timing needs it).

    CUDA kernels run asynchronously: without this, a timer stopped after a
    launch measures the launch, not the kernel. The CPU has nothing to wait for.
    """
    if check_device("synchronize", device) == "cuda":
        import cupy

        cupy.cuda.Device().synchronize()


def device_name(device: str) -> str:
    """What ``device`` is, for a report: the GPU's name, or the CPU and its cores."""
    if check_device("device_name", device) == "cpu":
        import os
        import platform

        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:  # no usable GPU, or a driver that cannot be asked
        return "cuda (unknown device)"
