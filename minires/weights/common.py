"""What the weight readers share: their errors, and the one dtype NumPy lacks.

bfloat16 (Google's "brain float") is float32 with the low 16 bits of the
mantissa cut off: the same sign bit, the same 8-bit exponent, 7 bits of
mantissa. NumPy has no such dtype, so a bfloat16 tensor is read as its raw
16-bit patterns and widened to float32 by putting those bits on top of 16 zero
bits. Every bfloat16 value is a float32 value, so nothing is rounded: the
conversion is exact.
"""

from __future__ import annotations

import pickle

import numpy as np


class WeightsError(ValueError):
    """A weights file is unreadable, corrupt, or holds something minires will not read.

    The message names the file.
    """


class UnsafePickleError(WeightsError, pickle.UnpicklingError):
    """A ``.pth`` file's pickle asks for something outside the allow-list.

    Raised before the thing it names is looked up, let alone called: reading
    the file runs no code chosen by whoever wrote it.
    """


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 numbers given as uint16 bit patterns (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)
