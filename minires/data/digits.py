"""The UCI handwritten digits, shipped inside the package.

1,797 grayscale 8x8 images of the digits 0..9 (E. Alpaydin, C. Kaynak,
"Optical Recognition of Handwritten Digits", UCI Machine Learning Repository,
CC BY 4.0; see DIGITS_LICENSE.txt next to this file). They are small enough
(45 kB compressed) to travel with the code, so `minires train` works on a
machine with no network and no downloads.

There is no official train/test split of this copy, so `load_digits` makes
one: stratified (every class keeps its share in both halves) and fixed by a
seed, identical on every machine.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np

NUM_CLASSES = 10
_FILE = "digits.npz"


@functools.lru_cache(maxsize=1)
def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    """The stored arrays: images uint8 (1797, 8, 8) in 0..16, labels int64 (1797,).

    `importlib.resources` finds the file wherever the package is installed
    (a wheel, an editable install, a zip), unlike a path built from the
    current directory.
    """
    with resources.files(__package__).joinpath(_FILE).open("rb") as f:
        with np.load(f) as npz:
            images, labels = npz["images"], npz["labels"]
    # Cached arrays are shared between calls: make them read-only so that no
    # caller can change what the next caller gets.
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices 0..N-1 into (train, test), each class in the same proportion.

    For each class with n members, round(n * test_fraction) of them (but at
    least one, and never all) go to the test set. Which ones is decided by
    sorting uniform random keys drawn from `np.random.default_rng(seed)`:
    `Generator.random` on the default PCG64 bit generator produces the same
    doubles on every platform, so the split is the same everywhere.

    Returns two sorted int64 index arrays that together cover 0..N-1 once.
    """
    labels = np.asarray(labels)
    keys = np.random.default_rng(seed).random(labels.shape[0])
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_test = int(np.floor(members.size * test_fraction + 0.5))  # round half up
        n_test = min(max(n_test, 1), members.size - 1)
        # argsort is stable, and the keys are distinct doubles, so this is a
        # reproducible random subset of the class.
        test.append(members[np.argsort(keys[members], kind="stable")[:n_test]])
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    train_mask = np.ones(labels.shape[0], dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask).astype(np.int64), test_idx


def load_digits(
    split: str = "train", seed: int = 0, test_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """Load the embedded handwritten digits.

    Args:
        split: "train", "test" or "all" (all 1,797 images, in stored order).
        seed: chooses the stratified split; the same seed gives the same split
            on every machine.
        test_fraction: share of each class that goes to the test split, in (0, 1).

    Returns:
        images: float32 (N, 1, 8, 8), the 0..16 counts divided by 16, so in [0, 1].
        labels: int64 (N,), the digit 0..9.

    With the defaults, train has 1,438 images and test 359 (35 to 37 per class).
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"load_digits: split must be 'train', 'test' or 'all', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"load_digits: test_fraction must be strictly between 0 and 1, got {test_fraction!r}"
        )
    raw_images, raw_labels = _load_raw()
    if split == "all":
        idx = np.arange(raw_labels.shape[0])
    else:
        train_idx, test_idx = stratified_split(raw_labels, test_fraction, seed)
        idx = train_idx if split == "train" else test_idx
    # Multiply by a float32 scalar: dividing by the Python int 16 would also
    # stay float32, but this makes the intended dtype explicit.
    images = raw_images[idx].astype(np.float32)[:, None, :, :] * np.float32(1.0 / 16.0)
    return images, raw_labels[idx].copy()
