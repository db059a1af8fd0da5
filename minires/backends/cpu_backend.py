"""The fast CPU backend: the reference's ops on every core, and shifted-GEMM convolutions.

The default for NumPy arrays (``F.set_conv_algorithm("im2col")`` switches to
the plain reference, numpy_backend.py). Same contract, same results to
rounding (the tests compare the two on every op). Two things make it faster:

* Stride-1 convolutions run as shifted GEMMs (shifted_conv.py): the input is
  laid out so that every kernel offset is a constant shift of a flat index,
  and the products are done chunk by chunk without ever holding the im2col
  matrix, which on a 2-core CPU costs as much to build as the GEMM itself.
* Everything runs on every core (parallel.py): NumPy releases the GIL in its
  copies and in BLAS, so Python threads can share out blocks of channels or
  of columns. BLAS is then kept single-threaded (``parallel.blas_guard``), or
  each thread's GEMM would start BLAS threads of its own.

Every other function is the reference's, run on blocks of channels (rows)
in threads, writing into its share of one output.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from . import numpy_backend as reference
from . import parallel, shifted_conv
from .layout import from_channel_major, out_size, span, to_channel_major
from .numpy_backend import (  # noqa: F401 - not worth threading: the reference's own
    avg_pool_backward,
    avg_pool_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    max_pool_backward,
    max_pool_forward,
)


def _blas_guarded(op: Callable) -> Callable:
    """Run ``op`` with BLAS single-threaded when minires's own threads are in use."""

    @functools.wraps(op)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        with parallel.blas_guard():
            return op(*args, **kwargs)

    return guarded


# --------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------


def im2col(
    x: np.ndarray, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, dh: int = 1, dw: int = 1
) -> np.ndarray:
    """numpy_backend.im2col, its rows built by blocks of channels in threads."""
    C, N, H, W = x.shape
    OH = out_size(H, span(kh, dh), sh, ph)
    OW = out_size(W, span(kw, dw), sw, pw)
    col = np.empty((C, kh, kw, N, OH, OW), dtype=x.dtype)

    def rows(c: slice) -> None:
        reference.im2col(x[c], kh, kw, sh, sw, ph, pw, dh, dw, out=col[c])

    parallel.for_rows(C, rows, work=col.size)
    return col.reshape(C * kh * kw, N * OH * OW)


def col2im(
    col: np.ndarray,
    x_shape: tuple,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
    dh: int = 1,
    dw: int = 1,
) -> np.ndarray:
    """numpy_backend.col2im by blocks of channels in threads (a channel's pixels
    receive only its own rows of col)."""
    C, K = x_shape[0], kh * kw
    x = np.empty(x_shape, dtype=col.dtype)

    def rows(c: slice) -> None:
        block = (c.stop - c.start, *x_shape[1:])
        x[c] = reference.col2im(
            col[c.start * K : c.stop * K], block, kh, kw, sh, sw, ph, pw, dh, dw
        )

    parallel.for_rows(C, rows, work=col.size)
    return x


def _shifted(
    w: np.ndarray,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> bool:
    """Whether the shifted GEMMs apply: one group, stride 1, a kernel larger than
    1x1 (a 1x1 convolution already is a plain GEMM), and a padding the layout
    supports. (A dilated kernel is still a set of constant shifts.)"""
    kh, kw = w.shape[2:]
    return (
        groups == 1
        and stride == (1, 1)
        and (kh, kw) != (1, 1)
        and shifted_conv.supported(kh, kw, *padding, *dilation)
    )


def _group_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The reference's batched GEMM a (G, M, K) @ b (G, K, L), on every core.

    One group (an ordinary convolution) is parallel.matmul's split of the
    columns among the threads; several groups are shared out, a block of
    whole groups per thread.
    """
    if a.shape[0] == 1:
        return parallel.matmul(a[0], b[0])[None]
    out = np.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=np.result_type(a, b))

    def groups(g: slice) -> None:
        np.matmul(a[g], b[g], out=out[g])

    parallel.for_rows(a.shape[0], groups, work=out.size * a.shape[2])
    return out


def _group_matmul_t(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (G, M, L) @ b (G, K, L) transposed, -> (G, M, K): the weight gradient's product."""
    if a.shape[0] == 1:
        return parallel.matmul_t(a[0], b[0])[None]
    out = np.empty((a.shape[0], a.shape[1], b.shape[1]), dtype=np.result_type(a, b))

    def groups(g: slice) -> None:
        np.matmul(a[g], b[g].swapaxes(1, 2), out=out[g])

    parallel.for_rows(a.shape[0], groups, work=out.size * a.shape[2])
    return out


@_blas_guarded
def conv2d_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> tuple[np.ndarray, tuple]:
    """As numpy_backend.conv2d_forward: shifted GEMMs at stride 1 with one group,
    else im2col and a threaded (batched) GEMM."""
    if not _shifted(w, stride, padding, dilation, groups) or x.shape[0] == 0:
        return reference.conv2d_forward(
            x, w, b, stride, padding, dilation, groups, im2col=im2col, matmul=_group_matmul
        )
    N, C, H, W = x.shape
    geometry = shifted_conv.Geometry(N, H, W, *w.shape[2:], *padding, *dilation)
    xc = to_channel_major(x)
    y = shifted_conv.conv_forward(xc, w, geometry)
    if b is not None:
        y += b[:, None, None, None]
    return from_channel_major(y), (xc, w, geometry)


@_blas_guarded
def conv2d_backward(
    gy: np.ndarray, saved: tuple, needs_grad: tuple[bool, ...]
) -> tuple[np.ndarray | None, ...]:
    """As numpy_backend.conv2d_backward, for what conv2d_forward above saved."""
    if not isinstance(saved[2], shifted_conv.Geometry):
        return reference.conv2d_backward(
            gy, saved, needs_grad, im2col, col2im, matmul=_group_matmul, matmul_t=_group_matmul_t
        )
    xc, w, geometry = saved
    gyc = to_channel_major(gy)
    gb = gyc.sum(axis=(1, 2, 3)) if len(needs_grad) > 2 and needs_grad[2] else None
    gxc, gw = shifted_conv.conv_backward(gyc, xc, w, geometry, *needs_grad[:2])
    return (None if gxc is None else from_channel_major(gxc)), gw, gb


# --------------------------------------------------------------------------
# BatchNorm and ReLU: the reference, on blocks of channels (rows) in threads
# --------------------------------------------------------------------------


@_blas_guarded
def batch_norm_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float,
    running_mean: np.ndarray | None,
    running_var: np.ndarray | None,
    momentum: float,
    *,
    relu: bool = False,
    count: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    C = x.shape[0]
    out = (np.empty_like(x), np.empty_like(x), np.empty(C, dtype=x.dtype))

    def rows(c: slice) -> None:
        stats = (None, None) if running_mean is None else (running_mean[c], running_var[c])
        share = tuple(o[c] for o in out)
        reference.batch_norm_forward(
            x[c], gamma[c], beta[c], eps, *stats, momentum, share, relu=relu
        )

    parallel.for_rows(C, rows, work=x.size)
    if count is not None:  # once, not once per block of channels
        count += 1
    return out


@_blas_guarded
def batch_norm_backward(
    gy: np.ndarray,
    xhat: np.ndarray,
    gamma: np.ndarray,
    inv_std: np.ndarray,
    *,
    y: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    C = gy.shape[0]
    out = (np.empty_like(gy), np.empty(C, dtype=gy.dtype), np.empty(C, dtype=gy.dtype))

    def rows(c: slice) -> None:
        share = tuple(o[c] for o in out)
        y_rows = None if y is None else y[c]
        reference.batch_norm_backward(gy[c], xhat[c], gamma[c], inv_std[c], share, y=y_rows)

    parallel.for_rows(C, rows, work=gy.size)
    return out


def _rows_of(*arrays: np.ndarray) -> list[np.ndarray] | None:
    """The arrays as C-contiguous (rows, ...) arrays of the same memory, if they
    all share one layout (NCHW, or the channel-major NCHW view); else None."""
    if all(a.flags.c_contiguous for a in arrays):
        return list(arrays)
    if all(a.ndim >= 2 and a.swapaxes(0, 1).flags.c_contiguous for a in arrays):
        return [a.swapaxes(0, 1) for a in arrays]
    return None


def relu_forward(x: np.ndarray) -> np.ndarray:
    y = np.empty_like(x)  # same memory layout as x
    rows = _rows_of(x, y)
    if rows is None or x.ndim == 0:
        return reference.relu_forward(x)
    xr, yr = rows
    parallel.for_rows(len(xr), lambda r: np.maximum(xr[r], 0, out=yr[r]), work=x.size)
    return y


def relu_backward(gy: np.ndarray, y: np.ndarray) -> np.ndarray:
    gx = np.empty_like(y)
    rows = _rows_of(gy, y, gx)
    if rows is None or y.ndim == 0:
        return reference.relu_backward(gy, y)
    gyr, yr, gxr = rows
    parallel.for_rows(len(yr), lambda r: np.multiply(gyr[r], yr[r] > 0, out=gxr[r]), work=y.size)
    return gx
