"""Mini-batches and data augmentation, vectorised over the batch.

    loader = DataLoader(images, labels, batch_size=128, shuffle=True, seed=0,
                        transform=Compose([RandomCrop(padding=4),
                                           RandomHorizontalFlip(),
                                           Normalize(mean, std)]))
    for epoch in range(epochs):
        for x, y in loader:      # x float32 (B, C, H, W), y int64 (B,)
            ...

Randomness is a pure function of (seed, epoch, batch): the shuffle of epoch e
comes from `np.random.default_rng([seed, 0, e])` and the augmentation of its
batch b from `np.random.default_rng([seed, 1, e, b])`. So the loader's whole
state is three integers (`state_dict()`), and a run resumed from a checkpoint,
even in the middle of an epoch, sees exactly the batches the uninterrupted run
would have seen.

Transforms are callables `transform(x, rng) -> x` on a whole batch
(N, C, H, W). They are PyTorch's transforms in spirit (same names), but each
call handles a batch with one set of array operations instead of one image at
a time in Python.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _check_batch(fn: str, x: np.ndarray) -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        shape = getattr(x, "shape", type(x).__name__)
        raise ValueError(f"{fn}: expected an array of shape (N, C, H, W), got {shape}")


# --------------------------------------------------------------------------- #
# Functional forms
# --------------------------------------------------------------------------- #


def random_crop(x: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Pad each image with `padding` zeros on every side, then crop back to H x W
    at a random offset (one offset per image), as in He et al. 2016 for CIFAR.

    x: (N, C, H, W). Returns a new array of the same shape and dtype.

    Vectorised: `sliding_window_view` views the padded batch as every possible
    H x W window, shape (N, C, 2p+1, 2p+1, H, W), without copying; indexing it
    with one (row, column) offset per image picks all N crops in a single
    gather.
    """
    _check_batch("random_crop", x)
    if padding < 0:
        raise ValueError(f"random_crop: padding must be >= 0, got {padding}")
    if padding == 0:
        return x.copy()
    n, _, h, w = x.shape
    p = padding
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))  # zeros
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))
    dy = rng.integers(0, 2 * p + 1, size=n)
    dx = rng.integers(0, 2 * p + 1, size=n)
    # Advanced indices on axes 0, 2, 3 (split by the slice on axis 1) broadcast
    # to (N,) and NumPy puts that axis first: the result is (N, C, H, W).
    return windows[np.arange(n), :, dy, dx]


def random_horizontal_flip(x: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Mirror each image left-right with probability `p`. x: (N, C, H, W)."""
    _check_batch("random_horizontal_flip", x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"random_horizontal_flip: p must be in [0, 1], got {p}")
    flip = rng.random(x.shape[0]) < p
    out = x.copy()
    out[flip] = x[flip, :, :, ::-1]
    return out


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of a data set (N, C, H, W).

    Returns (mean, std), each float32 (C,). Sums are accumulated in float64 a
    chunk of images at a time: accurate for 50,000 CIFAR images without ever
    making a float64 copy of the whole set. std is the population one (ddof=0),
    as `images.std(axis=(0, 2, 3))` would give.
    """
    _check_batch("channel_stats", images)
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError("channel_stats: need at least one image, got N = 0")
    count = n * h * w
    total = np.zeros(c)
    for i in range(0, n, chunk):
        total += images[i : i + chunk].sum(axis=(0, 2, 3), dtype=np.float64)
    mean = total / count
    # Second pass on deviations from the mean (not E[x^2] - E[x]^2, which
    # cancels badly when the spread is small next to the mean).
    sq = np.zeros(c)
    for i in range(0, n, chunk):
        d = images[i : i + chunk].astype(np.float64) - mean[None, :, None, None]
        sq += np.einsum("nchw,nchw->c", d, d)
    std = np.sqrt(sq / count)
    return mean.astype(np.float32), std.astype(np.float32)


def normalize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(x - mean) / std per channel. x: (N, C, H, W); mean, std: (C,).

    Returns a new array: float32 for float32 or integer (uint8) input; a
    float64 batch stays float64.
    """
    _check_batch("normalize", x)
    mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    if mean.shape[1] != x.shape[1] or std.shape[1] != x.shape[1]:
        raise ValueError(
            f"normalize: mean and std need one value per channel ({x.shape[1]}), "
            f"got {mean.shape[1]} and {std.shape[1]}"
        )
    if np.any(std <= 0):
        raise ValueError(f"normalize: std must be > 0, got {std.ravel().tolist()}")
    # float32 mean/std: a float32 batch stays float32 (float64 statistics
    # would promote it); a uint8 batch is promoted to float32.
    return (x - mean) / std


# --------------------------------------------------------------------------- #
# Transform objects (PyTorch's names), each `t(x, rng) -> x` on a batch
# --------------------------------------------------------------------------- #


class RandomCrop:
    """Zero-pad by `padding` and crop back to the input size at random offsets."""

    def __init__(self, padding: int = 4) -> None:
        if padding < 0:
            raise ValueError(f"RandomCrop: padding must be >= 0, got {padding}")
        self.padding = padding

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return random_crop(x, self.padding, rng)

    def __repr__(self) -> str:
        return f"RandomCrop(padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability p."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return random_horizontal_flip(x, rng, self.p)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """Subtract a per-channel mean and divide by a per-channel std (see channel_stats)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = np.asarray(mean, dtype=np.float32).ravel()
        self.std = np.asarray(std, dtype=np.float32).ravel()

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return normalize(x, self.mean, self.std)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class Compose:
    """Apply transforms one after the other, all with the same generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


def cifar_augment(mean: Sequence[float], std: Sequence[float]) -> Compose:
    """The CIFAR-10 training augmentation of He et al. 2016: pad 4, random
    32x32 crop, random horizontal flip, then per-channel normalisation."""
    return Compose([RandomCrop(padding=4), RandomHorizontalFlip(p=0.5), Normalize(mean, std)])


# --------------------------------------------------------------------------- #
# The loader
# --------------------------------------------------------------------------- #


class DataLoader:
    """Iterate over (images, labels) in mini-batches.

    Args:
        images: (N, C, H, W) array; labels: (N,) array.
        batch_size: images per batch.
        shuffle: a new random order every epoch (else the stored order).
        drop_last: skip the last batch if it is smaller than batch_size.
        seed: fixes the shuffles and the augmentation (see the module docstring).
        transform: `transform(x, rng) -> x`, applied to each image batch.

    Each pass (`for x, y in loader`) runs one epoch from the loader's current
    position and then moves on to the next epoch. A pass that is stopped early
    leaves the position where it stopped (that is what makes a mid-epoch
    checkpoint resumable); call `set_epoch` to start an epoch from its first
    batch.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int = 128,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        transform: Transform | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(
                f"DataLoader: images and labels must have the same length, "
                f"got {len(images)} and {len(labels)}"
            )
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be an int >= 1, got {batch_size!r}")
        self.images = images
        self.labels = labels
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.transform = transform
        self.epoch = 0  # the epoch being (or about to be) iterated
        self.batch = 0  # index of the next batch within that epoch

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The sample indices of `epoch`, in the order they are served."""
        n = len(self.labels)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, 0, epoch]).permutation(n)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch, start = self.epoch, self.batch
        order = self.order(epoch)
        n_batches = len(self)
        for b in range(start, n_batches):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x, y = self.images[idx], self.labels[idx]
            if self.transform is not None:
                x = self.transform(x, np.random.default_rng([self.seed, 1, epoch, b]))
            # Move the position before handing the batch out, so that a state_dict
            # taken while the caller works on batch b resumes at batch b + 1.
            if b + 1 == n_batches:
                self.epoch, self.batch = epoch + 1, 0
            else:
                self.batch = b + 1
            yield x, y
        if start >= n_batches:  # an epoch with no batches still counts as an epoch
            self.epoch, self.batch = epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass run `epoch` from its first batch."""
        self.epoch, self.batch = int(epoch), 0

    def state_dict(self) -> dict[str, int]:
        """The loader's position: everything needed to resume it exactly."""
        return {"seed": int(self.seed), "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        missing = {"seed", "epoch", "batch"} - set(state)
        if missing:
            raise KeyError(f"DataLoader.load_state_dict: missing keys {sorted(missing)}")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.batch = int(state["batch"])
