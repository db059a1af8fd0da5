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


def span(k: int, d: int) -> int:
    """How many input pixels a kernel of size ``k`` with dilation ``d`` spans: d*(k-1) + 1.

    A dilated kernel reads every d-th pixel; for the output size it is simply
    a larger kernel with holes in it.
    """
    return d * (k - 1) + 1


def pool_out_size(size: int, k: int, s: int, p: int, ceil_mode: bool = False) -> int:
    """Windows along one axis: PyTorch's rule for max_pool2d / avg_pool2d.

    Floor mode counts the windows that fit inside the padded input. ceil_mode
    rounds up instead, adding a last window that runs past the padding, but
    only if it starts inside the input or the left padding: a window that
    would start in the right padding is dropped.
    """
    if not ceil_mode:
        return out_size(size, k, s, p)
    n = -(-(size + 2 * p - k) // s) + 1  # ceiling division
    if (n - 1) * s >= size + p:
        n -= 1
    return n
