"""The layers of a ResNet, each a thin Module around a minires.functional op."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np

from .. import functional as F
from ..autograd import Tensor
from . import init
from .module import Module
from .parameter import Parameter


def _positive(layer: str, name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{layer}: {name} must be a positive int, got {value!r}")


class Conv2d(Module):
    """2-D convolution layer; weight (out_channels, in_channels / groups, kh, kw).

    The arguments of torch.nn.Conv2d, in its order: stride, padding (an int,
    a pair, 'same' or 'valid'), dilation and groups as in F.conv2d.
    Initialised as PyTorch does: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the
    weight and the bias (kaiming_uniform with a = sqrt(5)), where
    fan_in = in_channels / groups * kh * kw, the inputs one output sees.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: str | int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        _positive("Conv2d", "in_channels", in_channels)
        _positive("Conv2d", "out_channels", out_channels)
        _positive("Conv2d", "groups", groups)
        for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
            if channels % groups:
                raise ValueError(
                    f"Conv2d: {name} must be divisible by groups, got {name}={channels}, "
                    f"groups={groups}"
                )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = F.pair("Conv2d", "kernel_size", kernel_size, 1)
        self.stride = F.pair("Conv2d", "stride", stride, 1)
        self.dilation = F.pair("Conv2d", "dilation", dilation, 1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(
                    "Conv2d: padding must be 'same', 'valid', an int or a pair of ints, "
                    f"got {padding!r}"
                )
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(
                    f"Conv2d: padding='same' is not supported for strided convolutions, got "
                    f"stride {self.stride}"
                )
            self.padding: str | tuple[int, int] = padding
        else:
            self.padding = F.pair("Conv2d", "padding", padding, 0)
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        bound = 1.0 / math.sqrt(init.fan_in_and_out(shape)[0])
        self.weight = Parameter(init.uniform(shape, bound))
        self.bias = Parameter(init.uniform((out_channels,), bound)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")


class BatchNorm2d(Module):
    """BatchNorm over the channels of (N, C, H, W), with running statistics.

    Buffers (as torchvision): running_mean (C,), running_var (C,) and
    num_batches_tracked (an int64 scalar). momentum=None gives the cumulative
    average, as in PyTorch.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ):
        super().__init__()
        _positive("BatchNorm2d", "num_features", num_features)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = Parameter(np.ones(num_features, np.float32)) if affine else None
        self.bias = Parameter(np.zeros(num_features, np.float32)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, np.float32))
            self.register_buffer("running_var", np.ones(num_features, np.float32))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            self.running_mean = self.running_var = None

    def forward(self, x: Tensor, relu: bool = False) -> Tensor:
        """BatchNorm of x (N, C, H, W); with relu=True, relu of it as one fused
        op (F.batch_norm_relu: the same numbers, fewer passes over memory)."""
        if x.ndim != 4:
            raise ValueError(f"BatchNorm2d: expected 4-D input (N, C, H, W), got shape {x.shape}")
        use_batch_stats = self.training or not self.track_running_stats
        momentum = self.momentum if self.momentum is not None else 0.0
        track = self.track_running_stats and self.training
        count = None  # num_batches_tracked, for F.batch_norm to increment
        if track and self.momentum is None:  # the cumulative average needs the count now
            self.num_batches_tracked += 1  # in place: the buffer array is shared
            momentum = 1.0 / float(self.num_batches_tracked)
        elif track:
            count = self.num_batches_tracked
        return (F.batch_norm_relu if relu else F.batch_norm)(
            x,
            self.running_mean if (track or not use_batch_stats) else None,
            self.running_var if (track or not use_batch_stats) else None,
            self.weight,
            self.bias,
            training=use_batch_stats,
            momentum=momentum,
            eps=self.eps,
            num_batches_tracked=count,
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class Linear(Module):
    """y = x @ weight.T + bias; weight (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        _positive("Linear", "in_features", in_features)
        _positive("Linear", "out_features", out_features)
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(init.uniform((out_features, in_features), bound))
        self.bias = Parameter(init.uniform((out_features,), bound)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class ReLU(Module):
    """max(x, 0). ``inplace`` is accepted for PyTorch compatibility and ignored:
    minires never overwrites an array that backward may still need."""

    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class MaxPool2d(Module):
    """F.max_pool2d as a layer. ceil_mode is keyword-only: PyTorch's fourth
    argument is dilation, which minires's max pooling does not have."""

    def __init__(self, kernel_size, stride=None, padding=0, *, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode = ceil_mode

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(
            x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode
        )

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"ceil_mode={self.ceil_mode}"
        )


class AvgPool2d(Module):
    """F.avg_pool2d as a layer, with torch.nn.AvgPool2d's arguments and order."""

    def __init__(
        self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True
    ):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad
        )

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class Flatten(Module):
    def __init__(self, start_dim: int = 1):
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x: Tensor) -> Tensor:
        return F.flatten(x, self.start_dim)


class Identity(Module):
    """Returns its input: a placeholder for an absent layer."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return x


class Sequential(Module):
    """Calls its modules in order; they are named "0", "1", ... (or by an OrderedDict)."""

    def __init__(self, *modules: Module):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def forward(self, x: Tensor) -> Tensor:
        for m in self._modules.values():
            x = m(x)
        return x

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, i: int | slice) -> Module:
        items = list(self._modules.values())
        if isinstance(i, slice):
            return Sequential(*items[i])
        return items[i]

    def append(self, m: Module) -> Sequential:
        self.add_module(str(len(self)), m)
        return self
