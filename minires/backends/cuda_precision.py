"""TF32 on the GPU: whether CuPy's float32 matrix products may use it, and choosing.

On NVIDIA GPUs of compute capability 8.0 and later (Ampere on), cuBLAS can
run a float32 matrix product on tensor cores in TF32: the inputs rounded to
a 10-bit mantissa (float32 has 23), the sums kept in float32. It is several
times faster and about 1e-3 less precise. minires's convolutions and linear
layers are cuBLAS products, so the choice decides their precision.

CuPy chooses once per process, at its first float32 product: TF32 when the
environment variable ``CUPY_TF32`` is set to a number > 0, plain FP32
otherwise; it keeps the answer as the float32 "compute type" of
``cupy._core._routines_linalg`` (``get_compute_type`` /
``set_compute_type``), where this module reads and changes it. (CuPy's own
``set_compute_type`` keeps FP32 on a GPU without TF32, with a warning.)
PyTorch has its own two switches (``torch.backends.cuda.matmul.allow_tf32``,
``torch.backends.cudnn.allow_tf32``); ``minires bench`` sets all three alike.
"""

from __future__ import annotations

import warnings

import numpy as np

# CuPy's compute types (cupy/_core/_routines_linalg.pyx, compute_type_str).
COMPUTE_TYPE_DEFAULT = 1
COMPUTE_TYPE_TF32 = 7


def _linalg():
    from cupy._core import _routines_linalg

    return _routines_linalg


def tf32_enabled() -> bool:
    """True when CuPy's float32 matrix products may use TF32 (decided now if not yet)."""
    return int(_linalg().get_compute_type(np.float32)) == COMPUTE_TYPE_TF32


def set_tf32(enabled: bool) -> bool:
    """Allow (or forbid) TF32 in CuPy's float32 matrix products; returns whether it now is.

    Asking for TF32 on a GPU without it leaves FP32 (and returns False).
    """
    compute_type = COMPUTE_TYPE_TF32 if enabled else COMPUTE_TYPE_DEFAULT
    with warnings.catch_warnings():  # "only available on ... 8.0 or higher": the result says so
        warnings.simplefilter("ignore", UserWarning)
        _linalg().set_compute_type(np.float32, compute_type)
    return tf32_enabled()
