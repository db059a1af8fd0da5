"""SyncBatchNorm: BatchNorm whose statistics are those of the whole global batch.

In data-parallel training each process sees B of the N*B images of a step.
A plain BatchNorm2d then normalises every image with the mean and variance of
*its process's* B images: the processes compute a different function from
one process on N*B images, and small shards make noisy statistics.
SyncBatchNorm all-reduces what the statistics are made of, so every process
normalises with the statistics of all N*B images:

    forward   sum x and the count      -> all-reduce -> mean over every process
              sum (x - mean)^2         -> all-reduce -> variance over every process
    backward  sum gy and sum gy * xhat -> all-reduce -> the terms of gx that pass
                                                        through the mean and variance

(Two passes, like the single-process backend: the one-pass E[x^2] - E[x]^2
would need one all-reduce less, but in float32 it loses digits whenever a
channel's mean is large next to its spread.) With one process it computes
exactly what BatchNorm2d computes; with N processes on shards of a batch,
what one process computes on the whole batch. tests/test_sync_batchnorm.py
and tests/test_distributed_mpi.py check both, gradients included.

On GPUs the sums are CuPy arrays and the default group all-reduces them with
NCCL, on the device (minires/distributed/nccl.py); the one value read back
to the host is the global count (one number per layer and step, which the
running variance's M / (M - 1) and the check of M need).

Each process returns the gradient of gamma and beta for *its* images; the
gradient all-reduce of data-parallel training (minires.distributed) sums
them, as it sums every other parameter's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from ..autograd import Function, Tensor, as_tensor
from ..backends.device import device_of, get_array_module
from ..backends.layout import from_channel_major, to_channel_major
from ..distributed.comm import Communicator
from ..distributed.group import get_communicator
from .layers import BatchNorm2d
from .module import Module

Array = Any


class SyncBatchNormFunction(Function):
    """Batch normalisation in training mode with statistics all-reduced over ``comm``."""

    saved_inputs = (1,)  # gamma (x enters backward as xhat)

    def __init__(self, comm, running_mean, running_var, momentum: float, eps: float, affine: bool):
        self.comm, self.running_mean, self.running_var = comm, running_mean, running_var
        self.momentum, self.eps, self.affine = momentum, eps, affine

    def forward(self, x: Array, gamma: Array, beta: Array) -> Array:
        xp = get_array_module(x)
        C = x.shape[1]
        xc = to_channel_major(x)
        x2 = xc.reshape(C, -1)
        # The sums and the count travel in float64: a float32 count is exact
        # only up to 2**24 values per channel.
        stats = xp.empty(C + 1, np.float64)
        stats[:C] = x2.sum(axis=1)
        stats[C] = x2.shape[1]
        self.comm.all_reduce(stats)
        self.count = M = float(stats[C])
        if M < 2:
            raise ValueError(
                f"SyncBatchNorm: expected more than 1 value per channel over all processes, "
                f"got {int(M)}"
            )
        mean = (stats[:C] / M).astype(x.dtype)
        xhat = x2 - mean[:, None]
        sq = xp.einsum("cm,cm->c", xhat, xhat)  # about the *global* mean
        self.comm.all_reduce(sq)
        var = sq / M
        self.inv_std = 1.0 / xp.sqrt(var + x.dtype.type(self.eps))
        xhat *= self.inv_std[:, None]
        y2 = xhat * gamma[:, None]
        y2 += beta[:, None]
        if self.running_mean is not None:  # PyTorch's unbiased running variance
            m = x.dtype.type(self.momentum)
            self.running_mean *= 1 - m
            self.running_mean += m * mean
            self.running_var *= 1 - m
            self.running_var += m * (var * x.dtype.type(M / (M - 1)))
        self.xhat, self.gamma = xhat, gamma
        self.running_mean = self.running_var = None  # not needed by backward
        return from_channel_major(y2.reshape(xc.shape))

    def backward(self, gy: Array) -> tuple[Array | None, Array | None, Array | None]:
        xp = get_array_module(gy)
        C = gy.shape[1]
        gyc = to_channel_major(gy)
        gy2 = gyc.reshape(C, -1)
        sums = xp.empty((2, C), gy.dtype)
        xp.sum(gy2, axis=1, out=sums[0])  # this process's gbeta
        sums[1] = xp.einsum("cm,cm->c", gy2, self.xhat)  # ggamma (CuPy's einsum has no out=)
        gbeta, ggamma = sums[0].copy(), sums[1].copy()
        gx = None
        if self.needs_input_grad[0]:
            self.comm.all_reduce(sums)  # the global sums: d loss / d mean and / d var
            M = gy.dtype.type(self.count)
            gx2 = self.xhat * (-sums[1] / M)[:, None]
            gx2 += gy2
            gx2 -= (sums[0] / M)[:, None]
            gx2 *= (self.gamma * self.inv_std)[:, None]
            gx = from_channel_major(gx2.reshape(gyc.shape))
        if not self.affine:
            return gx, None, None
        return gx, ggamma, gbeta


class SyncBatchNorm(BatchNorm2d):
    """BatchNorm2d with the statistics of the global batch (see the module docstring).

    ``process_group``: the Communicator to all-reduce over (default: the
    default group of minires.distributed, MPI when started by mpiexec, with
    NCCL when the input is on a GPU, so that the sums stay on the device).
    In evaluation it uses its running statistics, exactly as BatchNorm2d.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Communicator | None = None,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def forward(self, x: Tensor, relu: bool = False) -> Tensor:
        """BatchNorm with statistics over every process; relu=True applies a
        ReLU after it (not fused here: BatchNorm2d's fusion is per process)."""
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats:
            return super().forward(x, relu)  # running statistics: nothing to synchronise
        y = self._synchronised(x)
        return F.relu(y) if relu else y

    def _synchronised(self, x: Tensor) -> Tensor:
        x = as_tensor(x)
        if x.ndim != 4 or x.dtype.kind != "f":
            raise ValueError(
                f"SyncBatchNorm: expected a 4-D floating input (N, C, H, W), got shape "
                f"{x.shape} dtype {x.dtype}"
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"SyncBatchNorm: expected {self.num_features} channels, got input shape {x.shape}"
            )
        momentum = self.momentum if self.momentum is not None else 0.0
        track = self.training and self.track_running_stats
        if track:
            self.num_batches_tracked += 1  # in place: the buffer array is shared
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        xp = get_array_module(x.data)
        C = self.num_features
        gamma = self.weight if self.weight is not None else Tensor(xp.ones(C, x.dtype))
        beta = self.bias if self.bias is not None else Tensor(xp.zeros(C, x.dtype))
        comm = self.process_group
        if comm is None:  # the default group; with NCCL when x is on a GPU
            comm = get_communicator(device_of(x))
        fn = SyncBatchNormFunction(
            comm,
            self.running_mean if track else None,
            self.running_var if track else None,
            float(momentum),
            float(self.eps),
            self.affine,
        )
        return fn(x, gamma, beta)

    @classmethod
    def convert_sync_batchnorm(
        cls, module: Module, process_group: Communicator | None = None
    ) -> Module:
        """Replace every BatchNorm2d in ``module`` by a SyncBatchNorm: convert_sync_batchnorm."""
        return convert_sync_batchnorm(module, process_group)


def _to_sync(bn: BatchNorm2d, process_group: Communicator | None) -> SyncBatchNorm:
    """A SyncBatchNorm that shares ``bn``'s parameters and buffers (the same arrays)."""
    sync = SyncBatchNorm(
        bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, process_group
    )
    sync.weight, sync.bias = bn.weight, bn.bias
    for name, buf in bn._buffers.items():
        sync.register_buffer(name, buf)
    sync.train(bn.training)
    sync._forward_hooks.update(bn._forward_hooks)
    return sync


def convert_sync_batchnorm(module: Module, process_group: Communicator | None = None) -> Module:
    """Replace every BatchNorm2d in ``module`` (in place) by a SyncBatchNorm, as PyTorch's.

    The new layers share the old ones' parameters and buffers, so an
    optimiser built before the conversion still holds the right parameters,
    and ``state_dict()`` has the same keys. Returns ``module`` (or, when
    ``module`` is itself a BatchNorm2d, its replacement).
    """
    if isinstance(module, BatchNorm2d) and not isinstance(module, SyncBatchNorm):
        return _to_sync(module, process_group)
    stack = [module]
    while stack:  # iterative: a ResNet-1202 is deep
        parent = stack.pop()
        for name, child in list(parent._modules.items()):
            if isinstance(child, BatchNorm2d) and not isinstance(child, SyncBatchNorm):
                parent._modules[name] = _to_sync(child, process_group)
            elif child is not None:
                stack.append(child)
    return module
