"""The two ways a run ends in an error, and the one check that a device can be used.

``UserError``: something the user can fix (a bad option, a missing data set, a
wrong checkpoint, no GPU); the command line prints its message as one line.
``OutputError``: a UserError for a file of the run that cannot be written.
``TrainingDiverged``: the loss became NaN or infinite.
"""

from __future__ import annotations

from ..backends.device import DEVICES


class UserError(Exception):
    """A problem the user can fix; its message is printed without a traceback."""


class OutputError(UserError):
    """A file of the run folder could not be written (the message names it and why)."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the message says where and what to try."""


def check_device(device: str) -> None:
    """Raise UserError unless ``device`` can be used here ("cuda": a GPU that runs kernels).

    The one GPU check of ``minires train``, ``eval``, ``gradcheck`` and ``bench``.
    """
    if device == "cpu":
        return
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}; valid names: {', '.join(DEVICES)}")
    try:
        from ..backends import cuda_backend
    except ImportError as e:  # the backend may be missing from an older install
        raise UserError(f"--device cuda: the CUDA backend cannot be loaded ({e})") from None
    if not cuda_backend.gpu_available():
        reason = cuda_backend.gpu_unavailable_reason().rstrip(". ")
        raise UserError(f"--device cuda: no usable GPU. {reason}. Use --device cpu instead.")
