"""Numeric options: what each one accepts, said once.

A ``NumberOption`` is both a rule and an argparse type. ``TrainConfig.validate``
asks it whether a value is acceptable (``accepts``); the command lines of
``minires train`` and ``minires bench`` hand it to argparse as ``type=``, so a
bad value on the command line is refused with argparse's own one-line error:

    >>> POSITIVE_INT("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be a positive integer, got '0'
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class NumberOption:
    """A number of type ``kind`` (int or float) for which ``ok(value)`` is True.

    ``what`` describes the accepted values for error messages ("a positive
    integer"). A float option also takes an int; neither takes a bool.
    """

    kind: type
    what: str
    ok: Callable[[Any], bool]

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` (already a Python number) is one this option takes."""
        kinds = (int, float) if self.kind is float else int
        return isinstance(value, kinds) and not isinstance(value, bool) and self.ok(value)

    def __call__(self, text: str) -> Any:
        """Parse command-line ``text``; argparse reports the ArgumentTypeError."""
        try:
            value = self.kind(text)
        except ValueError:
            value = None
        if value is None or not self.ok(value):
            raise argparse.ArgumentTypeError(f"must be {self.what}, got {text!r}")
        return value


POSITIVE_INT = NumberOption(int, "a positive integer", lambda v: v >= 1)
NONNEGATIVE_INT = NumberOption(int, "an integer >= 0", lambda v: v >= 0)
# NumPy's global generator (np.random.seed) takes seeds below 2**32 only.
SEED = NumberOption(int, "an integer in [0, 2**32)", lambda v: 0 <= v < 2**32)
# (NaN fails every comparison, so these refuse it as well as the infinities.)
POSITIVE_FLOAT = NumberOption(float, "a positive number", lambda v: 0 < v < math.inf)
NONNEGATIVE_FLOAT = NumberOption(float, "a number >= 0", lambda v: 0 <= v < math.inf)
FRACTION = NumberOption(float, "a number in [0, 1)", lambda v: 0 <= v < 1)
