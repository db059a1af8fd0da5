"""Backends: each device's way of doing the steps of the network ops.

An op in ``minires.functional`` is one short, device-agnostic Function; the
work whose best form depends on the device (a convolution, BatchNorm's
reductions, ReLU, pooling, the loss) goes to the backend that
``get_backend(x)`` picks for the array (the only place a path is chosen):

    numpy_backend   the reference: plain NumPy, im2col + one GEMM. The textbook.
    cpu_backend     the default for NumPy arrays: the same results, faster
                    (shifted-GEMM convolutions, every core; parallel.py,
                    shifted_conv.py). ``set_cpu_backend("reference")`` or
                    ``F.set_conv_algorithm("im2col")`` switches to the reference.
    cuda_backend    CuPy arrays: the reference's algorithms with CUDA C kernels
                    (kernels/*.cu) and cuBLAS.

device.py is the one helper for which device an array is on and for moving
it; layout.py holds the layout helpers all backends share. Every backend
implements the same functions, with the same arguments, shapes and dtypes:

Layout. Convolution and BatchNorm work on *channel-major* arrays, stored
(C, N, H, W) in memory (layout.py): building the im2col matrix from that
layout copies long contiguous rows, and the GEMM of a convolution then writes
its output in the same layout with no transpose (see docs/architecture.md).
The public API is NCHW: a Tensor holds an (N, C, H, W)-shaped view of that
memory. Every function keeps its input's layout.

    conv2d_forward(x, w, b, stride, padding) -> (y, saved)
        x (N, C, H, W), w (F, C, kh, kw), b (F,) or None, stride and padding
        pairs of ints; y (N, F, OH, OW). ``saved`` is what backward needs,
        whatever the backend chose to keep.
    conv2d_backward(gy, saved, needs_grad) -> (gx, gw, gb)
        The gradients of x, w, b, each None where needs_grad (a tuple of
        bools, one per input given to forward) says it is not wanted.

    batch_norm_forward(x, gamma, beta, eps, running_mean, running_var, momentum,
                       *, relu=False, count=None) -> (y, xhat, inv_std)
        x: (C, M) C-contiguous, M = N*H*W; gamma, beta: (C,).  Batch statistics
        per channel; y = gamma * xhat + beta, or relu_forward of it with
        relu=True (the ReLU fused in).  When running_mean is not None,
        running_mean and running_var (C,) are updated in place:
        r = (1 - momentum) * r + momentum * batch_stat, with the unbiased
        variance (M / (M - 1)) as PyTorch does.  count, an int64 0-d array
        (BatchNorm2d's num_batches_tracked), is incremented in place.
    batch_norm_backward(gy, xhat, gamma, inv_std, *, y=None) -> (gx, ggamma, gbeta)
        gy, xhat: (C, M); returns gx (C, M), ggamma (C,), gbeta (C,).  Given
        y, the output of a forward with relu=True, gy first goes through the
        fused ReLU: relu_backward(gy, y).

    relu_forward(x) -> y                    any shape; y in x's memory layout
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

    cross_entropy_forward(logits, labels, weight, ignore_index, label_smoothing)
            -> (losses, probs, row_weight)
        logits: (N, K) float; labels: (N,) int64 in [0, K) or ignore_index;
        weight: (K,) class weights, or None for all ones. losses: (N,), each
        row's loss, PyTorch's formula with the weights and label smoothing e,
        computed with log-sum-exp, 0 for an ignored row; probs: (N, K)
        softmax; row_weight: (N,), w[labels[n]], 0 for an ignored row, so
        that the 'mean' reduction is losses.sum() / row_weight.sum().
    cross_entropy_backward(probs, labels, weight, ignore_index, label_smoothing,
                           grad_losses) -> glogits
        grad_losses: (N,) or one value for every row. glogits: (N, K), each
        row (sum(q) * probs - q) * grad_losses[n] for its target weights
        q = (1 - e) * w[y] * onehot(y) + (e / K) * w; 0 for an ignored row.

All output sizes follow OH = (H + 2*ph - kh) // sh + 1.  Every function keeps
the dtype of its floating inputs (float32 stays float32).
"""

from __future__ import annotations

from types import ModuleType

from . import cpu_backend, numpy_backend
from .device import get_array_module, is_cupy_array

__all__ = ["get_backend", "set_cpu_backend", "get_array_module", "is_cupy_array"]

_CPU_BACKENDS = {"fast": cpu_backend, "reference": numpy_backend}
_cpu_backend: ModuleType = cpu_backend
_cuda_backend: ModuleType | None = None


def set_cpu_backend(name: str) -> str:
    """Choose the backend for NumPy arrays; returns the previous choice.

    "fast" (the default, cpu_backend.py): shifted-GEMM convolutions and every
    op on all cores. "reference" (numpy_backend.py): the textbook code, im2col
    and one GEMM, single-threaded, which the tests compare "fast" against.
    """
    global _cpu_backend
    if name not in _CPU_BACKENDS:
        raise ValueError(f"set_cpu_backend: expected one of {tuple(_CPU_BACKENDS)}, got {name!r}")
    previous = next(k for k, v in _CPU_BACKENDS.items() if v is _cpu_backend)
    _cpu_backend = _CPU_BACKENDS[name]
    return previous


def get_backend(x: object) -> ModuleType:
    """The backend for arrays like ``x``: the one place where a device's path is chosen."""
    return cuda() if is_cupy_array(getattr(x, "data", x)) else _cpu_backend


def cuda() -> ModuleType:
    """The CUDA backend, imported on first use (raises a clear error without a GPU)."""
    global _cuda_backend
    if _cuda_backend is None:
        from . import cuda_backend

        cuda_backend.require_gpu()
        _cuda_backend = cuda_backend
    return _cuda_backend
