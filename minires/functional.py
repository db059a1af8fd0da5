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

from . import label_check
from .autograd import BroadcastTo, Function, IndexAdd, Tensor, as_tensor
from .backends import get_backend, set_cpu_backend
from .backends.device import get_array_module, is_cupy_array
from .backends.layout import from_channel_major, is_channel_major, pool_out_size, to_channel_major
from .label_check import check_labels

Array = Any

__all__ = [
    "adaptive_avg_pool2d",
    "avg_pool2d",
    "batch_norm",
    "batch_norm_relu",
    "check_labels",
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
    """y = conv(x, w) + b. Shapes: x (N, C, H, W), w (F, C/groups, kh, kw), b (F,),
    y (N, F, OH, OW).

    The backend does the work: im2col and one (batched) GEMM in the reference
    (numpy_backend.conv2d_forward), shifted GEMMs on the fast CPU path, CUDA
    kernels and cuBLAS on a GPU; backward gets back what forward saved.
    """

    saved_inputs = (0, 1)  # x and w; not the bias

    def __init__(
        self,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int] = (1, 1),
        groups: int = 1,
    ):
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def forward(self, x: Array, w: Array, b: Array | None = None) -> Array:
        self.backend = get_backend(x)
        y, self.saved = self.backend.conv2d_forward(
            x, w, b, self.stride, self.padding, self.dilation, self.groups
        )
        return y

    def backward(self, gy: Array) -> tuple[Array | None, ...]:
        return self.backend.conv2d_backward(gy, self.saved, self.needs_input_grad)

    def differentiable_backward(self, gy: Tensor) -> tuple[Tensor | None, ...]:
        """The backward as im2col, two (batched) GEMMs and col2im on Tensors, each
        step a Function whose own backward is known, so create_graph can record it.
        The G groups are the batch of the GEMMs, as in numpy_backend.conv2d_backward."""
        x, w = self.inputs[:2]
        N, C, H, W = x.shape
        F, Cg, kh, kw = w.shape
        G = self.groups
        geometry = (kh, kw, *self.stride, *self.padding, *self.dilation)
        col = Im2colFunction(geometry)(x.permute(1, 0, 2, 3))  # (C*kh*kw, N*OH*OW)
        col = col.reshape(G, Cg * kh * kw, -1)
        gy3 = gy.permute(1, 0, 2, 3).reshape(G, F // G, -1)  # (G, F/G, N*OH*OW)
        gw = (gy3 @ col.transpose(1, 2)).reshape(w.shape)
        gcol = w.reshape(G, F // G, Cg * kh * kw).transpose(1, 2) @ gy3
        gx = Col2imFunction(geometry, (C, N, H, W))(gcol.reshape(C * kh * kw, -1))
        return gx.permute(1, 0, 2, 3), gw, (gy.sum((0, 2, 3)) if len(self.inputs) > 2 else None)


class Im2colFunction(Function):
    """im2col as a Function: (C, N, H, W) -> (C*kh*kw, N*OH*OW); its adjoint is col2im."""

    saved_inputs = ()

    def __init__(self, geometry: tuple[int, ...]):
        self.geometry = geometry  # kh, kw, sh, sw, ph, pw, dh, dw

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


class PadFunction(Function):
    """x (N, C, H, W) with zeros added below and to the right: (N, C, H + bottom, W + right).

    What conv2d's padding='same' needs when a kernel's span is even: PyTorch
    puts the odd pixel of padding on the bottom and right, where the
    backends' padding is the same on both sides. Backward crops gy.
    """

    saved_inputs = ()

    def __init__(self, bottom: int, right: int):
        self.bottom, self.right = bottom, right

    def forward(self, x: Array) -> Array:
        xp = get_array_module(x)
        self.H, self.W = x.shape[2:]
        return xp.pad(x, ((0, 0), (0, 0), (0, self.bottom), (0, self.right)))

    def backward(self, gy: Array) -> Array:
        return get_array_module(gy).ascontiguousarray(gy[:, :, : self.H, : self.W])

    def differentiable_backward(self, gy: Tensor) -> Tensor:
        return gy[:, :, : self.H, : self.W]


def _conv_padding(
    padding: str | int | Sequence[int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[tuple[int, int], tuple[int, int]]:
    """conv2d's padding as (padding on both sides, extra on the bottom/right).

    An int or a pair pads both sides alike. 'valid' is no padding. 'same'
    (stride 1 only) keeps the output the size of the input: a kernel spanning
    s = d*(k-1) + 1 pixels needs s - 1 pixels of padding in all, half on
    each side, the odd one (an even span) on the bottom or right, as PyTorch.
    """
    op = "conv2d"
    if not isinstance(padding, str):
        return pair(op, "padding", padding, 0), (0, 0)
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding != "same":
        raise ValueError(
            f"{op}: padding must be 'same', 'valid', an int or a pair of ints, got {padding!r}"
        )
    if stride != (1, 1):
        raise ValueError(
            f"{op}: padding='same' is not supported for strided convolutions, got stride "
            f"{stride} (PyTorch's rule: with stride > 1, 'same' has no single meaning)"
        )
    total = [d * (k - 1) for k, d in zip(kernel, dilation)]
    both = (total[0] // 2, total[1] // 2)
    return both, (total[0] - 2 * both[0], total[1] - 2 * both[1])


def _check_groups(op: str, groups: Any, x: Tensor, w: Tensor) -> int:
    """groups as an int that divides both channel counts, matching the weight's shape."""
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool):
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"{op}: groups must be >= 1, got {groups}")
    C, F = x.shape[1], w.shape[0]
    if F % groups:
        raise ValueError(
            f"{op}: groups={groups} must divide the output channels, but weight has {F} "
            f"(weight shape {tuple(w.shape)})"
        )
    if C % groups:
        raise ValueError(
            f"{op}: groups={groups} must divide the input channels, but input has {C} "
            f"(input shape {tuple(x.shape)})"
        )
    if w.shape[1] * groups != C:
        per_group = f" ({w.shape[1]} per group x groups={groups})" if groups > 1 else ""
        raise ValueError(
            f"{op}: weight expects {w.shape[1] * groups} input channels{per_group} (weight "
            f"shape {tuple(w.shape)}), but input has {C} (input shape {tuple(x.shape)})"
        )
    return int(groups)


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: str | int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> Tensor:
    """2-D convolution (cross-correlation), as torch.nn.functional.conv2d.

    Args:
        input: (N, C_in, H, W).
        weight: (C_out, C_in / groups, kh, kw).
        bias: (C_out,) or None.
        stride, dilation: an int or a pair (rows, columns). Dilation d spaces
            the kernel's taps d pixels apart.
        padding: an int or a pair (zeros on both sides), 'valid' (none) or
            'same' (the output as large as the input; stride 1 only).
        groups: the channels split into this many independent convolutions
            (C_in / groups inputs each); groups = C_in is a depthwise conv.
    Returns:
        (N, C_out, OH, OW) with OH = (H + 2*padding - dilation*(kh - 1) - 1) // stride + 1.
    """
    op = "conv2d"
    x, w = as_tensor(input), as_tensor(weight)
    _check_ndim(op, "input", x, 4, "(N, C, H, W)")
    _check_ndim(op, "weight", w, 4, "(C_out, C_in / groups, kh, kw)")
    _check_float(op, "input", x)
    _check_dtype(op, "weight", w, x)
    stride_ = pair(op, "stride", stride, 1)
    dilation_ = pair(op, "dilation", dilation, 1)
    groups_ = _check_groups(op, groups, x, w)
    kh, kw = w.shape[2:]
    if kh < 1 or kw < 1:
        raise ValueError(
            f"conv2d: weight's kernel size must be >= 1, got {kh}x{kw} "
            f"(weight shape {tuple(w.shape)})"
        )
    padding_, extra = _conv_padding(padding, (kh, kw), stride_, dilation_)
    if extra != (0, 0):
        x = PadFunction(*extra)(x)
    H, W = x.shape[2:]
    span_h, span_w = dilation_[0] * (kh - 1) + 1, dilation_[1] * (kw - 1) + 1
    if span_h > H + 2 * padding_[0] or span_w > W + 2 * padding_[1]:
        spans = (
            "" if dilation_ == (1, 1) else f" with dilation {dilation_} spans {span_h}x{span_w} and"
        )
        raise ValueError(
            f"conv2d: kernel {kh}x{kw}{spans} is larger than the padded input "
            f"{H + 2 * padding_[0]}x{W + 2 * padding_[1]} (input {H}x{W}, padding {padding_})"
        )
    fn = Conv2dFunction(stride_, padding_, dilation_, groups_)
    if bias is None:
        return fn(x, w)
    b = as_tensor(bias)
    _check_dtype(op, "bias", b, x)
    _check_vector(op, "bias", b, w.shape[0])
    return fn(x, w, b)


# --------------------------------------------------------------------------
# batch_norm
# --------------------------------------------------------------------------


class BatchNormFunction(Function):
    """Per-channel normalisation of x (N, C, ...) with affine gamma, beta (C,).

    Training: batch statistics, and the running statistics updated in place.
    Evaluation: the running statistics, so y is an affine map of x.
    With relu=True the output is relu(y), the ReLU fused in (F.batch_norm_relu):
    on a GPU the normalisation writes relu(y) directly and backward takes the
    gradient through both in the same passes.
    """

    saved_inputs = (1,)  # gamma (x enters backward as xhat)

    def __init__(
        self, running_mean, running_var, training, momentum, eps, affine, relu=False, count=None
    ):
        self.running_mean, self.running_var = running_mean, running_var
        self.training, self.momentum, self.eps = training, momentum, eps
        self.affine, self.relu = affine, relu
        self.count = count  # num_batches_tracked (or None), incremented in training
        if relu:  # backward reads the output, as ReLUFunction's does
            self.saved_outputs = (0,)

    @property
    def graph_label(self) -> str:
        """What mr.viz writes on this node: the fused ReLU is named."""
        return "BatchNormFunction + ReLU" if self.relu else "BatchNormFunction"

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
            # The optional arguments only when used: the plain call stays the
            # contract's seven arguments.
            fused = {"relu": True} if self.relu else {}
            counted = {} if self.count is None else {"count": self.count}
            y2, self.xhat, self.inv_std = self.backend.batch_norm_forward(
                x2,
                gamma,
                beta,
                self.eps,
                self.running_mean,
                self.running_var,
                self.momentum,
                **fused,
                **counted,
            )
        else:
            if self.count is not None:  # an empty batch still counts, as in PyTorch
                self.count += 1
            self.inv_std = 1.0 / xp.sqrt(self.running_var + self.eps)
            scale = gamma * self.inv_std
            y2 = x2 * scale[:, None]
            y2 += (beta - self.running_mean * scale)[:, None]
            # xhat is needed only for the gradient of gamma.
            self.xhat, self.shift = None, self.running_mean.copy()
            if self.affine and self.needs_input_grad[1]:
                self.xhat = (x2 - self.running_mean[:, None]) * self.inv_std[:, None]
            if self.relu:
                y2 = xp.maximum(y2, 0)  # relu_forward's values
        self.gamma = gamma
        self.y2 = y2 if self.relu else None  # backward's ReLU mask
        self.running_mean = self.running_var = None  # not needed by backward
        return from_channel_major(y2.reshape(xc.shape))

    def backward(self, gy: Array) -> tuple[Array | None, Array | None, Array | None]:
        C = gy.shape[1]
        gyc = to_channel_major(gy)
        gy2 = gyc.reshape(C, -1)
        if self.training:
            fused = {"y": self.y2} if self.relu else {}
            gx2, ggamma, gbeta = self.backend.batch_norm_backward(
                gy2, self.xhat, self.gamma, self.inv_std, **fused
            )
        else:
            if self.relu:
                gy2 = gy2 * (self.y2 > 0)  # relu_backward
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
        if self.relu:  # through the fused ReLU first: its mask is a constant
            y = self.y2.reshape(x.shape[1], x.shape[0], *x.shape[2:]).swapaxes(0, 1)
            gy = gy * gy.new_tensor((y > 0).astype(y.dtype))
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


def batch_norm_relu(
    input: Tensor,
    running_mean: Array | None,
    running_var: Array | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    num_batches_tracked: Array | None = None,
) -> Tensor:
    """relu(batch_norm(...)) with the same arguments, as one fused op.

    The same numbers as the two ops in a row, forward and backward. On a GPU
    it is two launches and one pass over memory fewer each way (the ReLU is
    applied as BatchNorm writes its output, and its mask as BatchNorm's
    backward reads the gradient), and the pre-ReLU activation is never
    stored. The residual blocks use it wherever BN is followed by a ReLU.
    """
    args = (input, running_mean, running_var, weight, bias, training, momentum, eps)
    return _batch_norm("batch_norm_relu", True, *args, num_batches_tracked)


def batch_norm(
    input: Tensor,
    running_mean: Array | None,
    running_var: Array | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    num_batches_tracked: Array | None = None,
) -> Tensor:
    """Batch normalisation over the channel axis of (N, C), (N, C, L) or (N, C, H, W).

    running_mean / running_var are plain arrays (C,), updated in place when
    training (unbiased variance, as PyTorch). In evaluation they are used in
    place of the batch statistics, and must be given. num_batches_tracked
    (not in PyTorch's F.batch_norm: BatchNorm2d's counter, an int64 0-d
    buffer) is incremented by one in place when training, on a GPU by the
    kernel that updates the running statistics rather than a launch of its own.
    """
    args = (input, running_mean, running_var, weight, bias, training, momentum, eps)
    return _batch_norm("batch_norm", False, *args, num_batches_tracked)


def _batch_norm(
    op: str,
    relu: bool,
    input: Tensor,
    running_mean: Array | None,
    running_var: Array | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    num_batches_tracked: Array | None,
) -> Tensor:
    """batch_norm's checks, then one BatchNormFunction (relu: the ReLU fused in)."""
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
    count = num_batches_tracked
    if count is not None and (
        isinstance(count, Tensor)
        or getattr(count, "shape", None) != ()
        or getattr(count, "dtype", None) != np.int64
        or get_array_module(count) is not xp
    ):
        raise TypeError(
            f"{op}: num_batches_tracked must be an int64 0-d array on the input's device, "
            f"got {type(count).__name__} {getattr(count, 'dtype', '')} "
            f"{getattr(count, 'shape', '')}"
        )
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
    fn = BatchNormFunction(
        running_mean,
        running_var,
        training,
        float(momentum),
        float(eps),
        affine,
        relu,
        count if training else None,
    )
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


def flatten(input: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Merge dimensions start_dim..end_dim into one, as torch.flatten."""
    return as_tensor(input).flatten(start_dim, end_dim)


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

    def __init__(self, kernel, stride, padding, ceil_mode=False, count_include_pad=True):
        self.args = (*kernel, *stride, *padding)
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

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
        y, self.argmax = self.backend.max_pool_forward(planes, *self.args, self.ceil_mode)
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
        return self.backend.avg_pool_forward(
            planes, *self.args, self.ceil_mode, self.count_include_pad
        )

    def unpool(self, g: Array) -> Array:
        return self.backend.avg_pool_backward(
            g, self.plane_shape, *self.args, self.count_include_pad
        )


def _pool_args(op: str, x: Tensor, kernel_size, stride, padding, ceil_mode):
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
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"{op}: ceil_mode must be a bool, got {ceil_mode!r}")
    H, W = x.shape[2:]
    OH = pool_out_size(H, k[0], s[0], p[0], bool(ceil_mode))
    OW = pool_out_size(W, k[1], s[1], p[1], bool(ceil_mode))
    if OH < 1 or OW < 1:
        # Without ceil_mode that is a kernel larger than the padded input; with
        # it, one larger by the stride or more (no window starts inside).
        raise ValueError(
            f"{op}: kernel {k[0]}x{k[1]} is larger than the padded input "
            f"{H + 2 * p[0]}x{W + 2 * p[1]}"
            + (f" by the stride {s} or more, even with ceil_mode" if ceil_mode else "")
        )
    return k, s, p, bool(ceil_mode)


def max_pool2d(
    input: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    *,
    ceil_mode: bool = False,
) -> Tensor:
    """Max over each window of (N, C, H, W); stride defaults to kernel_size.

    ceil_mode=True rounds the output size up, as PyTorch: a last window that
    runs past the padding is kept when it starts inside the input or the
    left padding (the part past the padding never wins). It is keyword-only:
    torch's next positional argument is dilation, which minires's max
    pooling does not have, so a positional call could not mean the same in
    both. The gradient goes to the first maximum of each window (ties are
    rare in real data; tests keep inputs away from them).
    """
    x = as_tensor(input)
    args = _pool_args("max_pool2d", x, kernel_size, stride, padding, ceil_mode)
    return MaxPool2dFunction(*args)(x)


def avg_pool2d(
    input: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> Tensor:
    """Mean over each window of (N, C, H, W); stride defaults to kernel_size.

    The divisor is PyTorch's: the window's positions inside the padded input
    (zero padding counts, count_include_pad=True), or only those inside the
    input (count_include_pad=False). ceil_mode as in max_pool2d; the part of
    a window past the padding never counts.
    """
    op = "avg_pool2d"
    x = as_tensor(input)
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise TypeError(f"{op}: count_include_pad must be a bool, got {count_include_pad!r}")
    args = _pool_args(op, x, kernel_size, stride, padding, ceil_mode)
    return AvgPool2dFunction(*args, bool(count_include_pad))(x)


class GlobalAvgPoolFunction(Function):
    """(N, C, H, W) -> (N, C, 1, 1), the mean over each plane."""

    saved_inputs = ()

    def forward(self, x: Array) -> Array:
        self.shape, self.channel_major = x.shape, is_channel_major(x)
        return x.mean(axis=(2, 3), keepdims=True)

    def backward(self, gy: Array) -> Array:
        N, C, H, W = self.shape
        xp = get_array_module(gy)
        # One elementwise pass writes the new array: the division of the
        # broadcast gradient, into memory laid out as x was (channel-major
        # or NCHW), so that no later op has to copy it into another layout.
        if self.channel_major:
            gx = xp.empty((C, N, H, W), dtype=gy.dtype)
            xp.divide(xp.broadcast_to(gy.swapaxes(0, 1), gx.shape), H * W, out=gx)
            return from_channel_major(gx)
        gx = xp.empty(self.shape, dtype=gy.dtype)
        xp.divide(xp.broadcast_to(gy, self.shape), H * W, out=gx)
        return gx

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
    """Softmax cross-entropy of logits (N, K) against integer labels, reduced.

    The backend computes each row's loss (PyTorch's formula, with class
    weights, ignore_index and label smoothing: numpy_backend.cross_entropy_forward)
    and the gradient of each row's loss; this Function does the reduction:
    'none' keeps the N losses, 'sum' adds them, 'mean' divides the sum by
    the total weight of the rows that count (w[label] summed over the rows
    not ignored; their number when there are no weights), as PyTorch does.
    The backend gives each row's weight in that total with its loss. weight
    is None when there are no class weights (all ones).
    """

    saved_inputs = ()  # backward reads the softmax it computed

    def __init__(self, labels, weight, ignore_index, reduction, label_smoothing):
        self.labels, self.weight, self.ignore_index = labels, weight, ignore_index
        self.reduction, self.label_smoothing = reduction, label_smoothing

    def _targets(self) -> tuple:
        return self.labels, self.weight, self.ignore_index, self.label_smoothing

    def forward(self, logits: Array) -> Array:
        xp = get_array_module(logits)
        self.backend, self.N = get_backend(logits), logits.shape[0]
        losses, self.probs, row_weight = self.backend.cross_entropy_forward(
            logits, *self._targets()
        )
        if self.reduction == "none":
            return losses
        total = xp.asarray(losses.sum(), dtype=logits.dtype)
        if self.reduction == "sum":
            return total
        # 'mean': the sum over the weight of the rows that count (w[label] of
        # each row not ignored, 0 for an ignored one: row_weight).
        self.total_weight = xp.asarray(row_weight.sum(), dtype=logits.dtype)
        with np.errstate(invalid="ignore"):  # nothing counted: NaN, as PyTorch (and no warning)
            return xp.asarray(total / self.total_weight)

    def backward(self, gloss: Array) -> Array:
        xp = get_array_module(gloss)
        if self.reduction == "mean":
            with np.errstate(divide="ignore", invalid="ignore"):
                gloss = gloss / self.total_weight
        grad_losses = gloss if self.reduction == "none" else xp.broadcast_to(gloss, (self.N,))
        return self.backend.cross_entropy_backward(self.probs, *self._targets(), grad_losses)

    def differentiable_backward(self, gloss: Tensor) -> Tensor:
        """numpy_backend.cross_entropy_backward on Tensors: each row's gradient is
        sum(q) * softmax(logits) - q for the row's target weights q (a constant),
        the softmax recomputed from the logits Tensor (its shift by the row
        maximum is a constant), times the row's share of gloss."""
        logits = self.inputs[0]
        xp = get_array_module(logits.data)
        N, K = logits.shape
        e = (logits - logits.new_tensor(logits.data.max(axis=1, keepdims=True))).exp()
        probs = e / e.sum(1, keepdim=True)
        counted = self.labels != self.ignore_index
        y = xp.where(counted, self.labels, 0)
        w = xp.ones(K, dtype=logits.dtype) if self.weight is None else self.weight
        q = xp.zeros((N, K), dtype=logits.dtype)
        q[xp.arange(N), y] = (1 - self.label_smoothing) * w[y]
        q += (self.label_smoothing / K) * w
        q *= counted[:, None]
        row_grad = gloss.reshape(-1, 1) if self.reduction == "none" else gloss
        if self.reduction == "mean":
            row_grad = row_grad / logits.new_tensor(self.total_weight)
        return (probs * logits.new_tensor(q.sum(axis=1, keepdims=True)) - logits.new_tensor(q)) * (
            row_grad
        )


_REDUCTIONS = ("none", "mean", "sum")


def cross_entropy(
    input: Tensor,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Softmax cross-entropy of logits (N, K) against integer labels (N,), as PyTorch.

    Row n's loss, with y = target[n], e = label_smoothing and w the class
    weights (all 1 when weight is None):

        -(1 - e) * w[y] * log p[n, y] - (e / K) * sum_k w[k] * log p[n, k]

    and 0 for a row whose label is ignore_index. reduction 'none' returns the
    N losses, 'sum' their sum, 'mean' (default) their sum divided by the sum
    of w[y] over the rows not ignored (NaN if every row is ignored). Computed
    with log-sum-exp, so logits of +-1e4 give a finite loss. ``weight`` is a
    constant (K,) array or Tensor of the input's dtype; it gets no gradient.
    """
    op = "cross_entropy"
    logits = as_tensor(input)
    _check_ndim(op, "input", logits, 2, "(N, num_classes)")
    _check_float(op, "input", logits)
    xp = get_array_module(logits.data)
    labels = target.data if isinstance(target, Tensor) else target
    on_host = not is_cupy_array(labels)
    if on_host:
        labels = np.asarray(labels)
    elif xp is np:
        raise TypeError(f"{op}: target is on the GPU but input is not; move it to the CPU")
    N, K = logits.shape
    if labels.ndim != 1 or labels.shape[0] != N:
        raise ValueError(
            f"{op}: target must be a 1-D array of {N} labels (one per row of input), "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{op}: target must hold integer class labels, got dtype {labels.dtype}")
    if not isinstance(ignore_index, (int, np.integer)) or isinstance(ignore_index, bool):
        raise TypeError(f"{op}: ignore_index must be an int, got {ignore_index!r}")
    # Host labels are checked now, before they are copied to a GPU input's
    # device; labels already there later, without a sync (label_check.py).
    if on_host:
        label_check.check_now(op, labels, K, int(ignore_index))
    labels = xp.asarray(labels).astype(xp.int64, copy=False)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    numbers = (int, float, np.integer, np.floating)
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers):
        raise TypeError(f"{op}: label_smoothing must be a float, got {label_smoothing!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing!r}")
    w = None  # no class weights: every class weighs 1
    if weight is not None:
        w = weight.data if isinstance(weight, Tensor) else weight
        if not hasattr(w, "dtype"):
            raise TypeError(f"{op}: weight must be an array or a Tensor, got {type(w).__name__}")
        if get_array_module(w) is not xp and xp is np:
            raise TypeError(f"{op}: weight is on the GPU but input is not; move it to the CPU")
        w = xp.asarray(w)  # like target, a NumPy weight is copied to a GPU input's device
        _check_vector(op, "weight", w, K)
        if w.dtype != logits.dtype:
            raise TypeError(
                f"{op}: weight has dtype {w.dtype} but input has dtype {logits.dtype}; "
                f"they must match (convert with .astype(np.{logits.dtype}))"
            )
    if not on_host:
        label_check.defer(op, labels, K, int(ignore_index))
    fn = CrossEntropyFunction(labels, w, int(ignore_index), reduction, float(label_smoothing))
    return fn(logits)
