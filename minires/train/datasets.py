"""The data of a run: the splits a config names, their transforms, their loaders."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .. import data as mdata
from .config import DATASETS, NUM_CLASSES, TrainConfig
from .errors import UserError


@dataclasses.dataclass
class Data:
    """A data set ready for the loop: raw arrays plus how to transform them."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    mean: list[float]  # per channel, in the units of the stored images
    std: list[float]


def _subset(images: np.ndarray, labels: np.ndarray, n: int | None, key: int):
    """A random subset of n images (all of them when n is None or too large).

    Drawn from a fixed generator (not the run's seed), so runs that differ
    only in --seed see the same images; kept in stored order.
    """
    if n is None or n >= len(labels):
        return images, labels
    idx = np.sort(np.random.default_rng([20250101, key]).permutation(len(labels))[:n])
    return images[idx], labels[idx]


def _load_splits(cfg: TrainConfig) -> tuple[Any, Any]:
    """cfg.data's (train, test) splits, each (images, labels), as stored."""
    if cfg.data == "digits":
        return mdata.load_digits("train"), mdata.load_digits("test")
    if cfg.data == "procedural":
        # Different seeds: the test images are not a copy of training images.
        train = mdata.make_procedural(cfg.num_train or 10_000, seed=0)
        return train, mdata.make_procedural(cfg.num_test or 2_000, seed=1)
    if cfg.data == "cifar10":
        # uint8 keeps the 50,000 training images at 150 MB instead of 600 MB;
        # Normalize turns each batch into float32.
        data_dir = cfg.data_dir or "data"
        train = mdata.load_cifar10(data_dir, "train", dtype=np.uint8)
        return train, mdata.load_cifar10(data_dir, "test", dtype=np.uint8)
    raise UserError(f"unknown data set {cfg.data!r}; valid names: {', '.join(DATASETS)}")


def load_data(cfg: TrainConfig, stats: tuple[list[float], list[float]] | None = None) -> Data:
    """Load cfg.data's train and test splits (subsampled as the config says).

    `stats` = (mean, std) to normalise with; by default they are measured on
    the training images that will be used.
    """
    try:
        train, test = _load_splits(cfg)
    except mdata.DataError as e:
        raise UserError(str(e)) from None
    train = _subset(*train, cfg.num_train, 0)
    test = _subset(*test, cfg.num_test, 1)
    if stats is None:
        mean, std = mdata.channel_stats(train[0])
        stats = (mean.tolist(), std.tolist())
    return Data(*train, *test, num_classes=NUM_CLASSES, mean=stats[0], std=stats[1])


class RepeatChannels:
    """Copy a 1-channel batch into `channels` identical channels (digits -> a 3-channel net)."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return np.repeat(x, self.channels, axis=1) if x.shape[1] != self.channels else x


def _augmentation(cfg: TrainConfig) -> list[Any]:
    """The random transforms of a training batch (none with augment=False)."""
    if not cfg.augment:
        return []
    if cfg.data == "digits":
        # A 1-pixel shift of an 8x8 digit; no flips: a mirrored 2 is not a 2.
        return [mdata.RandomCrop(padding=1)]
    if cfg.data == "cifar10":
        return [mdata.RandomCrop(padding=4), mdata.RandomHorizontalFlip()]
    # No flips: mirroring changes the stripes' angle, which *is* the class.
    return [mdata.RandomCrop(padding=4)]


def make_transforms(
    cfg: TrainConfig, data: Data, model_channels: int
) -> tuple[mdata.Compose, mdata.Compose]:
    """(train transform, test transform): augmentation, normalisation, channel fix-up."""
    data_channels = data.train_images.shape[1]
    tail: list[Any] = [mdata.Normalize(data.mean, data.std)]
    if model_channels != data_channels:
        if data_channels != 1:
            raise UserError(
                f"model {cfg.model!r} takes {model_channels}-channel images but {cfg.data} "
                f"has {data_channels} channels"
            )
        tail.append(RepeatChannels(model_channels))
    return mdata.Compose(_augmentation(cfg) + tail), mdata.Compose(tail)


def make_loaders(
    cfg: TrainConfig, data: Data, model_channels: int
) -> tuple[mdata.DataLoader, mdata.DataLoader]:
    """(train loader, test loader) of a run: shuffled and augmented, then plain."""
    train_tf, test_tf = make_transforms(cfg, data, model_channels)
    # drop_last: a last batch of 1 or 2 images would give BatchNorm
    # meaningless statistics; the shuffle differs every epoch, so every
    # image is still seen.
    train = mdata.DataLoader(
        data.train_images,
        data.train_labels,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=len(data.train_labels) > cfg.batch_size,
        seed=cfg.seed,
        transform=train_tf,
    )
    test = mdata.DataLoader(
        data.test_images, data.test_labels, batch_size=max(cfg.batch_size, 256), transform=test_tf
    )
    return train, test
