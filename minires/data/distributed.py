"""Each process's shard of every batch: the loader of data-parallel training.

    loader = DistributedDataLoader(images, labels, batch_size=32, num_replicas=2,
                                   rank=rank, shuffle=True, seed=0, transform=t)

With N processes and ``batch_size`` B, a step trains on a *global* batch of
N*B images, and process r gets the r-th block of B of them:

    epoch order  = DataLoader.order(epoch)       the same permutation on every rank
    global batch = order[b*N*B : (b+1)*N*B]       what one process at batch N*B would take
    shard of r   = global batch[r*B : (r+1)*B]

So the union of the shards is the epoch and no sample is seen twice (PyTorch's
DistributedSampler pads a short epoch with repeated samples; this loader
never repeats one). The random augmentation is drawn for the whole global
batch, from the generator a one-process loader uses for batch b
(``default_rng([seed, 1, epoch, b])``), and then sliced: the N processes at
batch B see, image for image and pixel for pixel, what one process at batch
N*B sees (tests/test_distributed_data.py checks it). Each process augments
all N*B images to keep only B; augmenting is a small part of a step.

A last global batch that does not split evenly is trimmed to a multiple of N
(at most N - 1 images of that epoch are left out; the shuffle changes which),
so every process always holds the same number of images and the average of
their gradients is the gradient of the global batch.

Resuming is the DataLoader's: the position (seed, epoch, batch) is the same
three integers on every rank, saved once by rank 0.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .loader import DataLoader, Transform


class DistributedDataLoader(DataLoader):
    """A DataLoader that yields process ``rank``'s shard of every global batch.

    Args as DataLoader's, with ``batch_size`` the images *per process*, and
        num_replicas: the number of processes (the world size).
        rank: this process, 0 .. num_replicas - 1.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int = 128,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(images, labels, batch_size, shuffle, drop_last, seed, transform)
        if not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
            raise ValueError(
                f"DistributedDataLoader: num_replicas must be an int >= 1, got {num_replicas!r}"
            )
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
            raise ValueError(
                f"DistributedDataLoader: rank must be an int in [0, {num_replicas}), got {rank!r}"
            )
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.global_batch_size = self.batch_size * self.num_replicas

    def __len__(self) -> int:
        """Number of (global) batches per epoch: the steps of an epoch."""
        n, g = len(self.labels), self.global_batch_size
        full, tail = divmod(n, g)
        return full + (1 if tail >= self.num_replicas and not self.drop_last else 0)

    def global_batch(self, epoch: int, b: int, order: np.ndarray | None = None) -> np.ndarray:
        """The sample indices of global batch ``b`` of ``epoch`` (a multiple of num_replicas)."""
        order = self.order(epoch) if order is None else order
        idx = order[b * self.global_batch_size : (b + 1) * self.global_batch_size]
        return idx[: len(idx) - len(idx) % self.num_replicas]

    def shard(self, idx: np.ndarray) -> slice:
        """Which part of a global batch ``idx`` is this rank's."""
        k = len(idx) // self.num_replicas
        return slice(self.rank * k, (self.rank + 1) * k)

    def shard_indices(self, epoch: int) -> np.ndarray:
        """Every sample index this rank sees in ``epoch``, in order (its shard of the epoch)."""
        order = self.order(epoch)
        parts = [self.global_batch(epoch, b, order) for b in range(len(self))]
        return np.concatenate([p[self.shard(p)] for p in parts] or [np.zeros(0, np.int64)])

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch, start = self.epoch, self.batch
        order = self.order(epoch)
        n_batches = len(self)
        for b in range(start, n_batches):
            idx = self.global_batch(epoch, b, order)
            x, y = self.images[idx], self.labels[idx]
            if self.transform is not None:  # the whole global batch, as one process would
                x = self.transform(x, np.random.default_rng([self.seed, 1, epoch, b]))
            mine = self.shard(idx)
            if b + 1 == n_batches:
                self.epoch, self.batch = epoch + 1, 0
            else:
                self.batch = b + 1
            yield x[mine], y[mine]
        if start >= n_batches:
            self.epoch, self.batch = epoch + 1, 0
