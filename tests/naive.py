"""Naive references: the ops written as the definitions read, loop by loop.

Nothing here shares code or tricks with minires (no im2col, no slicing by
kernel offset, no padded copies): every output value is computed by visiting
the input values that define it, with explicit bounds checks for padding.
Slow, and obviously right, which is the point. All arithmetic is in float64.
"""

from __future__ import annotations

import math

import numpy as np


def out_size(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def conv2d(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1) -> np.ndarray:
    """y[n, f, oh, ow] = b[f] + sum_{c,i,j} x[n, g*Cg + c, oh*sh + i*dh - ph, ow*sw + j*dw - pw]
    * w[f, c, i, j], with g = f // (F / groups) the group of output channel f and
    Cg = C / groups the input channels each group sees."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    N, C, H, W = x.shape
    F, Cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    OH = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((N, F, OH, OW))
    for n in range(N):
        for f in range(F):
            g = f // (F // groups)
            for oh in range(OH):
                for ow in range(OW):
                    acc = 0.0 if b is None else float(b[f])
                    for c in range(Cg):
                        for i in range(kh):
                            for j in range(kw):
                                r, s = oh * sh + i * dh - ph, ow * sw + j * dw - pw
                                if 0 <= r < H and 0 <= s < W:
                                    acc += x[n, g * Cg + c, r, s] * w[f, c, i, j]
                    y[n, f, oh, ow] = acc
    return y


def _pool(x, kernel, stride, padding, reduce) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    OH, OW = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    y = np.zeros((N, C, OH, OW))
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    window = []
                    for i in range(kh):
                        for j in range(kw):
                            r, s = oh * sh + i - ph, ow * sw + j - pw
                            window.append(x[n, c, r, s] if 0 <= r < H and 0 <= s < W else None)
                    y[n, c, oh, ow] = reduce(window)
    return y


def max_pool2d(x, kernel, stride, padding=(0, 0)) -> np.ndarray:
    """Max over the in-bounds values of each window (padding never wins)."""
    return _pool(x, kernel, stride, padding, lambda w: max(v for v in w if v is not None))


def avg_pool2d(x, kernel, stride, padding=(0, 0)) -> np.ndarray:
    """Sum of the in-bounds values / (kh*kw): padding counts as zeros (count_include_pad)."""
    return _pool(x, kernel, stride, padding, lambda w: sum(v for v in w if v is not None) / len(w))


def adaptive_avg_pool2d_1(x) -> np.ndarray:
    """Global average pool: (N, C, H, W) -> (N, C, 1, 1)."""
    x = np.asarray(x, dtype=np.float64)
    N, C, H, W = x.shape
    y = np.zeros((N, C, 1, 1))
    for n in range(N):
        for c in range(C):
            total = 0.0
            for r in range(H):
                for s in range(W):
                    total += x[n, c, r, s]
            y[n, c, 0, 0] = total / (H * W)
    return y


def batch_norm(
    x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5
):
    """Returns (y, new_running_mean, new_running_var) for x of shape (N, C, ...).

    Training: per-channel batch mean and biased variance normalise x; the
    running statistics move towards the batch mean and the *unbiased*
    variance. Evaluation: the running statistics normalise x.
    """
    x = np.asarray(x, dtype=np.float64)
    N, C = x.shape[:2]
    rest = x.shape[2:]
    y = np.zeros_like(x)
    new_mean = None if running_mean is None else np.array(running_mean, dtype=np.float64)
    new_var = None if running_var is None else np.array(running_var, dtype=np.float64)
    for c in range(C):
        values = [x[(n, c, *pos)] for n in range(N) for pos in np.ndindex(*rest)]
        M = len(values)
        if training:
            mean = sum(values) / M
            var = sum((v - mean) ** 2 for v in values) / M
            if new_mean is not None:
                new_mean[c] = (1 - momentum) * new_mean[c] + momentum * mean
                new_var[c] = (1 - momentum) * new_var[c] + momentum * var * M / (M - 1)
        else:
            mean, var = float(running_mean[c]), float(running_var[c])
        for n in range(N):
            for pos in np.ndindex(*rest):
                xhat = (x[(n, c, *pos)] - mean) / math.sqrt(var + eps)
                y[(n, c, *pos)] = float(gamma[c]) * xhat + float(beta[c])
    return y, new_mean, new_var


def linear(x, w, b=None) -> np.ndarray:
    """y[n, o] = b[o] + sum_i x[n, i] * w[o, i]."""
    x = np.asarray(x, dtype=np.float64)
    N, I = x.shape
    O = w.shape[0]
    y = np.zeros((N, O))
    for n in range(N):
        for o in range(O):
            acc = 0.0 if b is None else float(b[o])
            for i in range(I):
                acc += x[n, i] * float(w[o, i])
            y[n, o] = acc
    return y


def cross_entropy(logits, labels) -> float:
    """mean over n of log(sum_k exp(z[n, k])) - z[n, label[n]], in plain Python floats.

    The log-sum-exp is shifted by the row maximum (the textbook identity
    log sum exp z = m + log sum exp(z - m)), so huge logits stay finite.
    """
    logits = np.asarray(logits, dtype=np.float64)
    total = 0.0
    for row, label in zip(logits.tolist(), np.asarray(labels).tolist()):
        m = max(row)
        lse = m + math.log(sum(math.exp(z - m) for z in row))
        total += lse - row[label]
    return total / len(logits)


def im2col_entry(x, c, i, j, n, oh, ow, stride, padding) -> float:
    """The value im2col puts at row (c, i, j), column (n, oh, ow), x being (C, N, H, W)."""
    (sh, sw), (ph, pw) = stride, padding
    H, W = x.shape[2:]
    r, s = oh * sh + i - ph, ow * sw + j - pw
    return float(x[c, n, r, s]) if 0 <= r < H and 0 <= s < W else 0.0
