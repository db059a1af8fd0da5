"""Gradients all-reduced in a few large buffers, and arrays broadcast from rank 0.

One all-reduce per parameter would pay MPI's latency (tens of microseconds)
some sixty times a step for a ResNet-20, hundreds of times for a ResNet-50,
mostly to send arrays of a few hundred bytes. So, as PyTorch's
DistributedDataParallel does, the gradients are copied into a few flat
buffers ("buckets", at most ``bucket_bytes`` each, one dtype each), each
bucket is all-reduced in one call, and the averages are copied back:

    buckets = GradientBuckets(model.parameters(), comm)
    loss.backward()
    buckets.all_reduce_gradients()      # p.grad := the mean of p.grad over the ranks
    optimizer.step()                    # the same step on every rank

(PyTorch also overlaps each bucket's all-reduce with the rest of backward;
minires's backward is one Python loop, so it reduces after backward.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..backends.device import get_array_module, to_numpy
from .comm import Communicator, DistributedError

Array = Any
DEFAULT_BUCKET_BYTES = 25 * 2**20  # PyTorch's bucket_cap_mb=25


class GradientBuckets:
    """Average the ``.grad`` of ``params`` over the ranks, a few large all-reduces per step.

    Parameters are grouped by dtype and device, in their given order, into
    buckets of at most ``bucket_bytes`` (a parameter larger than that gets a
    bucket of its own). The buffers are allocated once and reused.
    """

    def __init__(
        self, params: Iterable[Any], comm: Communicator, bucket_bytes: int = DEFAULT_BUCKET_BYTES
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.comm = comm
        self.buckets: list[tuple[list[int], Array]] = []  # (parameter indices, flat buffer)
        open_: dict[tuple[Any, ...], tuple[list[int], int]] = {}  # key -> (indices, bytes)
        for i, p in enumerate(self.params):
            key = (p.data.dtype.str, type(p.data))
            idx, size = open_.get(key, ([], 0))
            if idx and size + p.data.nbytes > bucket_bytes:
                self._close(idx)
                idx, size = [], 0
            open_[key] = (idx + [i], size + p.data.nbytes)
        for idx, _ in open_.values():
            self._close(idx)

    def _close(self, idx: list[int]) -> None:
        first = self.params[idx[0]].data
        n = sum(self.params[i].data.size for i in idx)
        self.buckets.append((idx, get_array_module(first).empty(n, first.dtype)))

    @property
    def nbytes(self) -> int:
        """Bytes all-reduced per step (all the gradients)."""
        return sum(buf.nbytes for _, buf in self.buckets)

    def all_reduce_gradients(self, average: bool = True) -> None:
        """Replace every ``p.grad`` by its sum (average=True: its mean) over the ranks.

        A parameter with no gradient on this rank contributes zeros; it gets
        the reduced gradient if it had one on any rank, and stays None if it
        had none anywhere (one small all-reduce of who has a gradient).
        """
        have = np.array([p.grad is not None for p in self.params], np.int8)
        self.comm.all_reduce(have, op="max")
        scale = 1.0 / self.comm.world_size if average else 1.0
        for idx, buf in self.buckets:
            offset = 0
            for i in idx:  # pack
                p = self.params[i]
                n = p.data.size
                if p.grad is None:
                    buf[offset : offset + n] = 0
                else:
                    buf[offset : offset + n] = p.grad.reshape(-1)
                offset += n
            self.comm.all_reduce(buf)
            if scale != 1.0:
                buf *= buf.dtype.type(scale)  # a float32 bucket stays float32
            offset = 0
            for i in idx:  # unpack
                p = self.params[i]
                n = p.data.size
                if have[i]:
                    p.grad = buf[offset : offset + n].reshape(p.data.shape).copy()
                offset += n


def broadcast_arrays(arrays: Sequence[Array], comm: Communicator, src: int = 0) -> None:
    """Overwrite every array, in place, with rank ``src``'s: one broadcast per dtype."""
    if comm.world_size == 1:
        return
    groups: dict[tuple[Any, ...], list[Array]] = {}
    for a in arrays:
        groups.setdefault((a.dtype.str, type(a)), []).append(a)
    for group in groups.values():
        xp = get_array_module(group[0])
        flat = xp.concatenate([a.reshape(-1) for a in group])
        comm.broadcast(flat, src)
        offset = 0
        for a in group:
            a[...] = flat[offset : offset + a.size].reshape(a.shape)
            offset += a.size


def fingerprint(arrays: Sequence[Array]) -> np.ndarray:
    """A SHA-256 of the arrays' bytes (and shapes), as 32 uint8: equal iff bit-identical."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(to_numpy(a))
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return np.frombuffer(h.digest(), np.uint8).copy()


def check_ranks_agree(arrays: Sequence[Array], comm: Communicator, what: str) -> None:
    """Raise DistributedError unless every rank holds bit-identical ``arrays``."""
    if comm.world_size == 1:
        return
    prints = comm.all_gather(fingerprint(arrays))
    differ = [r for r in range(comm.world_size) if not np.array_equal(prints[r], prints[0])]
    if differ:
        raise DistributedError(
            f"the processes' {what} differ (ranks {differ} from rank 0): the copies of the "
            "model have drifted apart, which data-parallel training must never allow"
        )
