"""The autograd's two switches, one setting per thread (as in PyTorch).

Grad mode: whether calling a Function records the graph. ``no_grad()`` turns
it off for inference and for parameter updates; a thread inside ``no_grad()``
does not stop another thread's recording.

Anomaly mode: an in-place change made *through minires* (an optimiser step,
``load_state_dict``) bumps the tensor's version counter, and backward refuses
a graph that saved the old values (``check_saved`` in
minires/backward.py). A direct write into a tensor's ``.data`` cannot be seen
that way, as in PyTorch. Inside ``detect_anomaly()`` every Function also keeps
a copy of the inputs its backward reads, and backward compares: slow (a copy
of every saved input), so it is off by default, for debugging.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator


class _Switches(threading.local):
    grad_enabled = True
    anomaly_enabled = False


_switches = _Switches()


def is_grad_enabled() -> bool:
    """Whether Functions called in this thread record the graph."""
    return _switches.grad_enabled


def is_anomaly_enabled() -> bool:
    """Whether ``detect_anomaly()`` is active in this thread."""
    return _switches.anomaly_enabled


@contextlib.contextmanager
def _switched(name: str, value: bool) -> Iterator[None]:
    previous = getattr(_switches, name)
    setattr(_switches, name, bool(value))
    try:
        yield
    finally:
        setattr(_switches, name, previous)


class set_grad_enabled:
    """Record the graph (True) or not (False), in this thread, as PyTorch's.

    ``with mr.set_grad_enabled(False): ...`` switches for the block and then
    restores the previous mode; a plain call ``mr.set_grad_enabled(False)``
    switches at once and stays (a call that did nothing would leave the user
    recording graphs they meant to turn off); ``@mr.set_grad_enabled(False)``
    decorates a function.
    """

    def __init__(self, mode: bool) -> None:
        self.mode, self.previous = bool(mode), _switches.grad_enabled
        _switches.grad_enabled = self.mode

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        _switches.grad_enabled = self.previous

    def __call__(self, fn: Callable) -> Callable:
        _switches.grad_enabled = self.previous  # decorating switches nothing now

        @functools.wraps(fn)
        def wrapper(*args: object, **kwargs: object) -> object:
            with set_grad_enabled(self.mode):
                return fn(*args, **kwargs)

        return wrapper


def no_grad() -> contextlib.AbstractContextManager:
    """``with mr.no_grad():`` (or ``@mr.no_grad()``): run without recording a graph."""
    return _switched("grad_enabled", False)


def enable_grad() -> contextlib.AbstractContextManager:
    """Record the graph again inside a ``no_grad()`` block."""
    return _switched("grad_enabled", True)


def detect_anomaly() -> contextlib.AbstractContextManager:
    """Inside the block, backward also raises if a saved input's values were overwritten."""
    return _switched("anomaly_enabled", True)
