"""Parameter initialisation, and the random generator layers draw from.

``minires.manual_seed(s)`` makes model creation reproducible, like
``torch.manual_seed``. Inside ``with skip_init():`` layers get uninitialised
weights instead, for building a model only to read its shapes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

_generator = np.random.default_rng(0)
_skip = False


def manual_seed(seed: int) -> None:
    """Reset the generator that every layer's initialisation draws from."""
    global _generator
    _generator = np.random.default_rng(seed)


def get_generator() -> np.random.Generator:
    return _generator


@contextmanager
def skip_init() -> Iterator[None]:
    """Within the block, ``uniform`` and ``kaiming_normal`` return uninitialised
    arrays (``np.empty``) and draw nothing from the generator.

    For building a model only to read its shapes and parameter count (as
    ``minires models`` does): drawing the 127M random numbers of a
    wide_resnet101_2 takes seconds, while ``np.empty`` only reserves memory
    that is never touched. The values are garbage; never train such a model.
    Like PyTorch's ``torch.nn.utils.skip_init``, or building on the "meta" device.
    """
    global _skip
    outer, _skip = _skip, True
    try:
        yield
    finally:
        _skip = outer


def uniform(shape: tuple[int, ...], bound: float, dtype=np.float32) -> np.ndarray:
    """U(-bound, bound), drawn in float64 and stored in ``dtype``."""
    if _skip:
        return np.empty(shape, dtype)
    return _generator.uniform(-bound, bound, size=shape).astype(dtype)


def kaiming_normal(shape: tuple[int, ...], fan: int, dtype=np.float32) -> np.ndarray:
    """N(0, 2 / fan): He et al. 2015, keeps activation variance through ReLUs."""
    if _skip:
        return np.empty(shape, dtype)
    return (_generator.standard_normal(shape) * math.sqrt(2.0 / fan)).astype(dtype)


def fan_in_and_out(shape: tuple[int, ...]) -> tuple[int, int]:
    """For a conv weight (C_out, C_in, kh, kw): fan_in = C_in*kh*kw, fan_out = C_out*kh*kw."""
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive
