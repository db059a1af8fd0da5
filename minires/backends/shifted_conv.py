"""Stride-1 convolution as shifted GEMMs, without a full im2col matrix.

The im2col matrix of a 3x3 convolution is 9 times the size of its input, and
building it is a memory-bound copy that costs as much as the GEMM itself on a
2-core CPU. This module computes the same convolution without ever holding
that matrix, by two observations:

1. Lay the channel-major input (C, N, H, W) out flat, one row of values per
   channel, with the image rows separated by pw zeros and the images by ph
   zero rows. A zero gap serves as the right padding of one row and the left
   padding of the next (and likewise between images), so the grid has pitch
   Wg = W + pw per row and Hg = H + ph rows per image. Index an output pixel
   by q = (n*Hg + oh)*Wg + ow: the input under kernel offset (i, j) of its
   window is then at flat position q + i*Wg + j. Every kernel offset is a
   *constant shift* of the flat index; with dilation (dh, dw), offset (i, j)
   sits i*dh rows and j*dw columns into the window, and its shift is
   i*dh*Wg + j*dw. (Positions with oh >= OH or ow >= OW
   are computed too and cropped away: (Hg*Wg)/(OH*OW) - 1 extra work, 6% at
   32x32, 27% at 8x8 for a 3x3 convolution with padding 1.)
2. So the column matrix restricted to output positions [a, b) is kh*kw
   contiguous slices per channel: cheap to build, and small enough to stay
   in the CPU cache if [a, b) is a few thousand columns. Building it chunk by
   chunk and multiplying each chunk at once never writes the 9x matrix to
   memory.

The backward pass reuses the same routine. The input gradient of a
convolution is a convolution of the output gradient with the same weights,
read in the opposite direction: dL/dx[c, r] = sum_{f,k} w[f, c, k] gy[f, r - s_k],
i.e. shifts of -s_k, which become non-negative once gy is given zeros in
front. No col2im scatter is needed. The weight gradient reads the same
columns of gy: dL/dw[f, c, k] = sum_r gy[f, r - s_k] x[c, r], so one column
build per chunk serves both gradients (shifted_matmul_and_t).

Sharing the zero gaps needs a kernel that spans at least ph + 1 rows and
pw + 1 columns (a window never reaches past one gap into the next image, and
an image's OH output rows fit in its Hg grid rows); ``supported`` checks it.

Part of the fast CPU backend (cpu_backend.py), on NumPy arrays; the GPU
backend keeps im2col, whose one big GEMM suits cuBLAS. Shapes use F output
channels, C input channels, K = kh*kw kernel offsets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import parallel

Array = Any

# Columns per chunk are chosen so that one chunk of the column matrix holds
# about this many values (2 MiB in float32): it then stays in the L2/L3 cache
# between being written and being read by the GEMM.
CHUNK_VALUES = 1 << 19


@dataclass(frozen=True)
class Geometry:
    """Sizes of a stride-1 convolution laid out on the shared-padding flat grid."""

    N: int
    H: int
    W: int
    kh: int
    kw: int
    ph: int
    pw: int
    dh: int = 1
    dw: int = 1

    @property
    def span_h(self) -> int:
        """Rows the (dilated) kernel spans: dh*(kh - 1) + 1."""
        return self.dh * (self.kh - 1) + 1

    @property
    def span_w(self) -> int:
        return self.dw * (self.kw - 1) + 1

    @property
    def Hg(self) -> int:
        """Grid rows per image: H data rows and ph shared zero rows."""
        return self.H + self.ph

    @property
    def Wg(self) -> int:
        """Grid pitch of a row: W values and pw shared zeros."""
        return self.W + self.pw

    @property
    def OH(self) -> int:
        return self.H + 2 * self.ph - self.span_h + 1

    @property
    def OW(self) -> int:
        return self.W + 2 * self.pw - self.span_w + 1

    @property
    def L(self) -> int:
        """Output positions on the grid, valid or not: N*Hg*Wg."""
        return self.N * self.Hg * self.Wg

    @property
    def lead(self) -> int:
        """Zeros before the first image: the top and left padding of image 0."""
        return self.ph * self.Wg + self.pw

    @property
    def shifts(self) -> list[int]:
        """Flat offset of kernel position (i, j), in the order k = i*kw + j."""
        return [i * self.dh * self.Wg + j * self.dw for i in range(self.kh) for j in range(self.kw)]

    @property
    def tail(self) -> int:
        """The largest shift: the last window reaches this far past position L."""
        return (self.span_h - 1) * self.Wg + (self.span_w - 1)


def supported(kh: int, kw: int, ph: int, pw: int, dh: int = 1, dw: int = 1) -> bool:
    """Whether the shared-padding layout is exact for this kernel, padding and dilation."""
    return dh * (kh - 1) + 1 >= ph + 1 and dw * (kw - 1) + 1 >= pw + 1


def pad_flat(xc: Array, g: Geometry) -> Array:
    """(C, N, H, W) -> (C, L + tail): data at lead + (n*Hg + h)*Wg + w, zeros elsewhere."""
    return embed(xc, g.lead, g.Hg, g.Wg, g.tail)


def embed(values: Array, front: int, Hg: int, Wg: int, back: int) -> Array:
    """(C, N, h, w) -> (C, front + N*Hg*Wg + back) flat rows, zeros around the data.

    Value (c, n, i, j) goes to column front + (n*Hg + i)*Wg + j. Every other
    column is written with a zero once: filling the whole array with zeros
    first would be a second pass over it, done by one thread.
    """
    C, N, h, w = values.shape
    end = front + N * Hg * Wg
    flat = np.empty((C, end + back), dtype=values.dtype)
    grid = flat[:, front:end].reshape(C, N, Hg, Wg)

    def fill(rows: slice) -> None:
        flat[rows, :front] = 0
        grid[rows, :, :h, :w] = values[rows]
        grid[rows, :, :h, w:] = 0  # the zeros after each data row
        grid[rows, :, h:] = 0  # the zero rows after each image
        flat[rows, end:] = 0

    _for_channels(values, fill)
    return flat


def crop(grid: Array, rows: int, cols: int) -> Array:
    """A contiguous copy of grid[:, :, :rows, :cols] (channel-parallel on the CPU)."""
    out = np.empty(grid.shape[:2] + (rows, cols), dtype=grid.dtype)

    def copy(channels: slice) -> None:
        out[channels] = grid[channels, :, :rows, :cols]

    _for_channels(grid, copy)
    return out


def _for_channels(array: Array, body) -> None:
    """body(channels) over the channel axis, shared among the threads."""
    parallel.for_rows(array.shape[0], body, work=array.size)


def _chunk(n_rows: int, L: int) -> int:
    return max(256, min(L, CHUNK_VALUES // max(n_rows, 1)))


def _columns(src: Array, offsets: list[int], a: int, b: int, out: Array) -> Array:
    """Columns a..b of the shifted column matrix of src, built into ``out``.

    src: (C, *) flat rows; returns (C*K, b - a) with row c*K + k equal to
    src[c, a + offsets[k] : b + offsets[k]].
    """
    C, K = src.shape[0], len(offsets)
    cols = out[:, :, : b - a]
    for k, s in enumerate(offsets):
        cols[:, k] = src[:, a + s : b + s]
    return cols.reshape(C * K, b - a)


def _over_chunks(src: Array, offsets: list[int], L: int, body: Callable) -> Array | None:
    """Sum of ``body(a, b, columns)`` over cache-sized chunks [a, b) of range(L).

    ``columns`` is the shifted column matrix of src for positions a..b (see
    _columns); a body that returns None (it wrote its result somewhere)
    adds nothing. On the CPU the chunks are shared out among threads
    (minires/parallel.py): worker w of n takes chunks w, w + n, ..., with a
    column buffer of its own, and its partial sum is added at the end.
    """
    C, K = src.shape[0], len(offsets)
    step = _chunk(C * K, L)

    def work(worker: int, n_workers: int) -> Array | None:
        total = None
        buffer = np.empty((C, K, step), dtype=src.dtype)
        for a in range(worker * step, L, n_workers * step):
            b = min(a + step, L)
            term = body(a, b, _columns(src, offsets, a, b, buffer))
            if term is not None:
                total = term if total is None else total + term
        return total

    if not parallel.enabled():
        return work(0, 1)
    partial = [p for p in parallel.run_workers(work) if p is not None]
    return sum(partial[1:], partial[0]) if partial else None


def shifted_matmul(weights: Array, src: Array, offsets: list[int], L: int) -> Array:
    """(F, C*K) @ shifted-columns(src) -> (F, L), one chunk of columns at a time."""
    return shifted_matmul_and_t(weights, src, offsets, L, None)[0]


def shifted_matmul_t(gy: Array, src: Array, offsets: list[int]) -> Array:
    """gy (F, L) @ shifted-columns(src).T -> (F, C*K): the weight gradient.

    Computed as its transpose, columns @ gy.T -> (C*K, F): the same sums,
    but BLAS then streams the long dimension L with the wide column matrix
    as its first operand, which runs 1.4-2x faster on OpenBLAS's AVX-512
    kernels (docs/benchmarks.md).
    """
    gw_t = _over_chunks(src, offsets, gy.shape[1], lambda a, b, columns: columns @ gy[:, a:b].T)
    return gw_t.T


def shifted_matmul_and_t(
    weights: Array, src: Array, offsets: list[int], L: int, other: Array | None
) -> tuple[Array, Array | None]:
    """Two products of one column matrix, built once per chunk.

    Returns (weights @ columns (F, L), columns @ other.T (C*K, R)) for
    weights (F, C*K) and other (R, L), or None for the second when other is
    None: the input gradient and the weight gradient of a convolution both
    read the shifted columns of the output gradient (see conv_backward).
    """
    out = np.empty((weights.shape[0], L), dtype=src.dtype)

    def products(a: int, b: int, columns: Array) -> Array | None:
        out[:, a:b] = weights @ columns  # each chunk writes only its own columns
        return None if other is None else columns @ other[:, a:b].T

    return out, _over_chunks(src, offsets, L, products)


def conv_forward(xc: Array, w: Array, g: Geometry) -> Array:
    """xc (C, N, H, W), w (F, C, kh, kw) -> y (F, N, OH, OW), channel-major."""
    F = w.shape[0]
    y_full = shifted_matmul(w.reshape(F, -1), pad_flat(xc, g), g.shifts, g.L)
    return crop(y_full.reshape(F, g.N, g.Hg, g.Wg), g.OH, g.OW)


def conv_backward(
    gyc: Array, xc: Array, w: Array, g: Geometry, need_x: bool, need_w: bool
) -> tuple[Array | None, Array | None]:
    """Gradients for gyc (F, N, OH, OW): gx (C, N, H, W) and gw (F, C, kh, kw)."""
    if not (need_x or need_w):
        return None, None  # only the bias needs a gradient
    F, C = w.shape[:2]
    K = g.kh * g.kw
    # gy on the output grid (zeros at the cropped positions), preceded by
    # ``front`` zeros and followed by ``lead`` zeros, so that every shifted
    # read below stays in bounds and reads zero outside the grid.
    front = g.tail
    gy_ext = embed(gyc, front, g.Hg, g.Wg, g.lead)
    x_flat = pad_flat(xc, g) if need_w else None
    if not need_x:
        # gw[f, c, k] = sum_u gy[f, u] x[c, u + s_k]: the shifted columns of x.
        gy_full = gy_ext[:, front : front + g.L]
        return None, shifted_matmul_t(gy_full, x_flat, g.shifts).reshape(w.shape)
    # Input pixel (n, h, w) sits at flat index lead + t, t = (n*Hg + h)*Wg + w,
    # and receives gy[lead + t - s_k] through kernel offset k: the columns
    # below hold, in row (f, k) and column t, gy[f, lead + t - s_k].
    w_t = np.ascontiguousarray(w.transpose(1, 0, 2, 3)).reshape(C, -1)
    back = [front + g.lead - s for s in g.shifts]
    # The same columns give the weight gradient: with u = lead + t - s_k,
    # gw[f, c, k] = sum_u gy[f, u] x[c, u + s_k] = sum_t col[(f, k), t] x[c, lead + t].
    # (t outside [0, L) would meet only zero padding of x, so nothing is lost.)
    x_grid = x_flat[:, g.lead : g.lead + g.L] if need_w else None
    gx_grid, gw_fkc = shifted_matmul_and_t(w_t, gy_ext, back, g.L, x_grid)
    gw = None
    if need_w:
        gw = np.ascontiguousarray(gw_fkc.reshape(F, K, C).transpose(0, 2, 1)).reshape(w.shape)
    gx = crop(gx_grid.reshape(C, g.N, g.Hg, g.Wg), g.H, g.W)
    return gx, gw
