"""safetensors files: a JSON header (name -> dtype, shape, byte range) and raw bytes.

The format (Hugging Face's) holds nothing but arrays and string metadata, so
reading one runs no code by construction. The well-kept ``safetensors``
package parses and checks it; here is only what minires adds: arrays from a
Module or from the GPU, an atomic write, and bfloat16 (which NumPy lacks)
widened to float32 exactly. ``safetensors`` is imported when a function here
is first called, so ``import minires`` still needs NumPy alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..autograd import Tensor
from ..backends.device import is_array, to_numpy
from ..checkpoint import atomic_write
from .common import WeightsError, bfloat16_bits_to_float32

# safetensors' dtype names -> NumPy (the format is little-endian).
_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",  # bit patterns, widened to float32 below
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
    "C64": "<c8",
}
_SAVABLE = {np.dtype(code).newbyteorder("=") for name, code in _DTYPES.items() if name != "BF16"}


def _safetensors() -> Any:
    try:
        import safetensors
        import safetensors.numpy
    except ImportError:
        raise ImportError(
            "reading and writing .safetensors files needs the safetensors package: "
            'pip install safetensors (or pip install "minires[io]")'
        ) from None
    return safetensors


def host_state_dict(obj: Any, op: str) -> dict[str, np.ndarray]:
    """``obj`` (a Module, or a mapping of names to arrays or Tensors) as host arrays."""
    if callable(getattr(obj, "state_dict", None)):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise TypeError(f"{op}: expected a Module or a dict of arrays, got {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(name, str):
            raise TypeError(f"{op}: keys must be strings, got {name!r}")
        value = value.data if isinstance(value, Tensor) else value
        if not is_array(value):
            raise TypeError(f"{op}: {name!r} is a {type(value).__name__}, not an array")
        value = to_numpy(value)  # a GPU array is copied to the host
        native = value.dtype.newbyteorder("=")
        if native not in _SAVABLE:
            raise TypeError(f"{op}: {name!r} has dtype {value.dtype}, which safetensors lacks")
        # (not np.ascontiguousarray, which turns a 0-d array such as BatchNorm's
        # num_batches_tracked into shape (1,))
        out[name] = np.asarray(value, dtype=native, order="C")
    return out


def save_safetensors(obj: Any, path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write a Module's ``state_dict()`` (or a dict of arrays) to a .safetensors file.

    Written atomically: under a temporary name in the same folder, then renamed,
    so a crash leaves the old file or the new one, never half of one.
    ``metadata``: optional str -> str pairs stored in the header.
    """
    arrays = host_state_dict(obj, "save_safetensors")
    if metadata is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise TypeError("save_safetensors: metadata must map strings to strings")
    data = _safetensors().numpy.save(arrays, metadata=None if metadata is None else dict(metadata))
    atomic_write(path, lambda f: f.write(data))


def load_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a .safetensors file, by name, in the file's order.

    bfloat16 tensors come back as float32 (exactly: every bfloat16 is a
    float32). 8-bit float types, which NumPy lacks, are refused by name.
    """
    st = _safetensors()
    data = Path(path).read_bytes()  # FileNotFoundError names the file
    try:
        tensors = st.deserialize(data)
    except st.SafetensorError as e:
        raise WeightsError(f"{path}: not a readable safetensors file: {e}") from None
    out: dict[str, np.ndarray] = {}
    for name, info in tensors:
        code = _DTYPES.get(info["dtype"])
        if code is None:
            raise WeightsError(
                f"{path}: tensor {name!r} has dtype {info['dtype']}, which NumPy lacks"
            )
        array = np.frombuffer(info["data"], dtype=code).reshape(info["shape"])
        array = array.astype(np.dtype(code).newbyteorder("="))  # a copy, native byte order
        out[name] = bfloat16_bits_to_float32(array) if info["dtype"] == "BF16" else array
    return out
