"""ImageNet images as the pretrained ResNets expect them, and the 1000 class names.

torchvision's ImageNet classifiers were trained on images prepared one way,
and their weights expect the same preparation when they classify
(torchvision's ``ImageClassification`` preset, what ``weights.transforms()``
returns for a ResNet). ``preprocess`` repeats it step for step:

    1. RGB: grayscale, palette, RGBA (alpha dropped), CMYK, ... become RGB
       with ``img.convert("RGB")``, as torchvision's ImageFolder loader does;
    2. resize so that the shorter side is 256 and the longer one
       int(256 * long / short) (truncated), with PIL's bilinear filter (232
       instead of 256 for torchvision's "IMAGENET1K_V2" weights). PIL
       antialiases: when it shrinks, the triangle filter widens to cover every
       source pixel, so a large photo is averaged, not sampled;
    3. centre crop 224 x 224, at offsets round((side - 224) / 2) (Python's
       round, half to even, as torchvision);
    4. uint8 -> float32 in [0, 1], then (x - mean) / std per channel with
       mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), the
       statistics of ImageNet's training images.

As in torchvision, a photo's EXIF orientation tag is not applied: the pixels
are classified as they are stored.

Pillow reads and resizes the images. It is an optional dependency
(``pip install "minires[predict]"``), imported only when an image is read.

``imagenet_classes.txt`` holds the 1000 class names, one a line, in the
order of the classifiers' outputs: torchvision's list
(``torchvision.models._meta._IMAGENET_CATEGORIES``, torchvision 0.29,
BSD-3-Clause). The WordNet labels have two "crane"s and two "maillot"s;
torchvision renames one of each ("crane bird", "maillot tank suit"), so all
1000 names differ.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .cifar import DataError

RESIZE = 256  # the shorter side after resizing
CROP = 224  # the side of the square the network sees
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

PILLOW_HINT = 'reading images needs Pillow>=10: pip install "minires[predict]" (or pillow)'

__all__ = [
    "CROP",
    "MEAN",
    "RESIZE",
    "STD",
    "ImageError",
    "center_crop_box",
    "check_image",
    "imagenet_classes",
    "open_image",
    "preprocess",
    "require_pillow",
    "resized_size",
]


class ImageError(DataError):
    """An image file that is missing, unreadable, or not an image. The message names it."""


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names; entry i names output i of a classifier."""
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text("utf-8")
    return tuple(text.splitlines())


def require_pillow() -> ModuleType:
    """``PIL.Image``, or an ImportError that says how to install Pillow."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(PILLOW_HINT) from None
    return Image


def resized_size(width: int, height: int, short: int = RESIZE) -> tuple[int, int]:
    """(width, height) with the shorter side ``short`` and the aspect ratio kept.

    The longer side is int(short * long / short_side), truncated, as torchvision.
    """
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def center_crop_box(width: int, height: int, size: int = CROP) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred ``size`` x ``size`` square.

    Offsets are round((side - size) / 2), Python's round (half to even), as
    torchvision's center_crop. Needs both sides >= size.
    """
    if width < size or height < size:
        raise ValueError(f"center_crop_box: a {width}x{height} image is smaller than {size}")
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return left, top, left + size, top + size


def open_image(path: str | Path) -> Any:
    """The image file at ``path``, decoded and converted to RGB (a PIL Image).

    Raises ImageError, naming the file, when it is missing or not an image
    Pillow can decode (including a truncated one).
    """
    with _reading(path) as img:
        return _to_rgb(img)


def check_image(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file's header, or ImageError: a quick check, no decoding."""
    with _reading(path) as img:
        return img.size


@contextlib.contextmanager
def _reading(path: str | Path) -> Iterator[Any]:
    """Image.open(path), with Pillow's errors turned into ImageErrors that name the file."""
    Image = require_pillow()
    try:
        with Image.open(path) as img:
            yield img
    except FileNotFoundError:
        raise ImageError(f"image {str(path)!r} not found") from None
    except IsADirectoryError:
        raise ImageError(f"image {str(path)!r} is a folder, not an image file") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{str(path)!r} is not an image file Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # "image file is truncated", a broken chunk (some decoders raise
        # SyntaxError), an unreadable file, an absurd size.
        raise ImageError(f"cannot read image {str(path)!r}: {e}") from None


def _to_rgb(img: Any) -> Any:
    """A loaded RGB copy. A palette with a transparent colour goes through RGBA
    first, which gives the same RGB values without Pillow's warning."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")  # also decodes the pixels (Image.open reads only the header)


def preprocess(image: str | Path | Any, resize: int = RESIZE) -> np.ndarray:
    """One image, prepared as torchvision prepares ImageNet images (see the module doc).

    ``image``: a file path or a PIL Image (any mode). ``resize``: the shorter
    side before the 224 crop (256; torchvision's newer "IMAGENET1K_V2"
    ResNet weights were evaluated with 232). Returns a float32 array of shape
    (1, 3, 224, 224), NCHW, channels in RGB order, normalised.
    """
    if isinstance(resize, bool) or not isinstance(resize, int) or resize < CROP:
        raise ValueError(f"preprocess: resize must be an integer >= {CROP}, got {resize!r}")
    Image = require_pillow()
    if isinstance(image, (str, Path)):
        img = open_image(image)
    elif isinstance(image, Image.Image):
        img = _to_rgb(image)
    else:
        raise TypeError(
            f"preprocess: image must be a file path or a PIL Image, got {type(image).__name__}"
        )
    size = resized_size(*img.size, short=resize)
    if size != img.size:  # torchvision leaves an image of the right size untouched
        img = img.resize(size, Image.Resampling.BILINEAR)
    img = img.crop(center_crop_box(*img.size))
    pixels = np.asarray(img, dtype=np.uint8)  # (224, 224, 3), HWC
    x = pixels.astype(np.float32) / np.float32(255)
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])
