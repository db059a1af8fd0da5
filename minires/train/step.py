"""One training step: forward, loss, backward, update. The heart of the loop, on its own.

result = train_step(model, optimizer, images, labels)
result.loss, result.correct

On the GPU the step never waits for the GPU: its loss and count stay on the
device until they are read (``result.loss`` is a host sync), so the host can
queue the next step while the GPU still runs this one.
"""

from __future__ import annotations

import math

from .. import functional as F
from ..autograd import Tensor
from ..backends.device import Array, is_cupy_array, to_numpy
from ..nn import Module
from ..optim import Optimizer


class StepResult:
    """What one step measured on its batch, before the update.

    ``loss`` (mean cross-entropy over the batch) and ``correct`` (how many
    images had their label as the largest logit) are kept as given: Python
    numbers, or 0-d arrays on the GPU that are brought to the host when read.
    ``on_host`` says which; reading ``loss`` or ``correct`` of a GPU step waits
    for the GPU (a host sync), ``loss_value`` and ``correct_value`` do not.
    """

    __slots__ = ("loss_value", "correct_value")

    def __init__(self, loss: float | Array, correct: int | Array) -> None:
        self.loss_value, self.correct_value = loss, correct

    @property
    def on_host(self) -> bool:
        return not (is_cupy_array(self.loss_value) or is_cupy_array(self.correct_value))

    @property
    def loss(self) -> float:
        return float(to_numpy(self.loss_value))

    @property
    def correct(self) -> int:
        return int(to_numpy(self.correct_value))

    def __repr__(self) -> str:
        if not self.on_host:
            return "StepResult(on the GPU, not read yet)"
        return f"StepResult(loss={self.loss!r}, correct={self.correct!r})"


def correct_count(logits: Tensor, labels: Array) -> Array:
    """0-d array on the logits' device: rows of ``logits`` whose largest entry is at ``labels``."""
    return (logits.data.argmax(axis=1) == labels).sum()


def count_correct(logits: Tensor, labels: Array) -> int:
    """How many rows of ``logits`` have their largest entry at ``labels`` (same device)."""
    return int(to_numpy(correct_count(logits, labels)))


def train_step(model: Module, optimizer: Optimizer, images: Array, labels: Array) -> StepResult:
    """Train ``model`` on one batch: forward, cross-entropy, backward, optimiser step.

    ``images`` (N, C, H, W) and ``labels`` (N,) integer classes are arrays on
    the model's device.

    On the CPU, a NaN or infinite loss is returned *without* backward or the
    update: no parameter changes (only BatchNorm's running statistics have
    seen the batch, as in any forward pass in training mode), and the caller
    can stop cleanly (the Trainer does, keeping its last checkpoint).

    On the GPU the step does not wait to look at the loss (that would be a
    host sync per step): it always updates, and returns the loss and count on
    the device. A non-finite loss then leaves non-finite weights; the
    caller finds it when it reads the loss (the Trainer reads every step's
    at each report, and stops before saving anything from that step on).
    Labels on the device are range-checked the same way (F.check_labels).
    """
    logits = model(Tensor(images))
    loss = F.cross_entropy(logits, labels)
    correct = correct_count(logits, labels)
    if is_cupy_array(loss.data):  # looking at the loss would wait for the GPU
        result = StepResult(loss.data, correct)
    else:
        result = StepResult(float(loss.item()), int(correct))
        if not math.isfinite(result.loss):
            return result
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return result
