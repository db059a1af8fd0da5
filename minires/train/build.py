"""The model, the optimiser and the learning-rate schedule a config asks for."""

from __future__ import annotations

from typing import Any

from .. import models, optim
from ..nn import Conv2d, Module
from .config import TrainConfig
from .errors import UserError


def build_model(name: str, num_classes: int) -> Module:
    """The named model from minires.models; an unknown name is a UserError."""
    try:
        return models.get_model(name, num_classes=num_classes)
    except ValueError as e:
        raise UserError(str(e)) from None


def input_channels(model: Module) -> int:
    """How many channels the model's first convolution expects."""
    for m in model.modules():
        if isinstance(m, Conv2d):
            return m.in_channels
    raise UserError(f"{type(model).__name__} has no convolution to take images")


def load_model_state(model: Module, state: dict[str, Any], what: str) -> None:
    """Load weights, turning a key or shape mismatch into a UserError that names them."""
    try:
        model.load_state_dict(state)
    except (KeyError, ValueError) as e:
        raise UserError(f"{what} does not fit this model: {e.args[0]}") from None


def build_optimizer(
    cfg: TrainConfig, model: Module, steps_per_epoch: int
) -> tuple[optim.SGD, optim.LRScheduler]:
    """SGD and a schedule stepped once per iteration (smooth even for a 10-epoch run)."""
    opt = optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    total = cfg.epochs * steps_per_epoch
    sched: optim.LRScheduler
    if cfg.schedule == "cosine":
        sched = optim.CosineAnnealingLR(opt, T_max=total)
    elif cfg.schedule == "step":
        sched = optim.MultiStepLR(opt, milestones=[total // 2, (3 * total) // 4], gamma=0.1)
    else:  # constant: a step schedule with no steps
        sched = optim.MultiStepLR(opt, milestones=[])
    if cfg.warmup_epochs:
        sched = optim.LinearWarmup(sched, cfg.warmup_epochs * steps_per_epoch)
    return opt, sched
