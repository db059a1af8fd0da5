"""Stopping on request: Ctrl-C (SIGINT) or ``kill`` (SIGTERM) ends a run after its current step.

A signal arriving in the middle of a step would leave the weights half updated.
So, while training, the first signal only *asks* for a stop (the Trainer then
finishes the step, saves a checkpoint of it and returns); a second Ctrl-C
raises KeyboardInterrupt at once, without saving.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def say(text: str) -> None:
    """Write to stderr in a way that is safe inside a signal handler.

    The handler runs between two bytecodes of the main thread, possibly in
    the middle of a print() to stderr (the progress bar's); a second print()
    to the same stream would raise "reentrant call". os.write has no such lock.
    """
    try:
        os.write(sys.stderr.fileno(), text.encode())
    except (OSError, ValueError, AttributeError):  # no file descriptor (e.g. captured)
        print(text, end="", file=sys.stderr, flush=True)


@contextmanager
def deferred_signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    """While inside, SIGINT / SIGTERM call `on_signal` instead of interrupting.

    The first signal only asks for a stop; the handler is then restored to
    Python's default, so a second Ctrl-C raises KeyboardInterrupt at once.
    Signal handlers can only be set from the main thread: elsewhere this does
    nothing (and Ctrl-C behaves as usual).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signums = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    previous = {s: signal.getsignal(s) for s in signums}

    def handler(signum: int, frame: Any) -> None:
        for s in signums:
            signal.signal(s, signal.default_int_handler)
        on_signal(signum)

    for s in signums:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
