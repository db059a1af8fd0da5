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

from .layout import from_channel_major, out_size, pool_out_size, span, to_channel_major

# --------------------------------------------------------------------------
# Convolution: im2col, then one GEMM
# --------------------------------------------------------------------------


def im2col(
    x: np.ndarray,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
    dh: int = 1,
    dw: int = 1,
    out: Any = None,
) -> np.ndarray:
    """(C, N, H, W) -> (C*kh*kw, N*OH*OW): one column per output pixel.

    Row (c, i, j) of the result holds, for every output pixel (n, oh, ow), the
    input value x[c, n, oh*sh + i*dh - ph, ow*sw + j*dw - pw] (0 outside the
    image): kernel offset (i, j) sits i*dh rows and j*dw columns into the
    window (dilation dh, dw; 1 is the plain, dense kernel). For a fixed
    offset that is a strided slice of the padded input, so the whole matrix
    is built with kh*kw slice copies. Because x is channel-major, each copied
    row is a run of OW contiguous values.
    ``out``, if given, is the (C, kh, kw, N, OH, OW) array to fill.
    """
    C, N, H, W = x.shape
    OH, OW = out_size(H, span(kh, dh), sh, ph), out_size(W, span(kw, dw), sw, pw)
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    col = np.empty((C, kh, kw, N, OH, OW), dtype=x.dtype) if out is None else out
    for i in range(kh):
        for j in range(kw):
            r, s = i * dh, j * dw  # where offset (i, j) sits in the window
            col[:, i, j] = x[:, :, r : r + sh * OH : sh, s : s + sw * OW : sw]
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
    dh: int = 1,
    dw: int = 1,
) -> np.ndarray:
    """(C*kh*kw, N*OH*OW) -> (C, N, H, W), the adjoint of :func:`im2col`.

    An input pixel was copied into one column entry per window that covers
    it, so its gradient is the sum of those entries. Adding each offset's
    slice back in place does that sum: kh*kw strided adds, no scatter.
    """
    C, N, H, W = x_shape
    OH, OW = out_size(H, span(kh, dh), sh, ph), out_size(W, span(kw, dw), sw, pw)
    col6 = col.reshape(C, kh, kw, N, OH, OW)
    x = np.zeros((C, N, H + 2 * ph, W + 2 * pw), dtype=col.dtype)
    for i in range(kh):
        for j in range(kw):
            r, s = i * dh, j * dw
            x[:, :, r : r + sh * OH : sh, s : s + sw * OW : sw] += col6[:, i, j]
    if ph or pw:
        x = np.ascontiguousarray(x[:, :, ph : ph + H, pw : pw + W])
    return x


def _matmul_t(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a @ b.swapaxes(-1, -2)


def conv2d_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    im2col: Callable = im2col,
    matmul: Callable = operator.matmul,
    channel_major: Callable = to_channel_major,
) -> tuple[np.ndarray, tuple]:
    """y = conv(x, w) + b: x (N, C, H, W), w (F, Cg, kh, kw), b (F,) -> y (N, F, OH, OW).

        col = im2col(x)          (C*kh*kw, N*OH*OW), seen as (G, Cg*kh*kw, N*OH*OW)
        y   = w @ col            w seen as (G, F/G, Cg*kh*kw); y (G, F/G, N*OH*OW)
                                 is channel-major, returned as an (N, F, OH, OW) view

    With G = groups, the channels split into G independent convolutions of
    Cg = C/G input channels each: output channels [g*F/G, (g+1)*F/G) see only
    input channels [g*Cg, (g+1)*Cg), whose rows of col are consecutive. So
    the product is one *batched* GEMM, one (F/G, Cg*kh*kw) by
    (Cg*kh*kw, N*OH*OW) product per group. G = 1 is the ordinary convolution
    (a batch of one GEMM), G = C a depthwise one.

    Returns y and what conv2d_backward needs: the channel-major input, not
    col (kh*kw times larger, rebuilt when the weight gradient needs it). The
    CUDA backend runs this same function with its own im2col kernel (and a
    ``channel_major`` that hands it an NCHW batch as a view, which its kernel
    reads through strides), and the fast CPU backend with a GEMM split among
    threads.
    """
    N, C, H, W = x.shape
    F, Cg, kh, kw = w.shape  # Cg = C / groups input channels per group
    G = groups
    OH = out_size(H, span(kh, dilation[0]), stride[0], padding[0])
    OW = out_size(W, span(kw, dilation[1]), stride[1], padding[1])
    xc = channel_major(x)
    saved = (xc, w, stride, padding, dilation, groups)
    col = _columns(saved, im2col).reshape(G, Cg * kh * kw, N * OH * OW)
    y = matmul(w.reshape(G, F // G, Cg * kh * kw), col)
    y = y.reshape(F, N, OH, OW)
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
    Each product is batched over the G groups, as the forward's.
    """
    xc, w, stride, padding, dilation, groups = saved
    F, Cg, kh, kw = w.shape
    G, L = groups, gy.shape[0] * gy.shape[2] * gy.shape[3]  # L = N*OH*OW
    gy2 = to_channel_major(gy).reshape(G, F // G, L)
    w3 = w.reshape(G, F // G, Cg * kh * kw)
    gx = gw = gb = None
    if len(needs_grad) > 2 and needs_grad[2]:
        gb = gy2.sum(axis=2).reshape(F)
    if needs_grad[0]:
        gcol = matmul(w3.swapaxes(1, 2), gy2).reshape(G * Cg * kh * kw, L)
        if _is_one_by_one(saved):
            gx = gcol.reshape(xc.shape)
        else:
            gx = col2im(gcol, xc.shape, kh, kw, *stride, *padding, *dilation)
        gx = from_channel_major(gx)
    if needs_grad[1]:
        col = _columns(saved, im2col).reshape(G, Cg * kh * kw, L)
        gw = matmul_t(gy2, col).reshape(w.shape)
    return gx, gw, gb


def _is_one_by_one(saved: tuple) -> bool:
    """A 1x1 kernel, stride 1, no padding: the input already is the column matrix."""
    xc, w, stride, padding = saved[:4]
    return w.shape[2:] == (1, 1) and stride == (1, 1) and padding == (0, 0)


def _columns(saved: tuple, im2col: Callable) -> np.ndarray:
    xc, w, stride, padding, dilation, _ = saved
    if _is_one_by_one(saved):
        return xc.reshape(xc.shape[0], -1)
    return im2col(xc, *w.shape[2:], *stride, *padding, *dilation)


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
    *,
    relu: bool = False,
    count: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalise each row of x (C, M) with its own mean and variance.

    Returns (y, xhat, inv_std): y = gamma * xhat + beta and xhat (C, M), and
    inv_std (C,); with relu=True, y = relu_forward(gamma * xhat + beta), the
    ReLU fused in (one pass fewer on a GPU, the same numbers). When
    running_mean is given, running_mean and running_var are updated in
    place, and ``count`` (BatchNorm2d's num_batches_tracked) incremented.
    Channels are independent: the fast CPU backend runs this function on
    blocks of channels in threads, writing into ``out``.
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
    if relu:
        np.maximum(y, 0, out=y)  # relu_forward, in place
    if running_mean is not None:
        # PyTorch keeps the *unbiased* variance in its running estimate.
        unbiased = var * (M / max(M - 1, 1))
        running_mean *= 1.0 - momentum
        running_mean += momentum * mean
        running_var *= 1.0 - momentum
        running_var += momentum * unbiased
    if count is not None:
        count += 1
    return y, xhat, inv_std


def batch_norm_backward(
    gy: np.ndarray,
    xhat: np.ndarray,
    gamma: np.ndarray,
    inv_std: np.ndarray,
    out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    *,
    y: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of y = gamma * xhat + beta, xhat = (x - mean(x)) * inv_std.

    With M values per channel (docs/derivations.md has the steps):
        gbeta  = sum(gy)
        ggamma = sum(gy * xhat)
        gx     = gamma * inv_std * (gy - gbeta/M - xhat * ggamma/M)
    The two sums are the gradient flowing back through mean and variance.
    Given y, the output of a forward with relu=True, gy is first taken
    through the fused ReLU: gy * (y > 0), relu_backward.
    Returns (gx (C, M), ggamma (C,), gbeta (C,)), into ``out`` if given.
    """
    if y is not None:
        gy = relu_backward(gy, y)
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


def _padded(size: int, k: int, s: int, p: int, n_out: int) -> int:
    """Length of the padded axis that n_out windows read: the input with p on
    each side, or more where a ceil_mode window runs past the padding."""
    return max(size + 2 * p, (n_out - 1) * s + k)


def _pad_planes(
    x: np.ndarray, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, OH: int, OW: int, value
) -> np.ndarray:
    """x (P, H, W) padded with ``value`` so that all OH x OW windows lie inside."""
    P, H, W = x.shape
    bottom = _padded(H, kh, sh, ph, OH) - H - ph
    right = _padded(W, kw, sw, pw, OW) - W - pw
    if ph == pw == bottom == right == 0:
        return x
    return np.pad(x, ((0, 0), (ph, bottom), (pw, right)), constant_values=value)


def _windows(x: np.ndarray, i: int, j: int, OH: int, OW: int, sh: int, sw: int) -> np.ndarray:
    """The (P, OH, OW) view of the values at offset (i, j) of every window."""
    return x[:, i : i + sh * OH : sh, j : j + sw * OW : sw]


def max_pool_forward(
    x: np.ndarray,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
    ceil_mode: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Each window's maximum, and its offset i*kw + j in the window (argmax).

    The scan is PyTorch's: offset (i, j) takes over when its value is
    strictly larger than the best so far, so on ties the first maximum wins,
    or when it is NaN (NaN > v is always false, so ``>`` alone would drop a
    NaN anywhere but first in its window): a window with a NaN gives NaN, so
    a diverged activation stays visible, and its gradient goes to the
    window's last NaN, where PyTorch sends it. Padding is -inf, which never
    beats a real value; that includes the part of a ceil_mode window that
    runs past the padding.
    """
    P, H, W = x.shape
    OH, OW = pool_out_size(H, kh, sh, ph, ceil_mode), pool_out_size(W, kw, sw, pw, ceil_mode)
    x = _pad_planes(x, kh, kw, sh, sw, ph, pw, OH, OW, -np.inf)
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
            OH, OW = share.shape[1:]
            if gx is None:
                Hp, Wp = _padded(H, kh, sh, ph, OH), _padded(W, kw, sw, pw, OW)
                gx = np.zeros((P, Hp, Wp), dtype=share.dtype)
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


def _window_sizes(size: int, k: int, s: int, p: int, n_out: int, count_include_pad: bool):
    """How many of each window's k positions along one axis count in avg-pool's
    divisor (PyTorch's rule): those inside the padded input [-p, size + p)
    when count_include_pad, else only those inside the input [0, size).
    A ceil_mode window's part past the padding never counts."""
    start = np.arange(n_out) * s - p
    end = np.minimum(start + k, size + p)
    if not count_include_pad:
        start, end = np.maximum(start, 0), np.minimum(end, size)
    return end - start


def _avg_pool_divisor(
    x_shape: tuple[int, int, int],
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
    OH: int,
    OW: int,
    count_include_pad: bool,
    dtype: Any,
) -> np.ndarray:
    """(OH, OW): what each window's sum is divided by. kh*kw everywhere, except
    where count_include_pad is False and the window overlaps the padding, or
    a ceil_mode window runs past it. Rows and columns count independently."""
    H, W = x_shape[1:]
    rows = _window_sizes(H, kh, sh, ph, OH, count_include_pad)
    cols = _window_sizes(W, kw, sw, pw, OW, count_include_pad)
    return np.outer(rows, cols).astype(dtype)


def avg_pool_forward(
    x: np.ndarray,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> np.ndarray:
    """Each window's sum (padding adds zeros) divided by _avg_pool_divisor."""
    P, H, W = x.shape
    OH, OW = pool_out_size(H, kh, sh, ph, ceil_mode), pool_out_size(W, kw, sw, pw, ceil_mode)
    divisor = _avg_pool_divisor(x.shape, kh, kw, sh, sw, ph, pw, OH, OW, count_include_pad, x.dtype)
    x = _pad_planes(x, kh, kw, sh, sw, ph, pw, OH, OW, 0)
    y = np.zeros((P, OH, OW), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            y += _windows(x, i, j, OH, OW, sh, sw)
    y /= divisor
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
    count_include_pad: bool = True,
) -> np.ndarray:
    """Every position of a window receives an equal share of its gradient,
    gy / divisor (the share of a padding position is dropped)."""
    OH, OW = gy.shape[1:]
    divisor = _avg_pool_divisor(
        x_shape, kh, kw, sh, sw, ph, pw, OH, OW, count_include_pad, gy.dtype
    )
    share = gy / divisor
    return _add_to_windows(lambda i, j: share, x_shape, kh, kw, sh, sw, ph, pw)


# --------------------------------------------------------------------------
# Softmax cross-entropy
# --------------------------------------------------------------------------


def cross_entropy_forward(
    logits: np.ndarray,
    labels: np.ndarray,
    weight: np.ndarray | None,
    ignore_index: int,
    label_smoothing: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row losses (N,), the softmax probs (N, K) and each row's weight in
    a mean (N,), PyTorch's formula:

        loss[n] = -(1 - e) * w[y] * log p[n, y] - (e / K) * sum_k w[k] * log p[n, k]
        row_weight[n] = w[y]

    with y = labels[n], e = label_smoothing, w the class weights (K,) (all
    ones when weight is None), and loss[n] = row_weight[n] = 0 where
    y == ignore_index. (The first term alone is the plain cross-entropy; the
    second spreads weight e over all K classes.) A 'mean' is
    sum(loss) / sum(row_weight).
    """
    # log softmax = z - log(sum(exp(z))) with z = logits - max: exp never
    # overflows and the largest term is exp(0) = 1, so the log is finite.
    N, K = logits.shape
    w = _class_weights(weight, K, logits.dtype)
    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    ignored = labels == ignore_index
    y = np.where(ignored, 0, labels)  # an index even where ignored: its row is zeroed below
    row_weight = w[y]
    losses = -(1 - label_smoothing) * row_weight * log_probs[np.arange(N), y]
    if label_smoothing:
        losses -= (label_smoothing / K) * (log_probs @ w)
    losses[ignored] = 0
    row_weight[ignored] = 0
    return losses, np.exp(log_probs), row_weight


def cross_entropy_backward(
    probs: np.ndarray,
    labels: np.ndarray,
    weight: np.ndarray | None,
    ignore_index: int,
    label_smoothing: float,
    grad_losses: np.ndarray,
) -> np.ndarray:
    """glogits (N, K) for grad_losses (N,), the gradient of each row's loss.

    Row n's loss is -sum_k q[k] * log p[k] for the target weights
    q = (1 - e) * w[y] * onehot(y) + (e / K) * w, so its gradient is
    sum(q) * p - q; an ignored row gets 0. weight (K,), or None: all ones.
    """
    N, K = probs.shape
    w = _class_weights(weight, K, probs.dtype)
    ignored = labels == ignore_index
    y = np.where(ignored, 0, labels)
    target = (1 - label_smoothing) * w[y]  # q[n, y]
    total = target + (label_smoothing / K) * w.sum()  # sum(q) of each row
    g = probs * total[:, None]
    g[np.arange(N), y] -= target
    if label_smoothing:
        g -= (label_smoothing / K) * w
    g *= np.where(ignored, 0, grad_losses)[:, None]
    return g


def _class_weights(weight: np.ndarray | None, K: int, dtype: np.dtype) -> np.ndarray:
    """The K class weights: ``weight``, or ones when it is None."""
    return np.ones(K, dtype) if weight is None else weight
