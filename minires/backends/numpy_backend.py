"""The NumPy backend: the reference, written to be read, on the CPU.

Every op of the backend contract (minires/backends/__init__.py) is here in
plain NumPy, with no threads: this is the textbook code a reader reaches by
following ``F.conv2d``, and what the tests compare the other backends with.
``cuda_backend.py`` has a twin of each function, and ``cpu_backend.py`` runs
these same functions on every core (plus a faster stride-1 convolution).
Loops here run over kernel *offsets* (kh * kw iterations, 9 for a 3x3 conv),
never over pixels: each iteration is one strided-slice copy done in C.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from .layout import from_channel_major, out_size, to_channel_major

# --------------------------------------------------------------------------
# Convolution: im2col, then one GEMM
# --------------------------------------------------------------------------


def im2col(
    x: np.ndarray, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, out: Any = None
) -> np.ndarray:
    """(C, N, H, W) -> (C*kh*kw, N*OH*OW): one column per output pixel.

    Row (c, i, j) of the result holds, for every output pixel (n, oh, ow), the
    input value x[c, n, oh*sh + i - ph, ow*sw + j - pw] (0 outside the image).
    For a fixed kernel offset (i, j) that is a strided slice of the padded
    input, so the whole matrix is built with kh*kw slice copies. Because x is
    channel-major, each copied row is a run of OW contiguous values.
    ``out``, if given, is the (C, kh, kw, N, OH, OW) array to fill.
    """
    C, N, H, W = x.shape
    OH, OW = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    col = np.empty((C, kh, kw, N, OH, OW), dtype=x.dtype) if out is None else out
    for i in range(kh):
        for j in range(kw):
            col[:, i, j] = x[:, :, i : i + sh * OH : sh, j : j + sw * OW : sw]
    return col.reshape(C * kh * kw, N * OH * OW)


def col2im(
    col: np.ndarray,
    x_shape: tuple[int, int, int, int],
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
) -> np.ndarray:
    """(C*kh*kw, N*OH*OW) -> (C, N, H, W), the adjoint of :func:`im2col`.

    An input pixel was copied into one column entry per window that covers
    it, so its gradient is the sum of those entries. Adding each offset's
    slice back in place does that sum: kh*kw strided adds, no scatter.
    """
    C, N, H, W = x_shape
    OH, OW = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    col6 = col.reshape(C, kh, kw, N, OH, OW)
    x = np.zeros((C, N, H + 2 * ph, W + 2 * pw), dtype=col.dtype)
    for i in range(kh):
        for j in range(kw):
            x[:, :, i : i + sh * OH : sh, j : j + sw * OW : sw] += col6[:, i, j]
    if ph or pw:
        x = np.ascontiguousarray(x[:, :, ph : ph + H, pw : pw + W])
    return x


def _matmul_t(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a @ b.T


def conv2d_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    im2col: Callable = im2col,
    matmul: Callable = operator.matmul,
) -> tuple[np.ndarray, tuple]:
    """y = conv(x, w) + b: x (N, C, H, W), w (F, C, kh, kw), b (F,) -> y (N, F, OH, OW).

        col = im2col(x)                (C*kh*kw, N*OH*OW)
        y   = w.reshape(F, -1) @ col   (F, N*OH*OW): channel-major, returned as
                                       an (N, F, OH, OW) view with no copy

    Returns y and what conv2d_backward needs: the channel-major input, not
    col (kh*kw times larger, rebuilt when the weight gradient needs it). The
    CUDA backend runs this same function with its own im2col kernel, and the
    fast CPU backend with a GEMM split among threads.
    """
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    OH, OW = out_size(H, kh, stride[0], padding[0]), out_size(W, kw, stride[1], padding[1])
    xc = to_channel_major(x)
    saved = (xc, w, stride, padding)
    y = matmul(w.reshape(F, -1), _columns(saved, im2col)).reshape(F, N, OH, OW)
    if b is not None:
        y += b[:, None, None, None]
    return from_channel_major(y), saved


def conv2d_backward(
    gy: np.ndarray,
    saved: tuple,
    needs_grad: tuple[bool, ...],
    im2col: Callable = im2col,
    col2im: Callable = col2im,
    matmul: Callable = operator.matmul,
    matmul_t: Callable = _matmul_t,
) -> tuple[np.ndarray | None, ...]:
    """Gradients (gx, gw, gb) for gy (N, F, OH, OW); None where needs_grad says no.

    gw = gy @ col.T            the forward GEMM, transposed
    gx = col2im(w.T @ gy)      each column scattered back to its pixels
    gb = gy summed over (N, OH, OW)
    """
    xc, w, stride, padding = saved
    F, _, kh, kw = w.shape
    gy2 = to_channel_major(gy).reshape(F, -1)
    gx = gw = gb = None
    if len(needs_grad) > 2 and needs_grad[2]:
        gb = gy2.sum(axis=1)
    if needs_grad[0]:
        gcol = matmul(w.reshape(F, -1).T, gy2)
        if _is_one_by_one(saved):
            gx = gcol.reshape(xc.shape)
        else:
            gx = col2im(gcol, xc.shape, kh, kw, *stride, *padding)
        gx = from_channel_major(gx)
    if needs_grad[1]:
        gw = matmul_t(gy2, _columns(saved, im2col)).reshape(w.shape)
    return gx, gw, gb


def _is_one_by_one(saved: tuple) -> bool:
    """A 1x1 kernel, stride 1, no padding: the input already is the column matrix."""
    xc, w, stride, padding = saved
    return w.shape[2:] == (1, 1) and stride == (1, 1) and padding == (0, 0)


def _columns(saved: tuple, im2col: Callable) -> np.ndarray:
    xc, w, stride, padding = saved
    if _is_one_by_one(saved):
        return xc.reshape(xc.shape[0], -1)
    return im2col(xc, *w.shape[2:], *stride, *padding)


# --------------------------------------------------------------------------
# BatchNorm over a channel-major (C, M) matrix
# --------------------------------------------------------------------------


def batch_norm_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float,
    running_mean: np.ndarray | None,
    running_var: np.ndarray | None,
    momentum: float,
    out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalise each row of x (C, M) with its own mean and variance.

    Returns (y, xhat, inv_std): y = gamma * xhat + beta and xhat (C, M), and
    inv_std (C,). When running_mean is given, running_mean and running_var
    are updated in place. Channels are independent: the fast CPU backend runs
    this function on blocks of channels in threads, writing into ``out``.
    """
    C, M = x.shape
    y, xhat, inv_std = out if out is not None else (np.empty_like(x), np.empty_like(x), None)
    mean = x.mean(axis=1)
    np.subtract(x, mean[:, None], out=xhat)
    var = np.einsum("cm,cm->c", xhat, xhat) / M  # sums the squares without a temporary
    inv_std = np.divide(1.0, np.sqrt(var + eps), out=inv_std)
    xhat *= inv_std[:, None]
    np.multiply(xhat, gamma[:, None], out=y)
    y += beta[:, None]
    if running_mean is not None:
        # PyTorch keeps the *unbiased* variance in its running estimate.
        unbiased = var * (M / max(M - 1, 1))
        running_mean *= 1.0 - momentum
        running_mean += momentum * mean
        running_var *= 1.0 - momentum
        running_var += momentum * unbiased
    return y, xhat, inv_std


def batch_norm_backward(
    gy: np.ndarray,
    xhat: np.ndarray,
    gamma: np.ndarray,
    inv_std: np.ndarray,
    out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of y = gamma * xhat + beta, xhat = (x - mean(x)) * inv_std.

    With M values per channel (docs/derivations.md has the steps):
        gbeta  = sum(gy)
        ggamma = sum(gy * xhat)
        gx     = gamma * inv_std * (gy - gbeta/M - xhat * ggamma/M)
    The two sums are the gradient flowing back through mean and variance.
    Returns (gx (C, M), ggamma (C,), gbeta (C,)), into ``out`` if given.
    """
    C, M = gy.shape
    gx, ggamma, gbeta = out if out is not None else (np.empty_like(gy), None, None)
    gbeta = np.sum(gy, axis=1, out=gbeta)
    ggamma = np.einsum("cm,cm->c", gy, xhat, out=ggamma)
    np.multiply(xhat, (-ggamma / M)[:, None], out=gx)
    gx += gy
    gx -= (gbeta / M)[:, None]
    gx *= (gamma * inv_std)[:, None]
    return gx, ggamma, gbeta


# --------------------------------------------------------------------------
# ReLU: NumPy's elementwise ops keep their input's memory layout, so a
# channel-major activation stays channel-major.
# --------------------------------------------------------------------------


def relu_forward(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def relu_backward(gy: np.ndarray, y: np.ndarray) -> np.ndarray:
    # y > 0 exactly where x > 0; at x == 0 the gradient is taken as 0.
    # (Multiplying by the boolean mask is ~10x faster than np.where with a
    # scalar, and bool * float32 stays float32; a NaN gy stays NaN.)
    return gy * (y > 0)


# --------------------------------------------------------------------------
# Pooling over (P, H, W) planes
# --------------------------------------------------------------------------


def _windows(x: np.ndarray, i: int, j: int, OH: int, OW: int, sh: int, sw: int) -> np.ndarray:
    """The (P, OH, OW) view of the values at offset (i, j) of every window."""
    return x[:, i : i + sh * OH : sh, j : j + sw * OW : sw]


def max_pool_forward(
    x: np.ndarray, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each window's maximum, and its offset i*kw + j in the window (argmax).

    The scan is PyTorch's: offset (i, j) takes over when its value is
    strictly larger than the best so far, so on ties the first maximum wins,
    or when it is NaN (NaN > v is always false, so ``>`` alone would drop a
    NaN anywhere but first in its window): a window with a NaN gives NaN, so
    a diverged activation stays visible, and its gradient goes to the
    window's last NaN, where PyTorch sends it. Padding is -inf, which never
    beats a real value.
    """
    P, H, W = x.shape
    OH, OW = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    if ph or pw:
        x = np.pad(x, ((0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    y = _windows(x, 0, 0, OH, OW, sh, sw).copy()
    argmax = np.zeros((P, OH, OW), dtype=np.int32)
    better = np.empty((P, OH, OW), dtype=bool)
    nan = np.empty((P, OH, OW), dtype=bool)
    for i in range(kh):
        for j in range(kw):
            if i == 0 and j == 0:
                continue
            w = _windows(x, i, j, OH, OW, sh, sw)
            np.greater(w, y, out=better)  # strict: the first maximum keeps the gradient
            better |= np.isnan(w, out=nan)
            np.copyto(y, w, where=better)
            argmax[better] = i * kw + j
    return y, argmax


def _add_to_windows(
    share_at, x_shape: tuple[int, int, int], kh: int, kw: int, sh: int, sw: int, ph: int, pw: int
) -> np.ndarray:
    """Pooling's backward: add ``share_at(i, j)`` (P, OH, OW) to the input value
    at offset (i, j) of every window, then drop the padding."""
    P, H, W = x_shape
    gx = None
    for i in range(kh):
        for j in range(kw):
            share = share_at(i, j)
            if gx is None:
                gx = np.zeros((P, H + 2 * ph, W + 2 * pw), dtype=share.dtype)
            OH, OW = share.shape[1:]
            _windows(gx, i, j, OH, OW, sh, sw)[...] += share
    return np.ascontiguousarray(gx[:, ph : ph + H, pw : pw + W])


def max_pool_backward(
    gy: np.ndarray,
    argmax: np.ndarray,
    x_shape: tuple[int, int, int],
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
) -> np.ndarray:
    """Each window's gradient goes to its winning offset only."""
    return _add_to_windows(
        lambda i, j: np.where(argmax == i * kw + j, gy, 0), x_shape, kh, kw, sh, sw, ph, pw
    )


def avg_pool_forward(
    x: np.ndarray, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int
) -> np.ndarray:
    P, H, W = x.shape
    OH, OW = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    if ph or pw:
        x = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((P, OH, OW), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            y += _windows(x, i, j, OH, OW, sh, sw)
    y /= kh * kw
    return y


def avg_pool_backward(
    gy: np.ndarray,
    x_shape: tuple[int, int, int],
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
) -> np.ndarray:
    """Every value of a window receives an equal share of its gradient."""
    share = gy / (kh * kw)
    return _add_to_windows(lambda i, j: share, x_shape, kh, kw, sh, sw, ph, pw)


# --------------------------------------------------------------------------
# Softmax cross-entropy
# --------------------------------------------------------------------------


def cross_entropy_forward(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # log softmax = z - log(sum(exp(z))) with z = logits - max: exp never
    # overflows and the largest term is exp(0) = 1, so the log is finite.
    N = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(N), labels].mean()
    return np.asarray(loss, dtype=logits.dtype), np.exp(log_probs)


def cross_entropy_backward(probs: np.ndarray, labels: np.ndarray, gloss: np.ndarray) -> np.ndarray:
    N = probs.shape[0]
    g = probs.copy()
    g[np.arange(N), labels] -= 1
    g *= gloss / N
    return g
