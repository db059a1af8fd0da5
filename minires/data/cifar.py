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
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

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


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled CIFAR-10 batch file.

    Returns images uint8 (N, 3, 32, 32) and labels int64 (N,), in file order.
    """
    path = Path(path)
    with open(path, "rb") as f:
        # The files were pickled by Python 2: encoding="bytes" keeps the keys
        # as byte strings (b"data") instead of failing to decode them.
        batch = pickle.load(f, encoding="bytes")
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DatasetFormatError(
            f"load_cifar10: {str(path)!r} should be a pickled dict with keys "
            f"b'data' and b'labels', got {keys}"
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(
            f"load_cifar10: {str(path)!r}: b'data' should be uint8 of shape (N, 3072), "
            f"got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],):
        raise DatasetFormatError(
            f"load_cifar10: {str(path)!r}: expected {data.shape[0]} labels, "
            f"got shape {labels.shape}"
        )
    # Row layout is channel-major (all red, all green, all blue), so a plain
    # reshape gives NCHW with no transpose.
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10_classes(data_dir: str | Path) -> list[str]:
    """The ten class names from `batches.meta` ("airplane", ..., "truck")."""
    with open(find_cifar10_dir(data_dir) / META_FILE, "rb") as f:
        meta = pickle.load(f, encoding="bytes")
    return [name.decode() if isinstance(name, bytes) else name for name in meta[b"label_names"]]


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
