"""Read the files ``torch.save`` writes (.pth, .pt), without PyTorch and without running code.

The zip format (PyTorch 1.6 and later, the default). A zip archive whose
members all sit in one folder, named after the file (``resnet18/``) or
``archive/``::

    archive/data.pkl        the pickled object (a dict of tensors, a checkpoint...)
    archive/data/0          the raw bytes of storage "0", in the file's byte order
    archive/data/1          ...
    archive/byteorder       b"little" or b"big" (missing: little)
    archive/version         the format's version, and other bookkeeping

Each tensor in ``data.pkl`` names its storage by key; the storage is read
from ``data/<key>`` when the pickle first asks for it.

The legacy format (``torch.save(..., _use_new_zipfile_serialization=False)``,
and every file from PyTorch before 1.6, e.g. older model-zoo weights). Five
pickles one after the other, then the storages back to back::

    magic number, protocol version, system info (byte order),
    the object, the list of storage keys,
    for each key in that list: its element count (int64) and its bytes

The storages come after the object, and only the object says what dtype each
has (so how many bytes to skip). So the object is unpickled twice: once to
learn the dtypes (no tensor is built), and again, after the storages have been
read, to build it. Both passes go through the same restricted unpickler.

The oldest format, a tar archive (early PyTorch versions), is refused with a
message: load it with PyTorch once and save it again.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .common import WeightsError
from .restricted_pickle import RestrictedUnpickler

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# What a damaged file can raise while it is read; each becomes a WeightsError
# naming the file. (WeightsError itself is a ValueError, and passes through.)
_READ_ERRORS = (
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    UnicodeDecodeError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    zlib.error,
)


def load_pth(path: str | Path) -> Any:
    """What ``torch.load(path)`` would return, with every tensor as a NumPy array.

    Dicts (and OrderedDicts), lists, tuples, numbers, strings and None come back
    as they are; each tensor or Parameter becomes a new C-contiguous array of
    its dtype (bfloat16 becomes float32, exactly: NumPy has no bfloat16).
    Raises ``UnsafePickleError`` naming the first thing outside the allow-list
    (nothing is run), and ``WeightsError`` for a corrupt or unsupported file.
    """
    path = Path(path)
    with open(path, "rb") as f:  # FileNotFoundError names the file
        head = f.read(512)
        f.seek(0)
        try:
            if head[:4] == b"PK\x03\x04":  # a zip's first local header, as torch checks
                return _load_zip(f, str(path))
            if head[:1] == b"\x80":  # a pickle's PROTO opcode: the legacy format
                return _load_legacy(f, str(path))
        except WeightsError:
            raise
        except _READ_ERRORS as e:
            raise WeightsError(
                f"{path}: not a readable torch.save file (truncated or corrupt?): "
                f"{type(e).__name__}: {e}"
            ) from None
    if head[257:262] == b"ustar":
        raise WeightsError(
            f"{path}: the tar format of early PyTorch versions, which minires does not read: "
            "load it with PyTorch and torch.save it again"
        )
    raise WeightsError(f"{path}: not a file written by torch.save (neither a zip nor a pickle)")


def _load_zip(f: Any, path: str) -> Any:
    with zipfile.ZipFile(f) as archive:
        names = set(archive.namelist())
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise WeightsError(f"{path}: a zip file, but not one written by torch.save")
        folder = pickles[0][: -len("data.pkl")]
        if folder + "constants.pkl" in names:
            raise WeightsError(
                f"{path}: a TorchScript archive (torch.jit.save), not a torch.save file: "
                "save the model's state_dict() with torch.save and read that"
            )
        byteorder = _zip_byteorder(archive, folder, path)

        def read_storage(key: str, element: np.dtype, numel: int) -> np.ndarray:
            member = f"{folder}data/{key}"
            if member not in names:
                raise WeightsError(f"{path}: storage {key!r} is missing from the archive")
            nbytes = archive.getinfo(member).file_size
            if nbytes != numel * element.itemsize:
                raise WeightsError(
                    f"{path}: storage {key!r} holds {nbytes} bytes, "
                    f"not {numel} elements of {element.itemsize} bytes"
                )
            return np.frombuffer(archive.read(member), dtype=element)  # read checks the CRC

        data = io.BytesIO(archive.read(pickles[0]))
        return _unpickle_all(data, path, read_storage, byteorder)


def _zip_byteorder(archive: zipfile.ZipFile, folder: str, path: str) -> str:
    if folder + "byteorder" not in archive.namelist():
        return "<"  # files from before the record existed are little-endian, as torch assumes
    order = archive.read(folder + "byteorder")
    if order not in (b"little", b"big"):
        raise WeightsError(f"{path}: unknown byte order {order[:20]!r}")
    return "<" if order == b"little" else ">"


def _unpickle_all(f: Any, path: str, read_storage: Any, byteorder: str) -> Any:
    """Unpickle the object; anything after its STOP means the file is not what it seems."""
    obj = RestrictedUnpickler(f, path, read_storage, byteorder).load()
    if f.read(1):
        raise WeightsError(f"{path}: data after the end of the pickle")
    return obj


def _load_legacy(f: Any, path: str) -> Any:
    def no_storage(key: str, element: np.dtype, numel: int) -> None:
        raise WeightsError(f"{path}: a storage where the legacy header has none")

    def header() -> Any:
        return RestrictedUnpickler(f, path, no_storage, "<").load()

    if header() != LEGACY_MAGIC or header() != LEGACY_PROTOCOL:
        raise WeightsError(f"{path}: a pickle, but not a file written by torch.save")
    info = header()
    if not isinstance(info, dict) or not isinstance(info.get("little_endian"), bool):
        raise WeightsError(f"{path}: malformed system information in the legacy header")
    byteorder = "<" if info["little_endian"] else ">"

    # Pass 1: learn each storage's dtype (and skip past the object).
    start = f.tell()
    elements: dict[str, tuple[np.dtype, int]] = {}

    def note(key: str, element: np.dtype, numel: int) -> None:
        elements[key] = (element, numel)

    RestrictedUnpickler(f, path, note, byteorder).load()
    keys = header()
    if not (
        isinstance(keys, list)
        and all(isinstance(k, str) for k in keys)
        and sorted(keys) == sorted(elements)
    ):
        raise WeightsError(f"{path}: the storage list does not match the object's storages")

    storages: dict[str, np.ndarray] = {}
    for key in keys:
        element, numel = elements[key]
        (count,) = struct.unpack(byteorder + "q", _read_exactly(f, 8, path))
        if count != numel:
            raise WeightsError(f"{path}: storage {key!r} has {count} elements, not {numel}")
        storages[key] = np.frombuffer(_read_exactly(f, numel * element.itemsize, path), element)
    if f.read(1):
        raise WeightsError(f"{path}: data after the last storage")

    # Pass 2: build the object, tensors and all.
    f.seek(start)
    return RestrictedUnpickler(f, path, lambda key, *_: storages[key], byteorder).load()


def _read_exactly(f: Any, n: int, path: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise WeightsError(f"{path}: truncated: a storage ends {n - len(data)} bytes early")
    return data
