"""The NumPy backend: the device-specific steps of the ops, on the CPU.

Each function here has a twin of the same name in ``cuda_backend.py`` (whose
kernels live in ``kernels/*.cu``); the contract they share is written in
``minires/backends/__init__.py``. Loops here run over kernel *offsets*
(kh * kw iterations, 9 for a 3x3 conv), never over pixels: each iteration is
one strided-slice copy that NumPy performs in C.
"""

from __future__ import annotations

import numpy as np

from .. import parallel

# --------------------------------------------------------------------------
# im2col / col2im
# --------------------------------------------------------------------------


def out_size(size: int, k: int, s: int, p: int) -> int:
    """Output length of a window of size ``k``, stride ``s``, padding ``p``."""
    return (size + 2 * p - k) // s + 1


def im2col(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int) -> np.ndarray:
    """(C, N, H, W) -> (C*kh*kw, N*OH*OW): one column per output pixel.

    Row (c, i, j) of the result holds, for every output pixel (n, oh, ow), the
    input value x[c, n, oh*sh + i - ph, ow*sw + j - pw] (0 outside the image).
    For a fixed kernel offset (i, j) that is a strided slice of the padded
    input, so the whole matrix is built with kh*kw slice copies. Because x is
    channel-major, each copied row is a run of OW contiguous values.
    """
    C, N, H, W = x.shape
    OH, OW = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    col = np.empty((C, kh, kw, N, OH, OW), dtype=x.dtype)

    def channels(c: slice) -> None:  # blocks of channels run on all cores
        for i in range(kh):
            for j in range(kw):
                col[c, i, j] = x[c, :, i : i + sh * OH : sh, j : j + sw * OW : sw]

    parallel.for_rows(C, channels, work=col.size)
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

    def channels(c: slice) -> None:
        for i in range(kh):
            for j in range(kw):
                x[c, :, i : i + sh * OH : sh, j : j + sw * OW : sw] += col6[c, i, j]

    parallel.for_rows(C, channels, work=col.size)
    if ph or pw:
        x = np.ascontiguousarray(x[:, :, ph : ph + H, pw : pw + W])
    return x


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalise each row of x (C, M) with its own mean and variance.

    Channels are independent, so blocks of them are shared among the CPU's
    threads (minires/parallel.py), as the CUDA kernel gives each channel a
    block of threads.
    """
    C, M = x.shape
    y, xhat = np.empty_like(x), np.empty_like(x)
    inv_std = np.empty(C, dtype=x.dtype)

    def channels(c: slice) -> None:
        mean = x[c].mean(axis=1)
        np.subtract(x[c], mean[:, None], out=xhat[c])
        # einsum sums the squares without materialising xhat**2.
        var = np.einsum("cm,cm->c", xhat[c], xhat[c]) / M
        inv_std[c] = 1.0 / np.sqrt(var + eps)
        xhat[c] *= inv_std[c, None]
        np.multiply(xhat[c], gamma[c, None], out=y[c])
        y[c] += beta[c, None]
        if running_mean is not None:
            # PyTorch keeps the *unbiased* variance in its running estimate.
            unbiased = var * (M / max(M - 1, 1))
            running_mean[c] *= 1.0 - momentum
            running_mean[c] += momentum * mean
            running_var[c] *= 1.0 - momentum
            running_var[c] += momentum * unbiased

    parallel.for_rows(C, channels, work=x.size)
    return y, xhat, inv_std


def batch_norm_backward(
    gy: np.ndarray, xhat: np.ndarray, gamma: np.ndarray, inv_std: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of y = gamma * xhat + beta, xhat = (x - mean(x)) * inv_std.

    With M values per channel (docs/derivations.md has the steps):
        gbeta  = sum(gy)
        ggamma = sum(gy * xhat)
        gx     = gamma * inv_std * (gy - gbeta/M - xhat * ggamma/M)
    The two sums are the gradient flowing back through mean and variance.
    """
    C, M = gy.shape
    gx = np.empty_like(gy)
    ggamma, gbeta = np.empty(C, dtype=gy.dtype), np.empty(C, dtype=gy.dtype)

    def channels(c: slice) -> None:
        gbeta[c] = gy[c].sum(axis=1)
        ggamma[c] = np.einsum("cm,cm->c", gy[c], xhat[c])
        np.multiply(xhat[c], (-ggamma[c] / M)[:, None], out=gx[c])
        gx[c] += gy[c]
        gx[c] -= (gbeta[c] / M)[:, None]
        gx[c] *= (gamma[c] * inv_std[c])[:, None]

    parallel.for_rows(C, channels, work=gy.size)
    return gx, ggamma, gbeta


# --------------------------------------------------------------------------
# ReLU
# --------------------------------------------------------------------------


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
        return np.maximum(x, 0)
    xr, yr = rows
    parallel.for_rows(len(xr), lambda r: np.maximum(xr[r], 0, out=yr[r]), work=x.size)
    return y


def relu_backward(gy: np.ndarray, y: np.ndarray) -> np.ndarray:
    # y > 0 exactly where x > 0; at x == 0 the gradient is taken as 0.
    # (Multiplying by the boolean mask is ~10x faster than np.where with a
    # scalar, and bool * float32 stays float32.)
    gx = np.empty_like(y)
    rows = _rows_of(gy, y, gx)
    if rows is None or y.ndim == 0:
        return gy * (y > 0)
    gyr, yr, gxr = rows
    parallel.for_rows(len(yr), lambda r: np.multiply(gyr[r], yr[r] > 0, out=gxr[r]), work=y.size)
    return gx


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
