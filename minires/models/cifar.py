"""The CIFAR-10 ResNets and plain nets of He et al. 2016, §4.2.

    stem   conv1 3x3 (3 -> 16) -> bn1 -> relu        (pre-activation: conv1 only)
    body   layer1, layer2, layer3: n blocks each, 16 / 32 / 64 channels on
           32x32 / 16x16 / 8x8 maps; stride 2 in the first block of layer2
           and layer3
    head   (pre-activation: final_bn -> relu) -> avgpool (global) -> flatten -> fc

depth = 6n + 2 weighted layers (6n convolutions, the stem, the fc). The
shortcut where the shape changes is option "A" (subsample + zero channels,
no parameters: the paper's CIFAR choice) or "B" (1x1 conv + BN). Parameter
counts with option A (the paper's Table 6 rounds them):

    resnet20 269,722 (0.27M)   resnet32 464,154 (0.46M)   resnet44 658,586 (0.66M)
    resnet56 853,018 (0.85M)   resnet110 1,727,962 (1.7M)  resnet1202 19,421,274 (19.4M)

The plain nets have the same counts; option B adds the projections (resnet20
272,474); pre-activation nets have the same counts as the original ones.

``width=k`` makes a wide ResNet (Zagoruyko & Komodakis 2016): 16k / 32k / 64k
channels in the three stages (the stem keeps 16), so layer1's first block
changes the width too and gets a shortcut. Their WRN-d-k, with n = (d - 4) / 6
blocks per stage, is ``cifar_resnet(d - 2, width=k, preact=True,
shortcut="B")`` but for the BatchNorm that follows our projections: WRN-28-10
has 36,479,194 parameters, ``cifar_resnet(26, width=10, preact=True,
shortcut="B")`` 36,481,434 (2 x (160 + 320 + 640) more). No dropout.

For the tutorials: ``model.blocks()`` lists the blocks in order, and
``model(x, return_block_outputs=True)`` also returns every block's output
(see ``CifarResNet.forward``).
"""

from __future__ import annotations

from collections.abc import Iterator

from .. import functional as F
from .. import nn
from ..autograd import Tensor
from .blocks import (
    SHORTCUTS,
    CifarBasicBlock,
    PreActBlock,
    conv3x3,
    init_resnet_weights,
    stage_blocks,
)

__all__ = [
    "CifarResNet",
    "cifar_resnet",
    "plain20",
    "plain32",
    "plain44",
    "plain56",
    "plain110",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet1202",
]


class CifarResNet(nn.Module):
    """A CIFAR ResNet (or plain net) for (N, 3, H, W) images -> (N, num_classes).

    Args:
        depth: 6n + 2 for n >= 1 (8, 14, 20, 32, 44, 56, 110, 1202, ...).
        shortcut: "A" or "B", used where a block changes the shape.
        residual: False builds the plain net (blocks with no shortcut).
        num_classes: the size of the output.
        preact: use pre-activation blocks (BN -> ReLU -> conv, no ReLU after
            the add) and a final BN + ReLU before pooling.
        width: the widening factor k: stages of 16k / 32k / 64k channels.

    Built for 32x32 inputs; any H, W >= 4 works (the maps shrink by 4).
    """

    def __init__(
        self,
        depth: int,
        shortcut: str = "A",
        residual: bool = True,
        num_classes: int = 10,
        preact: bool = False,
        width: int = 1,
    ):
        super().__init__()
        _check_args(depth, shortcut, num_classes, width)
        n = (depth - 2) // 6
        self.depth, self.preact, self.residual = depth, bool(preact), bool(residual)
        self.width = width
        block = PreActBlock if preact else CifarBasicBlock

        self.conv1 = conv3x3(3, 16)
        if not preact:
            self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages, in_planes = [], 16
        for planes, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
            # Built as a list and wrapped once: adding to a growing container
            # one block at a time must stay O(1) each for resnet1202.
            blocks = [block(in_planes, planes, stride, shortcut, residual)]
            blocks += [block(planes, planes, 1, shortcut, residual) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        if preact:
            self.final_bn = nn.BatchNorm2d(in_planes)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_planes, num_classes)
        init_resnet_weights(self)

    def blocks(self) -> Iterator[nn.Module]:
        """Every block (3n of them), in the order the input meets them."""
        return iter(stage_blocks((self.layer1, self.layer2, self.layer3)))

    def forward(
        self, x: Tensor, return_block_outputs: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """(N, 3, H, W) -> logits (N, num_classes).

        With ``return_block_outputs=True`` returns ``(logits, outs)``: outs[0]
        is the stem's output (the first block's input) and outs[i] is block
        i's output, i = 1 .. 3n, so block i maps outs[i - 1] to outs[i]. They
        are graph nodes: call ``outs[i].retain_grad()`` before backward to
        read dL/d(outs[i]) from ``outs[i].grad`` afterwards.
        """
        x = self.conv1(x)
        if not self.preact:
            x = self.bn1(x, relu=True)  # relu(bn1(x)), fused
        outs = [x]
        if return_block_outputs:
            for block in self.blocks():
                x = block(x)
                outs.append(x)
        else:  # through the stages, so that hooks on layer1..layer3 see their calls
            for stage in (self.layer1, self.layer2, self.layer3):
                x = stage(x)
        if self.preact:
            x = self.final_bn(x, relu=True)
        logits = self.fc(F.flatten(self.avgpool(x), 1))
        return (logits, outs) if return_block_outputs else logits

    def extra_repr(self) -> str:
        kind = "pre-activation " if self.preact else ""
        wide = f", width={self.width}" if self.width != 1 else ""
        return f"depth={self.depth}{wide}, {kind}{'residual' if self.residual else 'plain'}"


def _check_args(depth: object, shortcut: object, num_classes: object, width: object) -> None:
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"cifar_resnet: depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, "
            f"1202, ...), got {depth!r}"
        )
    if shortcut not in SHORTCUTS:
        raise ValueError(f"cifar_resnet: shortcut must be 'A' or 'B', got {shortcut!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"cifar_resnet: num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"cifar_resnet: width must be a positive int, got {width!r}")


def cifar_resnet(
    depth: int,
    shortcut: str = "A",
    residual: bool = True,
    num_classes: int = 10,
    preact: bool = False,
    width: int = 1,
) -> CifarResNet:
    """The CIFAR net of the given depth (6n + 2) and widening factor; see ``CifarResNet``."""
    return CifarResNet(depth, shortcut, residual, num_classes, preact, width)


def resnet20(**kwargs) -> CifarResNet:
    """ResNet-20 (n = 3), 0.27M parameters with option A."""
    return cifar_resnet(20, **kwargs)


def resnet32(**kwargs) -> CifarResNet:
    """ResNet-32 (n = 5), 0.46M parameters."""
    return cifar_resnet(32, **kwargs)


def resnet44(**kwargs) -> CifarResNet:
    """ResNet-44 (n = 7), 0.66M parameters."""
    return cifar_resnet(44, **kwargs)


def resnet56(**kwargs) -> CifarResNet:
    """ResNet-56 (n = 9), 0.85M parameters."""
    return cifar_resnet(56, **kwargs)


def resnet110(**kwargs) -> CifarResNet:
    """ResNet-110 (n = 18), 1.7M parameters."""
    return cifar_resnet(110, **kwargs)


def resnet1202(**kwargs) -> CifarResNet:
    """ResNet-1202 (n = 200), 19.4M parameters: 1,202 layers, built in seconds."""
    return cifar_resnet(1202, **kwargs)


def _plain(depth: int, kwargs: dict) -> CifarResNet:
    if "residual" in kwargs:
        raise TypeError(f"plain{depth}: residual is always False for a plain net")
    return cifar_resnet(depth, residual=False, **kwargs)


def plain20(**kwargs) -> CifarResNet:
    """Plain-20: resnet20 without shortcuts (He et al. 2016, Fig. 6, left)."""
    return _plain(20, kwargs)


def plain32(**kwargs) -> CifarResNet:
    """Plain-32: resnet32 without shortcuts."""
    return _plain(32, kwargs)


def plain44(**kwargs) -> CifarResNet:
    """Plain-44: resnet44 without shortcuts."""
    return _plain(44, kwargs)


def plain56(**kwargs) -> CifarResNet:
    """Plain-56: resnet56 without shortcuts."""
    return _plain(56, kwargs)


def plain110(**kwargs) -> CifarResNet:
    """Plain-110: resnet110 without shortcuts."""
    return _plain(110, kwargs)
