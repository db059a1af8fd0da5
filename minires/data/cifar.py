"""Reader for CIFAR-10 in its standard Python format (`cifar-10-batches-py`).

The folder that https://www.cs.toronto.edu/~kriz/cifar.html distributes as
`cifar-10-python.tar.gz` holds six pickled batches and a metadata file:

    cifar-10-batches-py/
        data_batch_1 ... data_batch_5   10,000 training images each
        test_batch                      10,000 test images
        batches.meta                    the class names

Each batch is a pickled dict with (byte-string) keys
    b"data":   uint8 array (10000, 3072), one image per row: the 1024 red
               values, then the 1024 green, then the 1024 blue, each plane
               stored row by row, so a row reshapes directly to (3, 32, 32);
    b"labels": list of 10,000 ints in 0..9.

Nothing here downloads anything: you fetch and unpack the archive yourself,
then point `load_cifar10` at the folder (or at the folder that contains it).

Reading a pickle safely. `pickle.load` runs whatever the file asks for: a
pickle names functions ("globals", e.g. `os.system`) and calls them, so a
doctored `data_batch_1` would run its command as soon as training starts.
Here every global a file names goes through `_SafeUnpickler.find_class`, which
hands out only the few objects that a CIFAR-10 batch needs (the `_ALLOWED`
table below) and refuses anything else before it is imported or called. A
restricted unpickler rather than a parser of our own: the batches are
ordinary pickles, and Python's own unpickler reads every protocol that
Python 2 and 3 write, so the one thing to get right is this short table.
After loading, `read_batch` checks the keys, the data's dtype and shape, and
every label, so a damaged file fails here, naming the file, and not halfway
through training.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

try:  # NumPy 2 names the package numpy._core; NumPy 1 numpy.core.
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # NumPy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"


class DataError(Exception):
    """Base class for problems with a data set on disk."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """The data set's folder or one of its files is missing.

    It is also a FileNotFoundError, so `except FileNotFoundError` catches it.
    """


class DatasetFormatError(DataError, ValueError):
    """A data set file exists but does not hold what the format promises."""


def find_cifar10_dir(data_dir: str | Path) -> Path:
    """Return the `cifar-10-batches-py` folder: `data_dir` itself or its child.

    Raises DatasetNotFoundError naming every file that is expected and absent.
    """
    data_dir = Path(data_dir).expanduser()
    expected = (*TRAIN_FILES, *TEST_FILES, META_FILE)
    candidates = [data_dir, data_dir / FOLDER]
    for folder in candidates:
        if all((folder / name).is_file() for name in expected):
            return folder
    # Report against the candidate that holds more of the files, so the message
    # points at what is actually missing rather than at a wrong folder.
    best = max(candidates, key=lambda d: sum((d / n).is_file() for n in expected))
    missing = [n for n in expected if not (best / n).is_file()]
    raise DatasetNotFoundError(
        f"load_cifar10: no complete CIFAR-10 folder at {str(data_dir)!r}. Expected "
        f"{FOLDER}/ (or the folder itself) with files {', '.join(expected)}; "
        f"in {str(best)!r} these are missing: {', '.join(missing)}. Download "
        "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
        "and unpack it (minires never downloads data itself)."
    )


def _latin1(text, encoding):
    """Stands in for `_codecs.encode`, which Python 3 uses to pickle bytes at
    protocols 0-2 (`encode("batch_label", "latin1")`); nothing else."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _empty_bytes():
    """Stands in for `bytes`, which Python 3 uses to pickle b"" at protocols 0-2."""
    return b""


# The only globals a CIFAR-10 batch may name, and what each one becomes.
_ALLOWED = {
    # A numpy array (b"data") is pickled as _reconstruct(ndarray, (0,), b"b")
    # followed by its dtype and raw bytes. Python 2 and NumPy 1 write the
    # module as numpy.core.multiarray, NumPy 2 as numpy._core.multiarray.
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Pickle protocol 5 (the default from Python 3.14) stores an array as
    # _frombuffer(raw bytes, dtype, shape, order) instead: np.frombuffer and
    # a reshape (NumPy refuses object dtypes there, so no pointers are read).
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    # Bytes written by Python 3 at protocols 0-2 (Python 2 and protocols 3+
    # store bytes directly, with no global). Restricted stand-ins, not the
    # real functions.
    ("_codecs", "encode"): _latin1,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that can build only what `_ALLOWED` lists."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"it names {module}.{name}, which a CIFAR-10 file never contains "
                "(refused: nothing was imported or run)"
            ) from None


def _unpickle(path: Path):
    """Unpickle `path` with `_SafeUnpickler`; any failure is a DatasetFormatError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetNotFoundError(f"load_cifar10: {str(path)!r} does not exist") from None
    except OSError as e:  # no permission, an I/O error, a folder in its place
        raise DataError(f"load_cifar10: cannot read {str(path)!r}: {e.strerror or e}") from None
    try:
        # The files were pickled by Python 2: encoding="bytes" keeps the keys
        # as byte strings (b"data") instead of failing to decode them.
        return _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # a truncated or damaged pickle fails in many ways
        raise DatasetFormatError(
            f"load_cifar10: {str(path)!r} is not a readable CIFAR-10 pickle: "
            f"{type(e).__name__}: {e}"
        ) from None


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled CIFAR-10 batch file.

    Returns images uint8 (N, 3, 32, 32) and labels int64 (N,), in file order.
    Raises DatasetFormatError, naming the file, if it is not a valid batch.
    """
    path = Path(path)
    batch = _unpickle(path)

    def bad(what: str) -> DatasetFormatError:
        return DatasetFormatError(f"load_cifar10: {str(path)!r}: {what}")

    if not isinstance(batch, dict):
        got = type(batch).__name__
        raise bad(f"should be a pickled dict with keys b'data' and b'labels', got a {got}")
    missing = [repr(key) for key in (b"data", b"labels") if key not in batch]
    if missing:
        keys = ", ".join(sorted(map(repr, batch))) or "none"
        raise bad(
            f"should be a pickled dict with keys b'data' and b'labels'; "
            f"{' and '.join(missing)} missing (keys: {keys})"
        )
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (3072,):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise bad(f"b'data' should be uint8 of shape (N, 3072), got {got}")
    try:
        labels = np.asarray(batch[b"labels"])
    except (ValueError, OverflowError) as e:  # e.g. a ragged list
        raise bad(f"b'labels' is not a list of integers ({e})") from None
    if labels.dtype.kind not in "iu" or labels.shape != (data.shape[0],):
        raise bad(
            f"b'labels' should be {data.shape[0]} integers (one per row of b'data'), "
            f"got {labels.dtype} of shape {labels.shape}"
        )
    wrong = np.flatnonzero((labels < 0) | (labels > 9))
    if wrong.size:
        i = wrong[0]
        raise bad(f"label {labels[i]} at index {i} is outside 0..9 ({wrong.size} such labels)")
    # Row layout is channel-major (all red, all green, all blue), so a plain
    # reshape gives NCHW with no transpose.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10_classes(data_dir: str | Path) -> list[str]:
    """The ten class names from `batches.meta` ("airplane", ..., "truck")."""
    path = find_cifar10_dir(data_dir) / META_FILE
    meta = _unpickle(path)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if (
        not isinstance(names, list)
        or len(names) != 10
        or not all(isinstance(n, (bytes, str)) for n in names)
    ):
        raise DatasetFormatError(
            f"load_cifar10: {str(path)!r} should be a pickled dict whose b'label_names' "
            "is a list of ten class names"
        )
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def load_cifar10(
    data_dir: str | Path, split: str = "train", dtype: type | str = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 from a `cifar-10-batches-py` folder.

    Args:
        data_dir: the `cifar-10-batches-py` folder, or the folder containing it.
        split: "train" (data_batch_1..5, 50,000 images, in that order) or
            "test" (test_batch, 10,000 images).
        dtype: np.float32 (default): pixel values divided by 255, in [0, 1];
            np.uint8: the raw bytes 0..255 (a quarter of the memory: 150 MB
            instead of 600 MB for the training set). The loader's transforms
            accept uint8 batches and `Normalize` returns float32, so a uint8
            set can be kept in memory and converted a batch at a time; take
            its `channel_stats` on the same uint8 images (0..255 scale).

    Returns:
        images: (N, 3, 32, 32) of `dtype`, channels in RGB order.
        labels: int64 (N,), class indices 0..9.

    Raises:
        DatasetNotFoundError (a FileNotFoundError) when the folder or any of
        its seven files is missing; DatasetFormatError when a file is not a
        CIFAR-10 batch.
    """
    if split not in ("train", "test"):
        raise ValueError(f"load_cifar10: split must be 'train' or 'test', got {split!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.uint8)):
        raise ValueError(f"load_cifar10: dtype must be float32 or uint8, got {dtype}")
    folder = find_cifar10_dir(data_dir)
    files = TRAIN_FILES if split == "train" else TEST_FILES
    batches = [read_batch(folder / name) for name in files]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    if dtype == np.uint8:
        return images, labels
    out = images.astype(np.float32)
    # In place (no second 600 MB array), and a true division so the values
    # equal torchvision's ToTensor() bit for bit.
    out /= np.float32(255.0)
    return out, labels
