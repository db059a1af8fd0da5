"""A procedural image data set with CIFAR-10's shape, of any size.

Each image is a patch of oriented stripes (a grating under a soft round
window) on a coloured background, plus an unrelated coloured blob and pixel
noise. The class is set by two things together:

    orientation of the stripes: one of ceil(K / 2) angles, spread over 180°
    colour of the stripes:      warm (orange) or cool (blue)

For K = 10 that is 5 angles x 2 colours. Everything else is random: the exact
angle (jittered, so neighbouring classes overlap a little), stripe frequency
and phase, where the window sits (a random shift), its size and contrast, the
background, the blob, the noise. A small convnet learns it well above chance
within an epoch but does not get everything right: the jitter makes some
images truly ambiguous.

Generation is vectorised over a chunk of images (no per-pixel or per-image
Python loop) and deterministic: chunk k of the data set is drawn from
`np.random.default_rng([seed, k])`, so `make_procedural(n)` is a prefix of
`make_procedural(m)` for n < m with the same seed, and 10,000 images take a
fraction of a second.

`make_small_procedural` draws the same ten classes for small images (8x8 by
default, for CPU-sized experiments such as tutorial 6). The recipe is the
same; its scales are not: at 8 pixels the 32x32 recipe's stripes (2.5 to 5
cycles across the image, a period of 1.6 to 3.2 pixels, under a window one
or two pixels wide) are barely legible, and a resnet-20 trained for 400
steps stays near 80% error on them. Here the stripes run 2 to 3.2 cycles
across the image (a period of 2.5 to 4 pixels at 8x8) under a window half
the image wide, with stronger contrast and less pixel noise. The
orientation jitter is a little smaller (0.25 of the angle between classes,
against 0.3) but still makes some images ambiguous: at 8x8 a hand-made
detector reads 96% of the classes, and no net reaches zero test error.
"""

from __future__ import annotations

import dataclasses

import numpy as np

_CHUNK = 1024  # images drawn per random generator; fixed, so results don't depend on n

# Stripe colours (RGB) of the two colour groups, before per-image jitter.
_PALETTE = np.array([[0.95, 0.45, 0.10], [0.10, 0.45, 0.95]], dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class _Recipe:
    """The random ranges of one image, in units of the image size."""

    freq: tuple[float, float]  # stripe cycles across the image
    radius: tuple[float, float]  # radius of the round window
    contrast: tuple[float, float]  # stripe amplitude
    blob_radius: tuple[float, float]  # radius of the distracting blob
    noise: float  # standard deviation of the pixel noise
    jitter: float  # standard deviation of the angle, in units of the angle between classes


# make_procedural: CIFAR-sized images (32x32).
_CIFAR = _Recipe(
    freq=(2.5, 5.0),
    radius=(0.18, 0.32),
    contrast=(0.15, 0.45),
    blob_radius=(0.05, 0.12),
    noise=0.1,
    jitter=0.3,
)
# make_small_procedural: coarser stripes, a bigger window, for 8x8 to 16x16 images.
_SMALL = _Recipe(
    freq=(2.0, 3.2),
    radius=(0.3, 0.5),
    contrast=(0.5, 0.9),
    blob_radius=(0.08, 0.15),
    noise=0.05,
    jitter=0.25,
)


def _make_chunk(
    rng: np.random.Generator, num_classes: int, size: int, recipe: _Recipe = _CIFAR
) -> tuple[np.ndarray, np.ndarray]:
    """_CHUNK images float32 (_CHUNK, 3, size, size) in [0, 1] and their labels."""
    n = _CHUNK
    f32 = np.float32
    n_angles = (num_classes + 1) // 2
    # Balanced classes within every chunk, in random order.
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)

    def draw(low: float, high: float) -> np.ndarray:
        """n uniform draws shaped (n, 1, 1) to broadcast over (n, H, W)."""
        return rng.uniform(low, high, size=(n, 1, 1)).astype(f32)

    # Pixel coordinates centred on the image, in units of the image size.
    coords = (np.arange(size, dtype=f32) - f32((size - 1) / 2)) / f32(size)
    y, x = coords[None, :, None], coords[None, None, :]  # (1, H, 1), (1, 1, W)

    # Stripes: angle from the class (+ jitter), random frequency and phase.
    spacing = np.pi / n_angles
    angle = (labels % n_angles) * spacing + rng.normal(0.0, recipe.jitter * spacing, size=n)
    angle = angle.astype(f32)[:, None, None]
    freq = draw(*recipe.freq)  # cycles across the image
    phase = draw(0.0, 2 * np.pi)
    along = x * np.cos(angle) + y * np.sin(angle)
    stripes = np.cos(f32(2 * np.pi) * freq * along + phase)  # (n, H, W) in [-1, 1]

    # A soft round window at a random place: the random shift.
    cy, cx = draw(-0.2, 0.2), draw(-0.2, 0.2)
    radius = draw(*recipe.radius)
    window = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2))
    pattern = (draw(*recipe.contrast) * window * stripes)[:, None]  # (n, 1, H, W)

    # Colour of the stripes: the class's colour group, jittered per image.
    group = labels // n_angles
    colour = _PALETTE[group] + f32(0.12) * rng.standard_normal((n, 3), dtype=f32)
    background = rng.uniform(0.25, 0.75, size=(n, 3)).astype(f32)

    # A distractor: a blob of random colour, place and size, unrelated to the class.
    by, bx = draw(-0.4, 0.4), draw(-0.4, 0.4)
    blob = np.exp(-((y - by) ** 2 + (x - bx) ** 2) / (2 * draw(*recipe.blob_radius) ** 2))
    blob_colour = rng.uniform(-0.35, 0.35, size=(n, 3)).astype(f32)

    # Sum the parts in place, starting from the pixel noise: (n, 3, H, W)
    # temporaries are the slow part here, so make as few as possible.
    images = rng.standard_normal((n, 3, size, size), dtype=f32)
    images *= f32(recipe.noise)
    images += background[:, :, None, None]
    images += colour[:, :, None, None] * pattern
    images += blob_colour[:, :, None, None] * blob[:, None]
    np.clip(images, 0.0, 1.0, out=images)
    return images, labels


def make_procedural(
    n: int, seed: int = 0, num_classes: int = 10, size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Make `n` procedural images shaped like CIFAR-10.

    Args:
        n: number of images (any n >= 0).
        seed: the same seed always gives the same images, on every machine
            (use different seeds for training and test sets).
        num_classes: number of classes K >= 2; classes are balanced to within
            one image per 1,024.
        size: height and width in pixels (>= 4).

    Returns:
        images: float32 (n, 3, size, size), values in [0, 1].
        labels: int64 (n,), in 0..num_classes-1.
    """
    return _make(n, seed, num_classes, size, _CIFAR, "make_procedural")


def make_small_procedural(
    n: int, seed: int = 0, num_classes: int = 10, size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Make `n` procedural colour images for small nets: 8x8 by default.

    The classes are make_procedural's (stripe orientation x warm or cool
    colour), drawn at scales that stay legible at 8 pixels (see the module
    docstring). Arguments, return values and determinism as make_procedural.
    """
    return _make(n, seed, num_classes, size, _SMALL, "make_small_procedural")


def _make(
    n: int, seed: int, num_classes: int, size: int, recipe: _Recipe, name: str
) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"{name}: n must be an int >= 0, got {n!r}")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"{name}: num_classes must be an int >= 2, got {num_classes!r}")
    if not isinstance(size, (int, np.integer)) or size < 4:
        raise ValueError(f"{name}: size must be an int >= 4, got {size!r}")
    n_chunks = -(-n // _CHUNK)
    images = np.empty((n, 3, size, size), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    for k in range(n_chunks):
        rng = np.random.default_rng([seed, k])
        chunk_images, chunk_labels = _make_chunk(rng, num_classes, size, recipe)
        start = k * _CHUNK
        stop = min(start + _CHUNK, n)
        images[start:stop] = chunk_images[: stop - start]
        labels[start:stop] = chunk_labels[: stop - start]
    return images, labels
