"""An epoch's numbers: running sums while it trains, its line of metrics.jsonl at the end."""

from __future__ import annotations

import dataclasses
from typing import Any

from .step import StepResult


@dataclasses.dataclass
class EpochSums:
    """The running sums of the epoch in progress.

    Plain Python floats and ints: exact, and the same after a resume (a
    mid-epoch checkpoint saves them as ``to_dict()``).
    """

    loss_sum: float = 0.0  # sum over images of the cross-entropy
    correct: int = 0
    seen: int = 0  # images
    time_s: float = 0.0  # seconds in training steps
    lr: float = 0.0  # the learning rate of the last step

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochSums:
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def add(self, step: StepResult, batch_size: int, seconds: float, lr: float) -> None:
        """Count one step of ``batch_size`` images that took ``seconds`` at rate ``lr``."""
        self.lr = lr
        self.loss_sum += step.loss * batch_size
        self.correct += step.correct
        self.seen += batch_size
        self.time_s += seconds

    def record(
        self, epoch: int, step: int, test_loss: float, test_acc: float, total_time_s: float
    ) -> dict[str, Any]:
        """The epoch's line of metrics.jsonl (``step``: schedule steps taken so far)."""
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
