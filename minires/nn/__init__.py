"""Layers and the Module container, spelled as in torch.nn."""

from . import init, parallel
from .init import manual_seed
from .layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    Identity,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
)
from .module import Module
from .parameter import Parameter
from .sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

__all__ = [
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "Flatten",
    "Identity",
    "Linear",
    "MaxPool2d",
    "Module",
    "Parameter",
    "ReLU",
    "Sequential",
    "SyncBatchNorm",
    "convert_sync_batchnorm",
    "init",
    "parallel",
    "manual_seed",
]
