"""Data for minires: an embedded data set, a CIFAR-10 reader, a procedural
data set, and mini-batching with augmentation. Nothing here uses the network.

    load_digits(split)            UCI handwritten digits, shipped in the package,
                                  float32 (N, 1, 8, 8)
    load_cifar10(data_dir, split) CIFAR-10 from a `cifar-10-batches-py` folder,
                                  float32 (N, 3, 32, 32) in [0, 1] (or uint8)
    make_procedural(n, seed)      any number of CIFAR-shaped images, float32
    make_small_procedural(n, seed)  the same classes drawn for 8x8 images
    DataLoader(images, labels, batch_size, shuffle, seed, transform)
    DistributedDataLoader(..., num_replicas, rank)  one process's shard of each batch
    RandomCrop, RandomHorizontalFlip, Normalize, Compose, cifar_augment,
    channel_stats                 batched augmentation and normalisation
    imagenet.preprocess(image)    one image as torchvision prepares it for an
                                  ImageNet model (Pillow), float32 (1, 3, 224, 224)
    imagenet_classes()            the 1000 ImageNet class names, shipped in the package

Labels are int64 (N,) everywhere.
"""

from .cifar import (
    DataError,
    DatasetFormatError,
    DatasetNotFoundError,
    load_cifar10,
    load_cifar10_classes,
)
from .digits import load_digits
from .distributed import DistributedDataLoader
from .imagenet import ImageError, imagenet_classes
from .loader import (
    Compose,
    DataLoader,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    channel_stats,
    cifar_augment,
    normalize,
    random_crop,
    random_horizontal_flip,
)
from .procedural import make_procedural, make_small_procedural

__all__ = [
    "Compose",
    "DataError",
    "DataLoader",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DistributedDataLoader",
    "ImageError",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "channel_stats",
    "cifar_augment",
    "imagenet_classes",
    "load_cifar10",
    "load_cifar10_classes",
    "load_digits",
    "make_procedural",
    "make_small_procedural",
    "normalize",
    "random_crop",
    "random_horizontal_flip",
]
