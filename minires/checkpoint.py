"""Checkpoints: a nested dict of arrays and plain values, saved atomically to .npz.

    save_checkpoint("runs/a/checkpoint.npz", {"model": model.state_dict(),
                                              "optimizer": opt.state_dict(),
                                              "epoch": 3, ...})
    state = load_checkpoint("runs/a/checkpoint.npz")

Format. One ``.npz`` file (a zip of ``.npy`` arrays, NumPy's own format). Every
array of the tree is one member, named by its path in the tree
("model/layer1.0.conv1.weight", "optimizer/state/0/momentum_buffer"). Every
other value (numbers, strings, booleans, None, lists, nested dicts) goes into
one JSON document stored as the member ``__meta__`` (a uint8 array of its
UTF-8 bytes), where each array appears as ``{"__array__": "<member name>"}``.

Why not pickle: unpickling runs code chosen by whoever wrote the file. A
checkpoint is something people download and share, so it is read here with
``np.load(..., allow_pickle=False)``: only raw numeric arrays and JSON, nothing
that can execute.

What is exact. Arrays keep dtype, shape and every bit. Python floats go
through JSON as their shortest round-tripping repr, so they come back equal
(``float(repr(x)) == x``), NaN and infinities included; Python ints of any
size (a PCG64 generator's 128-bit state) stay exact. Two things change shape:
tuples come back as lists, and dict keys come back as strings (JSON has no
other keys) - ``Optimizer.load_state_dict`` accepts "0" for 0 for that reason.

Why atomic. A run killed while writing must not leave a half-written file in
place of the last good checkpoint. So the file is written under a temporary
name in the same folder, flushed and fsync'ed to the disk, and only then
renamed over the old one with ``os.replace``, which the operating system
performs as one step: a reader sees the old complete file or the new complete
file, never a mixture. (The temporary file must be in the same folder: a
rename across file systems is a copy, and a copy is not atomic.) The
temporary file is created the way ``open(path, "wb")`` creates a file, mode
0o666 less the umask, so the result has the permissions any other new file
would have. A process killed in the middle (kill -9, a power cut) leaves its
temporary file behind, named ``.<name>.<8 characters>.tmp``;
``remove_stale_temp_files`` removes such leftovers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backends.device import is_cupy_array, to_numpy

FORMAT = "minires-checkpoint"
VERSION = 1
_META = "__meta__"

# What reading a damaged zip of .npy files can raise. ValueError also covers
# json.JSONDecodeError and a pickled member refused by allow_pickle=False;
# NotImplementedError and RuntimeError come from zipfile when a flipped bit
# claims a compression method or encryption that the file does not use.
_READ_ERRORS = (
    zipfile.BadZipFile,
    EOFError,
    ValueError,
    OSError,
    KeyError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    zlib.error,
)


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable, corrupt or not a minires checkpoint."""


# --------------------------------------------------------------------------- #
# Tree <-> (JSON document, flat dict of arrays)
# --------------------------------------------------------------------------- #


def _flatten(value: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    """Return the JSON-able form of `value`; move its arrays into `arrays`."""
    if is_cupy_array(value):
        value = to_numpy(value)  # a GPU array: copy to the host first
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError(f"save_checkpoint: {path!r} is an object array, which needs pickle")
        arrays[path] = value
        return {"__array__": path}
    if isinstance(value, np.generic):  # a NumPy scalar: np.float32(0.1), np.int64(3)
        if value.dtype.kind in "biuf":
            # Keep it as a 0-d array so that its dtype survives (an np.float32
            # turned into a Python float would come back as float64).
            arrays[path] = np.asarray(value)
            return {"__array__": path, "scalar": True}
        raise TypeError(f"save_checkpoint: {path!r} has unsupported type {type(value).__name__}")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"save_checkpoint: key {k!r} in {path!r} must be a str or an int")
            key = str(k)
            if "/" in key:
                raise ValueError(f"save_checkpoint: key {key!r} in {path!r} contains '/'")
            out[key] = _flatten(v, f"{path}/{key}" if path else key, arrays)
        return out
    if isinstance(value, (list, tuple)):
        return [_flatten(v, f"{path}/{i}", arrays) for i, v in enumerate(value)]
    raise TypeError(f"save_checkpoint: {path!r} has unsupported type {type(value).__name__}")


def _unflatten(value: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """Inverse of `_flatten`: put the arrays back where the JSON points."""
    if isinstance(value, dict):
        if "__array__" in value:
            name = value["__array__"]
            if name not in arrays:
                raise CheckpointError(f"the index names an array {name!r} that is not in the file")
            arr = arrays[name]
            return arr[()] if value.get("scalar") else arr
        return {k: _unflatten(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_unflatten(v, arrays) for v in value]
    return value


# --------------------------------------------------------------------------- #
# Atomic write
# --------------------------------------------------------------------------- #


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); not possible, nor needed, on Windows."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# A temporary file of atomic_write: "." + the file's name + 8 random
# characters + ".tmp". (Also matches the names that tempfile.mkstemp gave
# before minires created them itself: 8 characters of [a-z0-9_].)
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create a new, empty temporary file next to `path`: (file descriptor, its path).

    os.open with mode 0o666 lets the operating system apply the umask, as for
    any new file (tempfile.mkstemp would make it 0o600 whatever the umask).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # 1 in 4 billion: draw another name
            continue
    raise FileExistsError(f"no free temporary name next to {str(path)!r}")


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(f)`` on a temporary binary file next to `path`, then rename it to `path`.

    If `write` (or anything else) fails, the temporary file is removed and any
    file already at `path` is left exactly as it was.
    """
    path = Path(path)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()  # Python's buffer -> the OS
            os.fsync(f.fileno())  # the OS's cache -> the disk
        os.replace(tmp, path)
    except BaseException:  # also on KeyboardInterrupt: never leave the temp file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def remove_stale_temp_files(folder: str | Path, names: Sequence[str]) -> list[Path]:
    """Remove the temporary files that atomic_write left in `folder` for the files `names`.

    Only a process that died while writing leaves one (an interrupted write
    removes its own), so call this when no other process writes there.
    Other files, however named, are not touched. Returns the removed paths.
    """
    removed = []
    for entry in Path(folder).iterdir():
        match = _TEMP_NAME.fullmatch(entry.name)
        if match and match["name"] in names and entry.is_file() and not entry.is_symlink():
            entry.unlink()
            removed.append(entry)
    return removed


def save_checkpoint(path: str | Path, tree: Mapping[str, Any]) -> None:
    """Save a nested dict of arrays and plain values to `path` (.npz), atomically.

    Leaves may be NumPy (or CuPy) arrays, NumPy scalars, and JSON values
    (None, bool, int, float, str); containers may be dicts (str or int keys,
    without '/') and lists or tuples.
    """
    arrays: dict[str, np.ndarray] = {}
    meta = {"format": FORMAT, "version": VERSION, "tree": _flatten(dict(tree), "", arrays)}
    # allow_nan: float('nan') is written as NaN, which json.loads reads back.
    text = json.dumps(meta, allow_nan=True)
    arrays[_META] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda f: _write_npz(f, arrays))


def _write_npz(f: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """What ``np.savez`` does, spelled out: one ``<name>.npy`` member per array.

    (Written here rather than calling np.savez(f, **arrays) because an array
    named "file" would clash with savez's own argument.)
    """
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)


# --------------------------------------------------------------------------- #
# Load
# --------------------------------------------------------------------------- #


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, without unpickling anything.

    Raises CheckpointError with a readable message when the file is missing,
    truncated, corrupt (every member is checked against its CRC-32), or not a
    minires checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if _META not in npz.files:
                raise CheckpointError(
                    f"{str(path)!r} is an .npz file but not a minires checkpoint (no {_META})"
                )
            # Reading every member to the end makes zipfile verify its CRC-32,
            # so a flipped byte anywhere in the file is caught here.
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(arrays.pop(_META).tobytes().decode("utf-8"))
    except CheckpointError:
        raise
    except MemoryError as e:  # a header that claims an enormous array
        raise CheckpointError(
            f"{str(path)!r} holds an array too large for this machine's memory "
            f"(corrupt, or not meant for it): {e}"
        ) from None
    except _READ_ERRORS as e:
        raise CheckpointError(
            f"{str(path)!r} is not a readable checkpoint (truncated or corrupt?): {e}"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a minires checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format version {meta.get('version')!r}; "
            f"this minires reads version {VERSION}"
        )
    return _unflatten(meta["tree"], arrays)
