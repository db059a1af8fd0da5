"""Residual blocks: torchvision's BasicBlock and Bottleneck, and the CIFAR blocks.

Where BN is followed by a ReLU, the blocks write ``bn(x, relu=True)``:
relu(bn(x)) as one fused op (F.batch_norm_relu), the same numbers with two
GPU launches and a pass over memory fewer each way. The ReLU after the
residual add stays the layer ``self.relu``.

Every block computes ``out = F(x) + shortcut(x)`` with a plain out-of-place
``+``, so autograd sees the fork at x and adds the two gradients that flow
back into it: dL/dx = dL/dout · (I + dF/dx) when the shortcut is the identity.

ImageNet blocks (torchvision v1.5 layout, attribute names and order as there,
so ``state_dict()`` keys match torchvision's to the letter):

    BasicBlock   conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, + downsample(x), ReLU
    Bottleneck   conv1x1 -> BN -> ReLU -> conv3x3(stride, groups) -> BN -> ReLU
                 -> conv1x1 (x4 channels) -> BN, + downsample(x), ReLU

The Bottleneck's ``groups`` and ``base_width`` make the ResNeXt and wide
ResNet blocks: its inner width is int(planes * base_width / 64) * groups, and
its 3x3 convolution is split into ``groups`` independent convolutions. The
plain ResNet block is groups=1, base_width=64 (width = planes).

CIFAR blocks (He et al. 2016, §4.2, and "Identity Mappings in Deep Residual
Networks", He et al. 2016b), with the shortcut in an attribute ``shortcut``:

    CifarBasicBlock  as BasicBlock, shortcut "A" (parameter-free) or "B"
                     (1x1 conv + BN), or none at all for the plain nets
    PreActBlock      BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv3x3, + shortcut:
                     no ReLU after the add, so with an identity shortcut
                     x_{l+1} = x_l + F(x_l) holds exactly.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .. import nn
from ..autograd import Function, IndexAdd, Tensor
from ..backends import get_array_module
from ..functional import from_channel_major

Array = np.ndarray  # or a cupy.ndarray: the Function below is array-generic


# --------------------------------------------------------------------------
# Convolution helpers and initialisation (torchvision's)
# --------------------------------------------------------------------------


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (the BN after it has one).

    ``groups`` splits the channels into that many independent convolutions,
    each from in_planes / groups channels to out_planes / groups.
    """
    return nn.Conv2d(
        in_planes, out_planes, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False
    )


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias: a per-pixel linear map of the channels."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def init_resnet_weights(model: nn.Module) -> None:
    """torchvision's ResNet initialisation, in place.

    Convolutions: kaiming normal with fan_out = C_out*kh*kw, N(0, 2/fan_out)
    (He et al. 2015; torchvision's ``mode="fan_out"``). BatchNorm: weight 1,
    bias 0. Linear layers keep their default U(-1/sqrt(in), 1/sqrt(in)).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            shape = m.weight.shape
            fan_out = nn.init.fan_in_and_out(shape)[1]
            m.weight.data = nn.init.kaiming_normal(shape, fan_out, dtype=m.weight.dtype)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            m.weight.data[...] = 1
            m.bias.data[...] = 0


def _check_planes(block: str, **sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{block}: {name} must be a positive int, got {value!r}")


# --------------------------------------------------------------------------
# torchvision's blocks
# --------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34).

    Shapes: x (N, inplanes, H, W) -> (N, planes, H', W'), H' = ceil(H / stride).
    ``downsample`` maps x to the output's shape when it changes (torchvision
    uses ``Sequential(conv1x1(inplanes, planes, stride), BatchNorm2d(planes))``);
    None means the identity.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
    ):
        super().__init__()
        _check_planes("BasicBlock", inplanes=inplanes, planes=planes, stride=stride)
        if groups != 1 or base_width != 64:
            raise ValueError(
                f"BasicBlock: only groups=1 and base_width=64 are supported (as in torchvision), "
                f"got groups={groups!r}, base_width={base_width!r}"
            )
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.bn1(self.conv1(x), relu=True)  # relu(bn1(conv1(x))), fused
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) and a shortcut (ResNet-50/101/152).

    Shapes: x (N, inplanes, H, W) -> (N, planes * 4, H', W'). The stride sits
    on the 3x3 convolution (torchvision's "v1.5"; the original paper put it on
    the first 1x1, which throws away 3/4 of the input before looking at it).

    The inner width (conv1's output, conv2's input and output) is
    ``int(planes * base_width / 64) * groups``, torchvision's formula:

        ResNet-50         groups=1,  base_width=64   width = planes
        ResNeXt-50 32x4d  groups=32, base_width=4    width = planes / 2, in 32 groups
        Wide ResNet-50-2  groups=1,  base_width=128  width = 2 * planes

    The output keeps planes * 4 channels whatever the width.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
    ):
        super().__init__()
        _check_planes(
            "Bottleneck",
            inplanes=inplanes,
            planes=planes,
            stride=stride,
            groups=groups,
            base_width=base_width,
        )
        width = int(planes * (base_width / 64.0)) * groups
        if width == 0:
            raise ValueError(
                f"Bottleneck: the inner width int(planes * base_width / 64) * groups is 0 for "
                f"planes={planes}, base_width={base_width}; it must be positive"
            )
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.bn1(self.conv1(x), relu=True)  # relu(bn1(conv1(x))), fused
        out = self.bn2(self.conv2(out), relu=True)
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)


# --------------------------------------------------------------------------
# Option A: the parameter-free shortcut of the CIFAR nets
# --------------------------------------------------------------------------


class SubsamplePadFunction(Function):
    """y = x[:, :, ::s, ::s] followed by zero channels: (N, C, H, W) -> (N, C_out, H', W').

    H' = ceil(H / s), the size a 3x3 stride-s padding-1 convolution gives. The
    new channels are appended after the old ones (as in fb.resnet.torch's
    shortcut type A). It is linear, so its backward is its adjoint: the
    gradient of the kept channels, put back on the pixels that were kept,
    zero everywhere else. The output is stored channel-major, like a
    convolution's, so the residual add sees two arrays in the same layout.
    """

    saved_inputs = ()  # backward needs only the input's shape

    def __init__(self, out_channels: int, stride: int):
        self.out_channels, self.stride = out_channels, stride

    def forward(self, x: Array) -> Array:
        xp = get_array_module(x)
        N, C, H, W = x.shape
        s = self.stride
        kept = x[:, :, ::s, ::s]
        y = xp.zeros((self.out_channels, N, *kept.shape[2:]), dtype=x.dtype)
        y[:C] = kept.swapaxes(0, 1)
        self.in_shape = x.shape
        return from_channel_major(y)

    def backward(self, gy: Array) -> Array:
        xp = get_array_module(gy)
        N, C, H, W = self.in_shape
        s = self.stride
        gx = from_channel_major(xp.zeros((C, N, H, W), dtype=gy.dtype))
        gx[:, :, ::s, ::s] = gy[:, :C]
        return gx

    def differentiable_backward(self, gy: Tensor) -> Tensor:
        s, C = self.stride, self.in_shape[1]
        return IndexAdd(
            self.in_shape, (slice(None), slice(None), slice(None, None, s), slice(None, None, s))
        )(gy[:, :C])  # noqa: E501


def shortcut_a(x: Tensor, out_channels: int, stride: int = 2) -> Tensor:
    """Option-A shortcut (He et al. 2016, §4.1): subsample by ``stride`` and
    pad the channels with zeros up to ``out_channels``. No parameters.

    x: (N, C, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride)).
    """
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = getattr(x, "shape", None)
        raise ValueError(f"shortcut_a: x must be a 4-D (N, C, H, W) Tensor, got shape {shape}")
    if not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"shortcut_a: stride must be a positive int, got {stride!r}")
    if not isinstance(out_channels, (int, np.integer)) or out_channels < x.shape[1]:
        raise ValueError(
            f"shortcut_a: out_channels must be an int >= the input's {x.shape[1]} channels, "
            f"got {out_channels!r}"
        )
    return SubsamplePadFunction(int(out_channels), int(stride))(x)


class ShortcutA(nn.Module):
    """The option-A shortcut as a layer (no parameters, no state_dict entries)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        _check_planes("ShortcutA", in_channels=in_channels, out_channels=out_channels)
        if out_channels < in_channels:
            raise ValueError(
                f"ShortcutA: out_channels must be >= in_channels ({in_channels}), "
                f"got {out_channels}"
            )
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        return shortcut_a(x, self.out_channels, self.stride)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


# --------------------------------------------------------------------------
# CIFAR blocks
# --------------------------------------------------------------------------

SHORTCUTS = ("A", "B")


def make_shortcut(block: str, in_planes: int, planes: int, stride: int, shortcut: str) -> nn.Module:
    """Identity when the shape is kept; else option A or B (1x1 conv + BN)."""
    if shortcut not in SHORTCUTS:
        raise ValueError(f"{block}: shortcut must be 'A' or 'B', got {shortcut!r}")
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    if shortcut == "A":
        return ShortcutA(in_planes, planes, stride)
    return nn.Sequential(conv1x1(in_planes, planes, stride), nn.BatchNorm2d(planes))


class CifarBasicBlock(nn.Module):
    """BasicBlock of the CIFAR ResNets: x (N, in_planes, H, W) -> (N, planes, H', W').

    ``shortcut``: "A" (zero-padding, parameter-free) or "B" (projection) when
    the shape changes, the identity otherwise. ``residual=False`` drops the
    shortcut (``self.shortcut`` is None): the block of the plain nets.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        shortcut: str = "A",
        residual: bool = True,
    ):
        super().__init__()
        _check_planes("CifarBasicBlock", in_planes=in_planes, planes=planes, stride=stride)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = (
            make_shortcut("CifarBasicBlock", in_planes, planes, stride, shortcut)
            if residual
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x), relu=True)  # relu(bn1(conv1(x))), fused
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        # This ReLU after the add is why x_{l+1} = x_l + F(x_l) is not exact here.
        return self.relu(out)


class PreActBlock(nn.Module):
    """Pre-activation block (He et al. 2016b): x_{l+1} = shortcut(x_l) + F(x_l).

    F = conv2(relu(bn2(conv1(relu(bn1(x)))))); nothing follows the add. With
    an identity shortcut the block is exactly x + F(x), and when bn2.weight
    is zero F is exactly zero, so the block is the identity.
    x: (N, in_planes, H, W) -> (N, planes, H', W').

    Where the shape changes, a projection shortcut ("B") reads the
    pre-activated input relu(bn1(x)), as in He et al.'s code; the identity
    and option A read x itself, so the path from block to block stays a
    fixed linear map.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        shortcut: str = "A",
        residual: bool = True,
    ):
        super().__init__()
        _check_planes("PreActBlock", in_planes=in_planes, planes=planes, stride=stride)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.shortcut = (
            make_shortcut("PreActBlock", in_planes, planes, stride, shortcut) if residual else None
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = self.bn1(x, relu=True)  # relu(bn1(x)), fused
        out = self.conv2(self.bn2(self.conv1(pre), relu=True))
        if self.shortcut is None:
            return out
        projection = isinstance(self.shortcut, nn.Sequential)
        return out + self.shortcut(pre if projection else x)


def stage_blocks(stages: Iterable[nn.Sequential]) -> list[nn.Module]:
    """The blocks of the given stages, in the order the input meets them."""
    return [block for stage in stages for block in stage]
