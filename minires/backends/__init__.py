"""Backends: the few steps that NumPy and CUDA do differently.

An op in ``minires.functional`` is written once, as array code that works on
NumPy and CuPy alike (``xp = get_array_module(x)``). The steps where a plain
array expression would be slow or unclear on one device go through a backend
module instead. Both backends implement the same functions, with the same
arguments, shapes and dtypes:

Layout. Convolution and BatchNorm work on *channel-major* arrays, stored
(C, N, H, W) in memory: building the im2col matrix from that layout copies long
contiguous rows, and the GEMM of a convolution then writes its output in the
same layout with no transpose (see docs/architecture.md). The public API is
NCHW: a Tensor holds an (N, C, H, W)-shaped view of that memory.

    im2col(x, kh, kw, sh, sw, ph, pw) -> col
        x: (C, N, H, W) C-contiguous.  col: (C*kh*kw, N*OH*OW), row index
        (c, i, j) = c*kh*kw + i*kw + j, column index (n, oh, ow).
    col2im(col, x_shape, kh, kw, sh, sw, ph, pw) -> x
        The adjoint of im2col: x_shape = (C, N, H, W); every entry of col is
        added back to the input pixel it was copied from (padding dropped).

    batch_norm_forward(x, gamma, beta, eps, running_mean, running_var, momentum)
        -> (y, xhat, inv_std)
        x: (C, M) C-contiguous, M = N*H*W; gamma, beta: (C,).  Batch statistics
        per channel; y = gamma * xhat + beta.  When running_mean is not None,
        running_mean and running_var (C,) are updated in place:
        r = (1 - momentum) * r + momentum * batch_stat, with the unbiased
        variance (M / (M - 1)) as PyTorch does.
    batch_norm_backward(gy, xhat, gamma, inv_std) -> (gx, ggamma, gbeta)
        gy, xhat: (C, M); returns gx (C, M), ggamma (C,), gbeta (C,).

    relu_forward(x) -> y                    any shape, C-contiguous
    relu_backward(gy, y) -> gx              gx = gy * (y > 0): gy where y > 0, else 0
                                            (a NaN or inf gy still gives NaN there)

    max_pool_forward(x, kh, kw, sh, sw, ph, pw) -> (y, argmax)
        x: (P, H, W) C-contiguous planes (P = N*C in either order);
        y: (P, OH, OW); argmax: int32 (P, OH, OW), the winning offset
        i*kw + j inside the window (first maximum wins; padding is -inf).
    max_pool_backward(gy, argmax, x_shape, kh, kw, sh, sw, ph, pw) -> gx
    avg_pool_forward(x, kh, kw, sh, sw, ph, pw) -> y
        padding counts in the divisor (PyTorch's count_include_pad=True).
    avg_pool_backward(gy, x_shape, kh, kw, sh, sw, ph, pw) -> gx

    cross_entropy_forward(logits, labels) -> (loss, probs)
        logits: (N, K) float; labels: (N,) int64/int32 in [0, K).
        loss: 0-d array, mean over N of -log softmax(logits)[n, labels[n]],
        computed with log-sum-exp; probs: (N, K) softmax.
    cross_entropy_backward(probs, labels, gloss) -> glogits
        glogits = (probs - onehot(labels)) * gloss / N.

All output sizes follow OH = (H + 2*ph - kh) // sh + 1.  Every function keeps
the dtype of its floating inputs (float32 stays float32).
"""

from __future__ import annotations

from types import ModuleType

from . import numpy_backend
from .device import get_array_module, is_cupy_array

_cuda_backend: ModuleType | None = None


def get_backend(x: object) -> ModuleType:
    """The backend module that handles arrays like ``x``."""
    data = getattr(x, "data", x)
    if is_cupy_array(data):
        return cuda()
    return numpy_backend


def cuda() -> ModuleType:
    """The CUDA backend, imported on first use (raises a clear error without a GPU)."""
    global _cuda_backend
    if _cuda_backend is None:
        from . import cuda_backend

        cuda_backend.require_gpu()
        _cuda_backend = cuda_backend
    return _cuda_backend
