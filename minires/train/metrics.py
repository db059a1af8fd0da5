"""An epoch's numbers: running sums while it trains, its line of metrics.jsonl at the end."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..backends.device import get_array_module, to_numpy
from .step import StepResult


@dataclasses.dataclass
class EpochSums:
    """The running sums of the epoch in progress.

    Plain Python floats and ints: exact, and the same after a resume (a
    mid-epoch checkpoint saves them as ``to_dict()``). A step whose loss and
    count are still on the GPU waits in ``unread`` until :meth:`read` brings
    every waiting step to the host at once (one sync) and adds them, in
    order, exactly as ``add`` adds a step on the host.
    """

    loss_sum: float = 0.0  # sum over images of the cross-entropy
    correct: int = 0
    seen: int = 0  # images
    time_s: float = 0.0  # seconds in training steps
    lr: float = 0.0  # the learning rate of the last step
    # (step, images, its batch number in the epoch): counted in seen, not yet in the sums
    unread: list[tuple[StepResult, int, int]] = dataclasses.field(
        default_factory=list, repr=False, compare=False
    )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochSums:
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        if self.unread:
            raise RuntimeError("EpochSums.to_dict: read() the steps still on the GPU first")
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "unread"}

    def add(
        self, step: StepResult, batch_size: int, seconds: float, lr: float, batch: int = 0
    ) -> None:
        """Count one step of ``batch_size`` images that took ``seconds`` at rate ``lr``.

        ``batch``: its number in the epoch, for :meth:`read`'s report of a bad loss.
        """
        self.lr = lr
        self.seen += batch_size
        self.time_s += seconds
        if step.on_host and not self.unread:
            self._add(step.loss, step.correct, batch_size)
        else:
            self.unread.append((step, batch_size, batch))

    def _add(self, loss: float, correct: int, batch_size: int) -> None:
        self.loss_sum += loss * batch_size
        self.correct += correct

    def read(self) -> tuple[int, float] | None:
        """Add the steps still on the GPU to the sums: (batch, loss) of the first
        non-finite loss among them, or None. One host sync when any wait."""
        steps, self.unread = self.unread, []
        if not steps:
            return None
        losses, corrects = (
            _to_host([s.loss_value for s, _, _ in steps]),
            _to_host([s.correct_value for s, _, _ in steps]),
        )
        bad = None
        for (_, batch_size, batch), loss, correct in zip(steps, losses, corrects):
            if bad is None and not math.isfinite(loss):
                bad = (batch, float(loss))
            self._add(float(loss), int(correct), batch_size)
        return bad

    def record(
        self, epoch: int, step: int, test_loss: float, test_acc: float, total_time_s: float
    ) -> dict[str, Any]:
        """The epoch's line of metrics.jsonl (``step``: schedule steps taken so far)."""
        if self.unread:
            raise RuntimeError("EpochSums.record: read() the steps still on the GPU first")
        return {
            "epoch": epoch,
            "step": step,
            "lr": self.lr,  # of the epoch's last step
            "train_loss": self.loss_sum / max(self.seen, 1),
            "train_acc": self.correct / max(self.seen, 1),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "images_per_s": self.seen / max(self.time_s, 1e-9),
            "train_time_s": self.time_s,
            "total_train_time_s": total_time_s,
        }


def _to_host(values: list) -> np.ndarray:
    """Numbers, or 0-d arrays on one device, as one host array: one copy back from a GPU."""
    xp = get_array_module(values[0])
    return to_numpy(xp.stack([xp.asarray(v) for v in values]))
