"""One training step: forward, loss, backward, update. The heart of the loop, on its own.

result = train_step(model, optimizer, images, labels)
result.loss, result.correct
"""

from __future__ import annotations

import dataclasses
import math

from .. import functional as F
from ..autograd import Tensor
from ..backends.device import Array, to_numpy
from ..nn import Module
from ..optim import Optimizer


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one step measured on its batch, before the update."""

    loss: float  # mean cross-entropy over the batch
    correct: int  # how many images had their label as the largest logit


def count_correct(logits: Tensor, labels: Array) -> int:
    """How many rows of ``logits`` have their largest entry at ``labels`` (same device)."""
    return int(to_numpy((logits.data.argmax(axis=1) == labels).sum()))


def train_step(model: Module, optimizer: Optimizer, images: Array, labels: Array) -> StepResult:
    """Train ``model`` on one batch: forward, cross-entropy, backward, optimiser step.

    ``images`` (N, C, H, W) and ``labels`` (N,) integer classes are arrays on
    the model's device. A NaN or infinite loss is returned *without* backward
    or the update: no parameter changes (only BatchNorm's running statistics
    have seen the batch, as in any forward pass in training mode), and the
    caller can stop cleanly (the Trainer does, keeping its last checkpoint).
    """
    logits = model(Tensor(images))
    loss = F.cross_entropy(logits, labels)
    result = StepResult(loss=float(loss.item()), correct=count_correct(logits, labels))
    if math.isfinite(result.loss):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return result
