"""The ImageNet ResNets, ResNeXts and wide ResNets, laid out exactly as torchvision's.

    stem   conv1 7x7/2 (3 -> 64) -> bn1 -> relu -> maxpool 3x3/2
    body   layer1 .. layer4: stages of blocks, 64/128/256/512 planes,
           stride 2 at the start of layer2, layer3, layer4
    head   avgpool (global) -> flatten -> fc

Module names, registration order and shapes are torchvision's, so
``model.state_dict()`` has the same keys, in the same order, with the same
shapes (``conv1.weight``, ``bn1.running_mean``, ``layer1.0.conv1.weight``,
``layer2.0.downsample.0.weight``, ``fc.bias``, ...) and weights move between
the two as a dict of arrays. Parameter counts, to the unit:

    resnet18 11,689,512   resnet34 21,797,672   resnet50 25,557,032
    resnet101 44,549,160  resnet152 60,192,808

The same skeleton with wider or grouped Bottlenecks (``groups`` and
``width_per_group``, see ``Bottleneck``) gives the ResNeXts (Xie et al. 2017:
the 3x3 convolution split into 32 groups, "cardinality") and the wide
ResNets (Zagoruyko & Komodakis 2016: every Bottleneck's inner width doubled):

    resnext50_32x4d 25,028,904    resnext101_32x8d 88,791,336
    wide_resnet50_2 68,883,240    wide_resnet101_2 126,886,696
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from .. import functional as F
from .. import nn
from ..autograd import Tensor
from .blocks import BasicBlock, Bottleneck, conv1x1, init_resnet_weights, stage_blocks

__all__ = [
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]


class ResNet(nn.Module):
    """ResNet for (N, 3, H, W) images -> (N, num_classes) logits.

    Args:
        block: BasicBlock or Bottleneck.
        layers: the number of blocks in each of the four stages.
        num_classes: the size of the output.
        zero_init_residual: start every block's last BN weight at zero, so
            each block begins as (the ReLU of) its shortcut (Goyal et al. 2017).
        groups: the number of groups of every Bottleneck's 3x3 convolution
            (ResNeXt's cardinality); 1 for BasicBlock.
        width_per_group: the channels of each group at 64 planes (layer1);
            a Bottleneck's inner width is int(planes * width_per_group / 64)
            * groups. 64 for BasicBlock.

    H and W should be at least 32: the stem and the three strided stages
    divide them by 32.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
    ):
        super().__init__()
        if block not in (BasicBlock, Bottleneck):
            raise TypeError(f"ResNet: block must be BasicBlock or Bottleneck, got {block!r}")
        if len(layers) != 4 or not all(isinstance(n, int) and n >= 1 for n in layers):
            raise ValueError(f"ResNet: layers must be 4 positive ints, got {layers!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"ResNet: num_classes must be a positive int, got {num_classes!r}")
        for name, value in (("groups", groups), ("width_per_group", width_per_group)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ResNet: {name} must be a positive int, got {value!r}")
        self.groups, self.base_width = groups, width_per_group
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        init_resnet_weights(self)
        if zero_init_residual:
            for m in self.blocks():
                last_bn = m.bn3 if isinstance(m, Bottleneck) else m.bn2
                last_bn.weight.data[...] = 0

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, n: int, stride: int = 1
    ) -> nn.Sequential:
        """One stage: the first block may change the shape, the others keep it."""
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        widths = {"groups": self.groups, "base_width": self.base_width}
        layers = [block(self.inplanes, planes, stride, downsample, **widths)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **widths) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def blocks(self) -> Iterator[nn.Module]:
        """Every residual block, in the order the input meets them."""
        return iter(stage_blocks((self.layer1, self.layer2, self.layer3, self.layer4)))

    def forward(
        self, x: Tensor, return_block_outputs: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """(N, 3, H, W) -> logits (N, num_classes).

        With ``return_block_outputs=True`` also returns a list: the stem's
        output (the first block's input), then every block's output, so that
        ``outs[i - 1]`` and ``outs[i]`` are block i's input and output.
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = [x]
        if return_block_outputs:
            for block in self.blocks():
                x = block(x)
                outs.append(x)
        else:  # through the stages, so that hooks on layer1..layer4 see their calls
            for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
                x = stage(x)
        logits = self.fc(F.flatten(self.avgpool(x), 1))
        return (logits, outs) if return_block_outputs else logits


def resnet18(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-18: BasicBlock, [2, 2, 2, 2]; 11,689,512 parameters for 1000 classes."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, **kwargs)


def resnet34(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-34: BasicBlock, [3, 4, 6, 3]; 21,797,672 parameters."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, **kwargs)


def resnet50(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-50: Bottleneck, [3, 4, 6, 3]; 25,557,032 parameters."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, **kwargs)


def resnet101(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-101: Bottleneck, [3, 4, 23, 3]; 44,549,160 parameters."""
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes, **kwargs)


def resnet152(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-152: Bottleneck, [3, 8, 36, 3]; 60,192,808 parameters."""
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes, **kwargs)


def resnext50_32x4d(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNeXt-50 32x4d: resnet50's layout, 3x3 convs in 32 groups of 4 channels
    (at layer1; 8, 16, 32 further on); 25,028,904 parameters."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, groups=32, width_per_group=4, **kwargs)


def resnext101_32x8d(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNeXt-101 32x8d: resnet101's layout, 32 groups of 8; 88,791,336 parameters."""
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes, groups=32, width_per_group=8, **kwargs)


def wide_resnet50_2(num_classes: int = 1000, **kwargs) -> ResNet:
    """Wide ResNet-50-2: resnet50 with every Bottleneck's inner width doubled
    (the outer 256..2048 channels unchanged); 68,883,240 parameters."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, width_per_group=128, **kwargs)


def wide_resnet101_2(num_classes: int = 1000, **kwargs) -> ResNet:
    """Wide ResNet-101-2: resnet101, inner widths doubled; 126,886,696 parameters."""
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes, width_per_group=128, **kwargs)
