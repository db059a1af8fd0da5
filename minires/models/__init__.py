"""ResNets: torchvision's ImageNet models and He et al.'s CIFAR nets.

    import minires as mr

    model = mr.models.resnet18(num_classes=10)     # torchvision layout
    model = mr.models.resnext50_32x4d()            # also resnext101_32x8d,
    model = mr.models.wide_resnet50_2()            # wide_resnet101_2
    model = mr.models.resnet20()                   # CIFAR, option-A shortcuts
    model = mr.models.cifar_resnet(56, shortcut="B", preact=True)
    model = mr.models.get_model("plain20")         # by name
    mr.models.list_models()                        # the names get_model knows
    mr.models.count_parameters(model)              # number of learned values

Files: blocks.py (the residual blocks and the option-A shortcut), resnet.py
(ImageNet), cifar.py (CIFAR).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..nn import Module
from .blocks import (
    BasicBlock,
    Bottleneck,
    CifarBasicBlock,
    PreActBlock,
    ShortcutA,
    shortcut_a,
)
from .cifar import (
    CifarResNet,
    cifar_resnet,
    plain20,
    plain32,
    plain44,
    plain56,
    plain110,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
    resnet1202,
)
from .resnet import (
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext50_32x4d,
    resnext101_32x8d,
    wide_resnet50_2,
    wide_resnet101_2,
)

# The named constructors, in the order list_models() gives them.
_MODELS: dict[str, Callable[..., Module]] = {
    f.__name__: f
    for f in (
        resnet18,
        resnet34,
        resnet50,
        resnet101,
        resnet152,
        resnext50_32x4d,
        resnext101_32x8d,
        wide_resnet50_2,
        wide_resnet101_2,
        resnet20,
        resnet32,
        resnet44,
        resnet56,
        resnet110,
        resnet1202,
        plain20,
        plain32,
        plain44,
        plain56,
        plain110,
    )
}


def list_models() -> list[str]:
    """The names ``get_model`` accepts: ImageNet ResNets (ResNeXts and wide ResNets
    among them), CIFAR ResNets, plain nets."""
    return list(_MODELS)


def get_model(name: str, **kwargs: Any) -> Module:
    """Build the named model, passing ``kwargs`` to its constructor.

    ``get_model("resnet18", num_classes=10)`` is ``resnet18(num_classes=10)``.
    """
    if name not in _MODELS:
        raise ValueError(
            f"get_model: unknown model name {name!r}; valid names are: {', '.join(_MODELS)}"
        )
    return _MODELS[name](**kwargs)


def count_parameters(model: Module, trainable_only: bool = False) -> int:
    """The number of scalar values in the model's parameters (buffers excluded).

    ``trainable_only=True`` counts only parameters with requires_grad.
    """
    if not isinstance(model, Module):
        raise TypeError(
            f"count_parameters: model must be a minires.nn.Module, got {type(model).__name__}"
        )
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


# The model constructors come from _MODELS; these are the rest of the public names.
__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CifarBasicBlock",
    "CifarResNet",
    "PreActBlock",
    "ResNet",
    "ShortcutA",
    "cifar_resnet",
    "count_parameters",
    "get_model",
    "list_models",
    "shortcut_a",
    *_MODELS,
]
