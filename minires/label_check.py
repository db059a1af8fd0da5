"""The range check of class labels: at once on the host, later (and sync-free) on the GPU.

A loss indexes its logits with the labels, so a label outside [0, K) must be
an error, never a silently wrong number. Where the labels are checked
depends on where they are:

* labels on the host (a NumPy array or a list, also with logits on the GPU)
  are checked at once, before they are copied to the device: it is free;
* labels already on the GPU would need a host sync to be checked at once
  (the host waits for the GPU to finish everything queued, then reads a
  flag back), once per call: a training step could not run ahead of the
  GPU. So the call only notes them here (:func:`defer`) and goes on. The CUDA
  kernel never indexes with a bad label (that row's loss is NaN, which is
  what the caller sees meanwhile), and :func:`check_labels` checks every
  noted call at once, with one sync.

:func:`check_labels` runs when the user asks (``F.check_labels()``), at every
report of ``minires train`` (a progress line, a checkpoint, the end of an
epoch: the trainer and ``evaluate`` call it), and by itself once labels of
more than PENDING_LIMIT rows are waiting. A bad label therefore raises, naming
the op and the values, by the end of the epoch at the latest. The labels
are checked as they are at that moment: an array changed in place after
the call is checked with its new values (the call's NaN loss still shows it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends.device import get_array_module, to_numpy

Array = Any

# Rows of labels that may wait for their check: 8 MB of int64 on the device.
PENDING_LIMIT = 1 << 20

# (op, labels (N,) int64 on the GPU, number of classes K, ignore_index)
_pending: list[tuple[str, Array, int, int]] = []
_pending_rows = 0


def bad_labels(labels: Array, num_classes: int, ignore_index: int) -> Array:
    """Boolean (N,): labels outside [0, num_classes) that are not ignore_index."""
    return ((labels < 0) | (labels >= num_classes)) & (labels != ignore_index)


def _error(op: str, labels: np.ndarray, num_classes: int, ignore_index: int, later: bool):
    bad = labels[bad_labels(labels, num_classes, ignore_index)]
    when = (
        " (labels on the GPU are checked after the call, by check_labels(): "
        "the loss it returned is NaN)"
        if later
        else ""
    )
    return ValueError(
        f"{op}: target labels must be in [0, {num_classes}) (or equal "
        f"ignore_index={ignore_index}), got {bad.size} outside it, with values in "
        f"[{int(bad.min())}, {int(bad.max())}]{when}"
    )


def check_now(op: str, labels: np.ndarray, num_classes: int, ignore_index: int) -> None:
    """Raise a ValueError naming ``op`` and the bad values if a host label is out of range."""
    if labels.size and bad_labels(labels, num_classes, ignore_index).any():
        raise _error(op, labels, num_classes, ignore_index, later=False)


def defer(op: str, labels: Array, num_classes: int, ignore_index: int) -> None:
    """Note GPU ``labels`` (N,) for the next :func:`check_labels`; no sync, no launch."""
    global _pending_rows
    _pending.append((op, labels, num_classes, ignore_index))
    _pending_rows += labels.shape[0]
    if _pending_rows > PENDING_LIMIT:
        check_labels()


def pending() -> int:
    """How many calls' labels wait for their check."""
    return len(_pending)


def check_labels() -> None:
    """Check the labels of every call since the last check: a ValueError if one was bad.

    The error names the op, the range expected and the bad values. On the
    GPU this is one host sync (none when nothing waits); the waiting list is
    emptied either way.
    """
    global _pending_rows
    calls, _pending[:] = list(_pending), []
    _pending_rows = 0
    if not calls:
        return
    xp = get_array_module(calls[0][1])
    counts = xp.stack([bad_labels(y, k, ignore).sum() for _, y, k, ignore in calls])
    for (op, labels, k, ignore), count in zip(calls, to_numpy(counts)):
        if count:
            raise _error(op, to_numpy(labels), k, ignore, later=True)
