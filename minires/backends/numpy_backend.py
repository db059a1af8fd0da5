"""The NumPy backend: the device-specific steps of the ops, on the CPU.

Each function here has a twin of the same name in ``cuda_backend.py`` (whose
kernels live in ``kernels/*.cu``); the contract they share is written in
``minires/backends/__init__.py``. Loops here run over kernel *offsets*
(kh * kw iterations, 9 for a 3x3 conv), never over pixels: each iteration is
one strided-slice copy that NumPy performs in C.
"""

from __future__ import annotations

import numpy as np

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
    """Normalise each row of x (C, M) with its own mean and variance."""
    M = x.shape[1]
    mean = x.mean(axis=1)
    xhat = x - mean[:, None]
    # einsum sums the squares without materialising xhat**2.
    var = np.einsum("cm,cm->c", xhat, xhat) / M
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat *= inv_std[:, None]
    y = xhat * gamma[:, None]
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
    gy: np.ndarray, xhat: np.ndarray, gamma: np.ndarray, inv_std: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of y = gamma * xhat + beta, xhat = (x - mean(x)) * inv_std.

    With M values per channel (docs/derivations.md has the steps):
        gbeta  = sum(gy)
        ggamma = sum(gy * xhat)
        gx     = gamma * inv_std * (gy - gbeta/M - xhat * ggamma/M)
    The two sums are the gradient flowing back through mean and variance.
    """
    M = gy.shape[1]
    gbeta = gy.sum(axis=1)
    ggamma = np.einsum("cm,cm->c", gy, xhat)
    gx = xhat * (-ggamma / M)[:, None]
    gx += gy
    gx -= (gbeta / M)[:, None]
    gx *= (gamma * inv_std)[:, None]
    return gx, ggamma, gbeta


# --------------------------------------------------------------------------
# ReLU
# --------------------------------------------------------------------------


def relu_forward(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def relu_backward(gy: np.ndarray, y: np.ndarray) -> np.ndarray:
    # y > 0 exactly where x > 0; at x == 0 the gradient is taken as 0.
    # (Multiplying by the boolean mask is ~10x faster than np.where with a
    # scalar, and bool * float32 stays float32.)
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
    P, H, W = x.shape
    OH, OW = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    if ph or pw:
        x = np.pad(x, ((0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    y = _windows(x, 0, 0, OH, OW, sh, sw).copy()
    argmax = np.zeros((P, OH, OW), dtype=np.int32)
    for i in range(kh):
        for j in range(kw):
            if i == 0 and j == 0:
                continue
            w = _windows(x, i, j, OH, OW, sh, sw)
            better = w > y  # strict: the first maximum keeps the gradient
            np.copyto(y, w, where=better)
            argmax[better] = i * kw + j
    return y, argmax


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
    P, H, W = x_shape
    OH, OW = gy.shape[1:]
    gx = np.zeros((P, H + 2 * ph, W + 2 * pw), dtype=gy.dtype)
    for i in range(kh):
        for j in range(kw):
            _windows(gx, i, j, OH, OW, sh, sw)[...] += np.where(argmax == i * kw + j, gy, 0)
    return np.ascontiguousarray(gx[:, ph : ph + H, pw : pw + W])


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
    P, H, W = x_shape
    OH, OW = gy.shape[1:]
    share = gy / (kh * kw)
    gx = np.zeros((P, H + 2 * ph, W + 2 * pw), dtype=gy.dtype)
    for i in range(kh):
        for j in range(kw):
            _windows(gx, i, j, OH, OW, sh, sw)[...] += share
    return np.ascontiguousarray(gx[:, ph : ph + H, pw : pw + W])


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
