"""``train_step``, the heart of the loop: one update, and none on a NaN loss."""

from __future__ import annotations

import copy
import math

import numpy as np

import minires as mr
import minires.functional as F
from minires.train import train_step


def _setup(seed: int = 0):
    mr.manual_seed(seed)
    model = mr.models.cifar_resnet(8)
    opt = mr.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 4)
    return model, opt, images, labels


def test_a_step_reports_the_batch_before_the_update_and_then_updates() -> None:
    model, opt, images, labels = _setup()
    before = copy.deepcopy(model)
    logits = before(mr.Tensor(images))  # the same forward pass, on a copy
    expected_loss = float(F.cross_entropy(logits, labels).item())
    expected_correct = int((logits.data.argmax(axis=1) == labels).sum())

    result = train_step(model, opt, images, labels)

    assert result.loss == expected_loss and isinstance(result.loss, float)
    assert result.correct == expected_correct and isinstance(result.correct, int)
    changed = [
        not np.array_equal(p.data, q.data) for p, q in zip(model.parameters(), before.parameters())
    ]
    assert all(changed)  # every parameter got a gradient and a step
    assert len(opt.state) == len(list(model.parameters()))  # momentum buffers exist


def test_a_nan_loss_changes_no_weight() -> None:
    model, opt, images, labels = _setup()
    images[0, 0, 0, 0] = np.nan
    before = copy.deepcopy(model)

    result = train_step(model, opt, images, labels)

    assert math.isnan(result.loss)
    for p, q in zip(model.parameters(), before.parameters()):
        assert np.array_equal(p.data, q.data) and p.grad is None
    assert opt.state == {}  # no step was taken
