"""Array layout and window geometry, shared by every backend.

Channel-major layout. A convolution computes its output as a (C_out, N*OH*OW)
matrix: that is a (C, N, H, W) array in memory, and it is handed on as an
(N, C, H, W) *view* of that memory, with no copy. BatchNorm, ReLU, the
residual add and the next convolution all read channel-major data directly,
so inside a network the layout never has to be converted; a user sees
ordinary (N, C, H, W) tensors.
"""

from __future__ import annotations

from typing import Any

from .device import get_array_module

Array = Any


def to_channel_major(x: Array) -> Array:
    """(N, C, ...) -> a C-contiguous (C, N, ...) array; free if already stored so."""
    return get_array_module(x).ascontiguousarray(x.swapaxes(0, 1))


def from_channel_major(a: Array) -> Array:
    """(C, N, ...) -> the (N, C, ...) view of the same memory."""
    return a.swapaxes(0, 1)


def is_channel_major(x: Array) -> bool:
    """Whether (N, C, ...) ``x`` is stored (C, N, ...) in memory."""
    return x.ndim >= 2 and x.swapaxes(0, 1).flags.c_contiguous


def out_size(size: int, k: int, s: int, p: int) -> int:
    """Output length of a window of size ``k``, stride ``s``, padding ``p``."""
    return (size + 2 * p - k) // s + 1
