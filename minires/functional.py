"""The network ops: convolution, BatchNorm, ReLU, pooling, linear, loss.

Spelled as in ``torch.nn.functional``. Each public function checks its
arguments (every message names the op, the argument, what was expected and
what was given) and calls one Function: a short, device-agnostic class whose
forward and backward hand the work to the backend for the array
(``get_backend(x)``, minires/backends/): plain NumPy, the fast CPU path, or
CUDA. The Functions are named ``...Function`` so that a traceback never
mistakes them for the layers of ``minires.nn``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .autograd import BroadcastTo, Function, IndexAdd, Tensor, as_tensor
from .backends import get_backend, set_cpu_backend
from .backends.device import get_array_module
from .backends.layout import from_channel_major, is_channel_major, to_channel_major

Array = Any

__all__ = [
    "adaptive_avg_pool2d",
    "avg_pool2d",
    "batch_norm",
    "conv2d",
    "cross_entropy",
    "flatten",
    "linear",
    "max_pool2d",
    "pair",
    "relu",
    "set_conv_algorithm",
]


# --------------------------------------------------------------------------
# Argument checks: every message names the op, the argument, what was
# expected and what was given.
# --------------------------------------------------------------------------


def pair(op: str, name: str, value: int | Sequence[int], minimum: int = 0) -> tuple[int, int]:
    """``value`` as (int, int): an int is used twice; a clear error names ``op`` and ``name``."""
    try:
        pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    except TypeError:  # not iterable, e.g. a float
        pair = ()
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) for v in pair):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_ndim(op: str, name: str, x: Tensor, ndim: int, layout: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D {layout}, got shape {tuple(x.shape)}")


def _check_float(op: str, name: str, x: Tensor) -> None:
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: {name} must be a floating tensor, got dtype {x.dtype}")


def _check_dtype(op: str, name: str, x: Tensor, ref: Tensor, ref_name: str = "input") -> None:
    if x.dtype != ref.dtype:
        raise TypeError(
            f"{op}: {name} has dtype {x.dtype} but {ref_name} has dtype {ref.dtype}; "
            f"they must match (convert with .to(np.{ref.dtype}))"
        )


def _check_vector(op: str, name: str, v: Any, length: int) -> None:
    if v is not None and tuple(v.shape) != (length,):
        raise ValueError(f"{op}: {name} must have shape ({length},), got {tuple(v.shape)}")


# --------------------------------------------------------------------------
# conv2d
# --------------------------------------------------------------------------


_CONV_ALGORITHMS = {"auto": "fast", "shifted": "fast", "im2col": "reference"}


_conv_algorithm = "auto"


def set_conv_algorithm(name: str) -> str:
    """Choose how conv2d computes on the CPU: "im2col", "shifted" or "auto"; returns the old one.

    "im2col" is the textbook method (one column matrix, one GEMM): the
    reference NumPy backend. "shifted" and "auto" (the default) select the
    fast CPU backend, which computes stride-1 convolutions as shifted GEMMs
    without materialising the column matrix, on every core; on a 2-core CPU a
    resnet20 training step is about 1.5x faster (docs/benchmarks.md). The two
    are tested against each other. On a GPU, convolutions always use im2col
    and cuBLAS. (The same switch as ``minires.backends.set_cpu_backend``.)
    """
    global _conv_algorithm
    if name not in _CONV_ALGORITHMS:
        raise ValueError(
            f"set_conv_algorithm: expected one of {tuple(_CONV_ALGORITHMS)}, got {name!r}"
        )
    set_cpu_backend(_CONV_ALGORITHMS[name])
    previous, _conv_algorithm = _conv_algorithm, name
    return previous


class Conv2dFunction(Function):
    """y = conv(x, w) + b. Shapes: x (N, C, H, W), w (F, C, kh, kw), b (F,), y (N, F, OH, OW).

    The backend does the work: im2col and one GEMM in the reference
    (numpy_backend.conv2d_forward), shifted GEMMs on the fast CPU path, CUDA
    kernels and cuBLAS on a GPU; backward gets back what forward saved.
    """

    saved_inputs = (0, 1)  # x and w; not the bias

    def __init__(self, stride: tuple[int, int], padding: tuple[int, int]):
        self.stride, self.padding = stride, padding

    def forward(self, x: Array, w: Array, b: Array | None = None) -> Array:
        self.backend = get_backend(x)
        y, self.saved = self.backend.conv2d_forward(x, w, b, self.stride, self.padding)
        return y

    def backward(self, gy: Array) -> tuple[Array | None, ...]:
        return self.backend.conv2d_backward(gy, self.saved, self.needs_input_grad)

    def differentiable_backward(self, gy: Tensor) -> tuple[Tensor | None, ...]:
        """The backward as im2col, two GEMMs and col2im on Tensors, each step a
        Function whose own backward is known, so create_graph can record it."""
        x, w = self.inputs[:2]
        N, C, H, W = x.shape
        F = w.shape[0]
        geometry = (*w.shape[2:], *self.stride, *self.padding)
        col = Im2colFunction(geometry)(x.permute(1, 0, 2, 3))  # (C*kh*kw, N*OH*OW)
        gy2 = gy.permute(1, 0, 2, 3).reshape(F, -1)  # (F, N*OH*OW)
        gw = (gy2 @ col.T).reshape(w.shape)
        gcol = w.reshape(F, -1).T @ gy2
        gx = Col2imFunction(geometry, (C, N, H, W))(gcol).permute(1, 0, 2, 3)
        return gx, gw, (gy.sum((0, 2, 3)) if len(self.inputs) > 2 else None)


class Im2colFunction(Function):
    """im2col as a Function: (C, N, H, W) -> (C*kh*kw, N*OH*OW); its adjoint is col2im."""

    saved_inputs = ()

    def __init__(self, geometry: tuple[int, ...]):
        self.geometry = geometry  # kh, kw, sh, sw, ph, pw

    def forward(self, x: Array) -> Array:
        self.backend, self.x_shape = get_backend(x), x.shape
        return self.backend.im2col(x, *self.geometry)

    def backward(self, gcol: Array) -> Array:
        return self.backend.col2im(gcol, self.x_shape, *self.geometry)

    def differentiable_backward(self, gcol: Tensor) -> Tensor:
        return Col2imFunction(self.geometry, self.x_shape)(gcol)


class Col2imFunction(Function):
    """col2im as a Function: (C*kh*kw, N*OH*OW) -> (C, N, H, W); its adjoint is im2col."""

    saved_inputs = ()

    def __init__(self, geometry: tuple[int, ...], x_shape: tuple[int, ...]):
        self.geometry, self.x_shape = geometry, x_shape

    def forward(self, col: Array) -> Array:
        self.backend = get_backend(col)
        return self.backend.col2im(col, self.x_shape, *self.geometry)

    def backward(self, gx: Array) -> Array:
        return self.backend.im2col(get_array_module(gx).ascontiguousarray(gx), *self.geometry)

    def differentiable_backward(self, gx: Tensor) -> Tensor:
        return Im2colFunction(self.geometry)(gx)


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
) -> Tensor:
    """2-D convolution (cross-correlation, as in PyTorch).

    Args:
        input: (N, C_in, H, W).
        weight: (C_out, C_in, kh, kw).
        bias: (C_out,) or None.
    Returns:
        (N, C_out, OH, OW) with OH = (H + 2*padding - kh) // stride + 1.
    """
    op = "conv2d"
    x, w = as_tensor(input), as_tensor(weight)
    _check_ndim(op, "input", x, 4, "(N, C, H, W)")
    _check_ndim(op, "weight", w, 4, "(C_out, C_in, kh, kw)")
    _check_float(op, "input", x)
    _check_dtype(op, "weight", w, x)
    stride_ = pair(op, "stride", stride, 1)
    padding_ = pair(op, "padding", padding, 0)
    if w.shape[1] != x.shape[1]:
        raise ValueError(
            f"conv2d: weight expects {w.shape[1]} input channels (weight shape "
            f"{tuple(w.shape)}), but input has {x.shape[1]} (input shape {tuple(x.shape)})"
        )
    kh, kw = w.shape[2:]
    H, W = x.shape[2:]
    if kh < 1 or kw < 1:
        raise ValueError(
            f"conv2d: weight's kernel size must be >= 1, got {kh}x{kw} "
            f"(weight shape {tuple(w.shape)})"
        )
    if kh > H + 2 * padding_[0] or kw > W + 2 * padding_[1]:
        raise ValueError(
            f"conv2d: kernel {kh}x{kw} is larger than the padded input "
            f"{H + 2 * padding_[0]}x{W + 2 * padding_[1]} (input {H}x{W}, padding {padding_})"
        )
    if bias is None:
        return Conv2dFunction(stride_, padding_)(x, w)
    b = as_tensor(bias)
    _check_dtype(op, "bias", b, x)
    _check_vector(op, "bias", b, w.shape[0])
    return Conv2dFunction(stride_, padding_)(x, w, b)


# --------------------------------------------------------------------------
# batch_norm
# --------------------------------------------------------------------------


class BatchNormFunction(Function):
    """Per-channel normalisation of x (N, C, ...) with affine gamma, beta (C,).

    Training: batch statistics, and the running statistics updated in place.
    Evaluation: the running statistics, so y is an affine map of x.
    """

    saved_inputs = (1,)  # gamma (x enters backward as xhat)

    def __init__(self, running_mean, running_var, training, momentum, eps, affine):
        self.running_mean, self.running_var = running_mean, running_var
        self.training, self.momentum, self.eps = training, momentum, eps
        self.affine = affine

    def forward(self, x: Array, gamma: Array, beta: Array) -> Array:
        xp = get_array_module(x)
        C = x.shape[1]
        xc = to_channel_major(x)
        x2 = xc.reshape(C, -1)
        if self.training and x2.shape[1] == 0:
            # An empty batch has no statistics to normalise with (their mean
            # would be NaN): as PyTorch, y is empty, gamma and beta get zero
            # gradients and the running statistics are left alone. Any finite
            # mean and variance give that, so take the evaluation path.
            self.training = False
            self.running_mean, self.running_var = xp.zeros(C, x.dtype), xp.ones(C, x.dtype)
        if self.training:
            self.backend = get_backend(x)
            y2, self.xhat, self.inv_std = self.backend.batch_norm_forward(
                x2, gamma, beta, self.eps, self.running_mean, self.running_var, self.momentum
            )
        else:
            self.inv_std = 1.0 / xp.sqrt(self.running_var + self.eps)
            scale = gamma * self.inv_std
            y2 = x2 * scale[:, None]
            y2 += (beta - self.running_mean * scale)[:, None]
            # xhat is needed only for the gradient of gamma.
            self.xhat, self.shift = None, self.running_mean.copy()
            if self.affine and self.needs_input_grad[1]:
                self.xhat = (x2 - self.running_mean[:, None]) * self.inv_std[:, None]
        self.gamma = gamma
        self.running_mean = self.running_var = None  # not needed by backward
        return from_channel_major(y2.reshape(xc.shape))

    def backward(self, gy: Array) -> tuple[Array | None, Array | None, Array | None]:
        C = gy.shape[1]
        gyc = to_channel_major(gy)
        gy2 = gyc.reshape(C, -1)
        if self.training:
            gx2, ggamma, gbeta = self.backend.batch_norm_backward(
                gy2, self.xhat, self.gamma, self.inv_std
            )
        else:
            gx2 = gy2 * (self.gamma * self.inv_std)[:, None]
            gbeta = gy2.sum(axis=1)
            ggamma = None if self.xhat is None else (gy2 * self.xhat).sum(axis=1)
        gx = from_channel_major(gx2.reshape(gyc.shape))
        if not self.affine:
            return gx, None, None
        return gx, ggamma, gbeta

    def differentiable_backward(self, gy: Tensor) -> tuple[Tensor | None, ...]:
        """The same gradients with Tensor operations on x and gamma; in training
        the statistics are recomputed from x, since they depend on it too."""
        x, gamma = self.inputs[:2]
        dims = (0, *range(2, x.ndim))  # every axis but the channels
        shape = (1, -1) + (1,) * (x.ndim - 2)
        if self.training:
            xc = x - x.mean(dims, keepdim=True)
            inv_std = ((xc * xc).mean(dims, keepdim=True) + self.eps) ** -0.5
        else:  # the running statistics are constants
            inv_std = x.new_tensor(self.inv_std.reshape(shape))
            xc = x - x.new_tensor(self.shift.reshape(shape))
        xhat = xc * inv_std
        gbeta, ggamma = gy.sum(dims), (gy * xhat).sum(dims)
        gx = gy * gamma.reshape(shape) * inv_std
        if self.training:  # the gradient through the batch mean and variance
            M = x.numel() // x.shape[1]
            through_stats = gbeta.reshape(shape) + xhat * ggamma.reshape(shape)
            gx = gx - gamma.reshape(shape) * inv_std * through_stats / M
        return (gx, ggamma, gbeta) if self.affine else (gx, None, None)


def batch_norm(
    input: Tensor,
    running_mean: Array | None,
    running_var: Array | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalisation over the channel axis of (N, C), (N, C, L) or (N, C, H, W).

    running_mean / running_var are plain arrays (C,), updated in place when
    training (unbiased variance, as PyTorch). In evaluation they are used in
    place of the batch statistics, and must be given.
    """
    op = "batch_norm"
    x = as_tensor(input)
    if not 2 <= x.ndim <= 4:
        raise ValueError(f"{op}: input must be 2-D to 4-D (N, C, ...), got shape {x.shape}")
    _check_float(op, "input", x)
    C = x.shape[1]
    xp = get_array_module(x.data)
    for name, buf in (("running_mean", running_mean), ("running_var", running_var)):
        if buf is not None:
            if isinstance(buf, Tensor):
                raise TypeError(f"{op}: {name} must be a plain array (a buffer), not a Tensor")
            _check_vector(op, name, buf, C)
            if buf.dtype != x.dtype:
                raise TypeError(f"{op}: {name} has dtype {buf.dtype}, input has {x.dtype}")
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: give both running_mean and running_var, or neither")
    if not training and running_mean is None:
        raise ValueError(f"{op}: evaluation mode needs running_mean and running_var")
    if training and x.shape[0] * math.prod(x.shape[2:]) == 1:  # 0 values: see BatchNormFunction
        raise ValueError(
            f"{op}: expected more than 1 value per channel when training, got input shape "
            f"{tuple(x.shape)}"
        )
    affine = weight is not None or bias is not None
    gamma = as_tensor(weight) if weight is not None else Tensor(xp.ones(C, dtype=x.dtype))
    beta = as_tensor(bias) if bias is not None else Tensor(xp.zeros(C, dtype=x.dtype))
    for name, v in (("weight", gamma), ("bias", beta)):
        _check_vector(op, name, v, C)
        _check_dtype(op, name, v, x)
    fn = BatchNormFunction(running_mean, running_var, training, float(momentum), float(eps), affine)
    return fn(x, gamma, beta)


# --------------------------------------------------------------------------
# relu
# --------------------------------------------------------------------------


class ReLUFunction(Function):
    """y = max(x, 0); the gradient passes where y > 0 (and is 0 at the kink)."""

    saved_inputs, saved_outputs = (), (0,)  # backward reads the output y, not x

    def forward(self, x: Array) -> Array:
        self.backend = get_backend(x)
        self.y = self.backend.relu_forward(x)
        return self.y

    def backward(self, gy: Array) -> Array:
        return self.backend.relu_backward(gy, self.y)

    def differentiable_backward(self, gy: Tensor) -> Tensor:
        return gy * gy.new_tensor((self.y > 0).astype(self.y.dtype))


def relu(input: Tensor) -> Tensor:
    """max(input, 0) elementwise, in the input's memory layout."""
    return ReLUFunction()(input)


def flatten(input: Tensor, start_dim: int = 0) -> Tensor:
    """Merge dimensions start_dim.. into one, as torch.flatten."""
    return as_tensor(input).flatten(start_dim)


# --------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------


def _to_planes(x: Array) -> tuple[Array, bool]:
    """(N, C, H, W) -> contiguous (P, H, W) planes, keeping the memory order."""
    channel_major = is_channel_major(x)
    a = to_channel_major(x) if channel_major else get_array_module(x).ascontiguousarray(x)
    return a.reshape(-1, *x.shape[2:]), channel_major


def _from_planes(p: Array, n: int, c: int, channel_major: bool) -> Array:
    if channel_major:
        return from_channel_major(p.reshape(c, n, *p.shape[1:]))
    return p.reshape(n, c, *p.shape[1:])


class _Pool2dFunction(Function):
    """Pooling over each (H, W) plane; subclasses call their backend functions.

    The planes are handed to the backend as one contiguous (P, H, W) array,
    P = N*C, in whichever order (channel-major or NCHW) x is stored, so no
    layout conversion is made; the output is returned in the same order.
    """

    saved_inputs = ()  # max pooling keeps the argmax, not x

    def __init__(self, kernel, stride, padding):
        self.args = (*kernel, *stride, *padding)

    def forward(self, x: Array) -> Array:
        N, C = x.shape[:2]
        planes, self.channel_major = _to_planes(x)
        self.backend = get_backend(x)
        self.plane_shape = planes.shape
        return _from_planes(self.pool(planes), N, C, self.channel_major)

    def backward(self, gy: Array) -> Array:
        N, C = gy.shape[:2]
        if self.channel_major:
            g = to_channel_major(gy)
        else:
            g = get_array_module(gy).ascontiguousarray(gy)
        gx = self.unpool(g.reshape(-1, *gy.shape[2:]))
        return _from_planes(gx, N, C, self.channel_major)


class MaxPool2dFunction(_Pool2dFunction):
    def pool(self, planes: Array) -> Array:
        y, self.argmax = self.backend.max_pool_forward(planes, *self.args)
        return y

    def unpool(self, g: Array) -> Array:
        return self.backend.max_pool_backward(g, self.argmax, self.plane_shape, *self.args)

    def differentiable_backward(self, gy: Tensor) -> Tensor:
        """Each window's gradient added at its winner: IndexAdd at the winners'
        (n, c, row, column), whose own backward picks them out again."""
        xp = get_array_module(self.argmax)
        kh, kw, sh, sw, ph, pw = self.args
        N, C = gy.shape[:2]
        planes = (
            self.argmax.reshape(C, N, *self.argmax.shape[1:]).swapaxes(0, 1)
            if self.channel_major
            else self.argmax.reshape(N, C, *self.argmax.shape[1:])
        )  # noqa: E501
        n, c, oh, ow = xp.indices(planes.shape, sparse=True)
        rows, cols = oh * sh + planes // kw - ph, ow * sw + planes % kw - pw
        return IndexAdd(self.inputs[0].shape, (n, c, rows, cols))(gy)


class AvgPool2dFunction(_Pool2dFunction):
    def pool(self, planes: Array) -> Array:
        return self.backend.avg_pool_forward(planes, *self.args)

    def unpool(self, g: Array) -> Array:
        return self.backend.avg_pool_backward(g, self.plane_shape, *self.args)


def _pool_args(op: str, x: Tensor, kernel_size, stride, padding):
    _check_ndim(op, "input", x, 4, "(N, C, H, W)")
    _check_float(op, "input", x)
    k = pair(op, "kernel_size", kernel_size, 1)
    s = pair(op, "stride", k if stride is None else stride, 1)
    p = pair(op, "padding", padding, 0)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(
            f"{op}: padding should be at most half the kernel size, got padding {p} "
            f"for kernel_size {k}"
        )
    H, W = x.shape[2:]
    if k[0] > H + 2 * p[0] or k[1] > W + 2 * p[1]:
        raise ValueError(
            f"{op}: kernel {k[0]}x{k[1]} is larger than the padded input "
            f"{H + 2 * p[0]}x{W + 2 * p[1]}"
        )
    return k, s, p


def max_pool2d(
    input: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
) -> Tensor:
    """Max over each window of (N, C, H, W); stride defaults to kernel_size.

    The gradient goes to the first maximum of each window (ties are rare in
    real data; tests keep inputs away from them).
    """
    x = as_tensor(input)
    return MaxPool2dFunction(*_pool_args("max_pool2d", x, kernel_size, stride, padding))(x)


def avg_pool2d(
    input: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
) -> Tensor:
    """Mean over each window of (N, C, H, W); zero padding counts in the divisor."""
    x = as_tensor(input)
    return AvgPool2dFunction(*_pool_args("avg_pool2d", x, kernel_size, stride, padding))(x)


class GlobalAvgPoolFunction(Function):
    """(N, C, H, W) -> (N, C, 1, 1), the mean over each plane."""

    saved_inputs = ()

    def forward(self, x: Array) -> Array:
        self.shape = x.shape
        return x.mean(axis=(2, 3), keepdims=True)

    def backward(self, gy: Array) -> Array:
        H, W = self.shape[2:]
        xp = get_array_module(gy)
        return xp.broadcast_to(gy / (H * W), self.shape).copy()

    def differentiable_backward(self, gy: Tensor) -> Tensor:
        return BroadcastTo(self.shape)(gy / (self.shape[2] * self.shape[3]))


def adaptive_avg_pool2d(input: Tensor, output_size: int | Sequence[int]) -> Tensor:
    """Average-pool (N, C, H, W) down to (N, C, oh, ow).

    output_size 1 is the global average pool of a ResNet head. Other sizes
    must divide H and W, where the windows are then equal and disjoint.
    """
    op = "adaptive_avg_pool2d"
    x = as_tensor(input)
    _check_ndim(op, "input", x, 4, "(N, C, H, W)")
    _check_float(op, "input", x)
    oh, ow = pair(op, "output_size", output_size, 1)
    H, W = x.shape[2:]
    if (oh, ow) == (1, 1):
        return GlobalAvgPoolFunction()(x)
    if H % oh or W % ow:
        raise ValueError(
            f"{op}: output_size {(oh, ow)} must divide the input size {(H, W)} "
            f"(uneven adaptive windows are not implemented)"
        )
    k = (H // oh, W // ow)
    return AvgPool2dFunction(k, k, (0, 0))(x)


# --------------------------------------------------------------------------
# linear
# --------------------------------------------------------------------------


class LinearFunction(Function):
    """y = x @ w.T + b.  x (N, in), w (out, in), b (out,), y (N, out)."""

    saved_inputs = (0, 1)

    def forward(self, x: Array, w: Array, b: Array | None = None) -> Array:
        self.x, self.w = x, w
        y = x @ w.T
        if b is not None:
            y += b
        return y

    def backward(self, gy: Array) -> tuple[Array | None, ...]:
        gx = gy @ self.w if self.needs_input_grad[0] else None
        gw = gy.T @ self.x if self.needs_input_grad[1] else None
        gb = None
        if len(self.needs_input_grad) == 3 and self.needs_input_grad[2]:
            gb = gy.sum(axis=0)
        return gx, gw, gb

    def differentiable_backward(self, gy: Tensor) -> tuple[Tensor | None, ...]:
        x, w = self.inputs[:2]
        return gy @ w, gy.T @ x, (gy.sum(0) if len(self.inputs) == 3 else None)


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Fully connected layer: (N, in) -> (N, out) with weight (out, in)."""
    op = "linear"
    x, w = as_tensor(input), as_tensor(weight)
    _check_ndim(op, "input", x, 2, "(N, in_features)")
    _check_ndim(op, "weight", w, 2, "(out_features, in_features)")
    _check_float(op, "input", x)
    _check_dtype(op, "weight", w, x)
    if w.shape[1] != x.shape[1]:
        raise ValueError(
            f"linear: weight expects {w.shape[1]} input features (weight shape "
            f"{tuple(w.shape)}), but input has {x.shape[1]} (input shape {tuple(x.shape)})"
        )
    if bias is None:
        return LinearFunction()(x, w)
    b = as_tensor(bias)
    _check_dtype(op, "bias", b, x)
    _check_vector(op, "bias", b, w.shape[0])
    return LinearFunction()(x, w, b)


# --------------------------------------------------------------------------
# cross_entropy
# --------------------------------------------------------------------------


class CrossEntropyFunction(Function):
    """The mean over the batch of -log softmax(logits)[n, labels[n]]."""

    saved_inputs = ()  # backward reads the softmax it computed

    def __init__(self, labels: Array):
        self.labels = labels

    def forward(self, logits: Array) -> Array:
        self.backend, self.shape = get_backend(logits), logits.shape
        if logits.shape[0] == 0:  # the mean of no values is NaN, as in PyTorch
            return get_array_module(logits).full((), np.nan, dtype=logits.dtype)
        loss, self.probs = self.backend.cross_entropy_forward(logits, self.labels)
        return loss

    def backward(self, gloss: Array) -> Array:
        if self.shape[0] == 0:
            return get_array_module(gloss).zeros(self.shape, dtype=gloss.dtype)
        return self.backend.cross_entropy_backward(self.probs, self.labels, gloss)

    def differentiable_backward(self, gloss: Tensor) -> Tensor:
        """(softmax(logits) - onehot(labels)) * gloss / N, the softmax recomputed
        from the logits Tensor (its shift by the row maximum is a constant)."""
        logits = self.inputs[0]
        xp = get_array_module(logits.data)
        e = (logits - logits.new_tensor(logits.data.max(axis=1, keepdims=True))).exp()
        onehot = xp.zeros(logits.shape, dtype=logits.dtype)
        onehot[xp.arange(logits.shape[0]), self.labels] = 1
        return (e / e.sum(1, keepdim=True) - logits.new_tensor(onehot)) * (
            gloss / max(logits.shape[0], 1)
        )  # noqa: E501


def cross_entropy(input: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy of logits (N, K) against integer labels (N,).

    Computed with log-sum-exp, so logits of +-1e4 give a finite loss.
    reduction: "mean" (default) or "sum" over the batch.
    """
    op = "cross_entropy"
    logits = as_tensor(input)
    _check_ndim(op, "input", logits, 2, "(N, num_classes)")
    _check_float(op, "input", logits)
    xp = get_array_module(logits.data)
    labels = target.data if isinstance(target, Tensor) else target
    labels = xp.asarray(labels)
    N, K = logits.shape
    if labels.ndim != 1 or labels.shape[0] != N:
        raise ValueError(
            f"{op}: target must be a 1-D array of {N} labels (one per row of input), "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{op}: target must hold integer class labels, got dtype {labels.dtype}")
    if N and (int(labels.min()) < 0 or int(labels.max()) >= K):
        raise ValueError(
            f"{op}: target labels must be in [0, {K}), got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    if reduction not in ("mean", "sum"):
        raise ValueError(f"{op}: reduction must be 'mean' or 'sum', got {reduction!r}")
    if reduction == "sum" and N == 0:  # the sum of no values is 0 (N * NaN is not)
        return logits.sum()
    loss = CrossEntropyFunction(labels.astype(xp.int64, copy=False))(logits)
    return loss * N if reduction == "sum" else loss
