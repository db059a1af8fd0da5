"""DistributedDataParallel: one model, one copy per process, gradients averaged.

    model = mr.nn.SyncBatchNorm.convert_sync_batchnorm(model)   # optional, see below
    ddp = mr.nn.parallel.DistributedDataParallel(model)
    loss = F.cross_entropy(ddp(x_shard), y_shard)
    loss.backward()
    ddp.all_reduce_gradients()       # every p.grad := its mean over the processes
    optimizer.step()                 # the same update everywhere

On a GPU (one process per GPU, ``dist.init_process_group(device="cuda")``
before ``model.to("cuda")``) the default group all-reduces the gradient
buckets, which are then device arrays, with NCCL: no gradient visits the host.

As PyTorch's: the wrapper broadcasts rank 0's parameters and buffers when it
is built (every copy starts equal), and, before each forward in training,
rank 0's buffers (so plain BatchNorm's running statistics, which each
process would otherwise estimate from its own shard, stay those of rank 0).
Its ``state_dict`` keys start with ``module.``, as PyTorch's.

One difference, stated: PyTorch reduces gradients inside backward, bucket by
bucket as they become ready, to overlap communication with computation.
minires calls ``all_reduce_gradients()`` after backward: the same numbers,
one step to read (see minires/distributed/buckets.py).
"""

from __future__ import annotations

from typing import Any

from ..backends.device import device_of
from ..distributed.buckets import DEFAULT_BUCKET_BYTES, GradientBuckets, broadcast_arrays
from ..distributed.comm import Communicator
from ..distributed.group import get_communicator
from .module import Module


class DistributedDataParallel(Module):
    """Wrap ``module`` for data-parallel training over ``process_group``."""

    def __init__(
        self,
        module: Module,
        process_group: Communicator | None = None,
        bucket_cap_mb: float = DEFAULT_BUCKET_BYTES / 2**20,
        broadcast_buffers: bool = True,
    ) -> None:
        super().__init__()
        self.module = module
        if process_group is None:  # the default group; with NCCL for a model on a GPU
            first = next(iter(module.parameters()), None)
            process_group = get_communicator("cpu" if first is None else device_of(first))
        comm = process_group
        self.process_group = comm
        self.broadcast_buffers = broadcast_buffers
        broadcast_arrays([p.data for p in module.parameters()], comm)
        broadcast_arrays(list(module.buffers()), comm)
        bucket_bytes = int(bucket_cap_mb * 2**20)
        self.buckets = GradientBuckets(module.parameters(), comm, bucket_bytes)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.training and self.broadcast_buffers:
            broadcast_arrays(list(self.module.buffers()), self.process_group)
        return self.module(*args, **kwargs)

    def all_reduce_gradients(self) -> None:
        """Average every parameter's gradient over the processes (call after backward)."""
        self.buckets.all_reduce_gradients(average=True)
