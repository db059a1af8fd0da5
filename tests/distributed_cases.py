"""The computations the data-parallel proofs compare, shared by the MPI worker and the tests.

One training step of a small ResNet (depth 8, float64) on a global batch of
WORLD * B images: run by mpi_worker.py on WORLD processes, each holding B of
them, and by the tests in one process, on all of them at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import minires as mr
import minires.functional as F
from minires.distributed.buckets import GradientBuckets

WORLD, B = 2, 4  # processes, images per process
SHAPE = (3, 8, 8)
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4
BUCKET_BYTES = 160 * 1024  # small, so that the ResNet-8's 0.6 MB of gradients need several


def make_model(sync: bool, comm: Any = None) -> mr.nn.Module:
    """The same float64 ResNet-8 on every call (seeded), with SyncBatchNorm if ``sync``."""
    mr.manual_seed(0)
    model = mr.models.cifar_resnet(8).to(np.float64)
    if sync:
        mr.nn.convert_sync_batchnorm(model, comm)
    return model


def global_batch() -> tuple[np.ndarray, np.ndarray]:
    """The WORLD * B images (float64) and labels of the step."""
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 2.0, size=(WORLD * B, *SHAPE))
    return x, rng.integers(0, 10, size=WORLD * B)


def shard(a: np.ndarray, rank: int) -> np.ndarray:
    return a[rank * B : (rank + 1) * B]


def train_step(
    model: mr.nn.Module,
    batches: list[tuple[np.ndarray, np.ndarray]],
    after_backward: Callable[[], None] | None = None,
) -> dict[str, np.ndarray]:
    """One SGD step on the mean of the batches' mean losses; returns copies of the state.

    One batch is the ordinary step. Several batches, each through its own
    forward pass (so a plain BatchNorm normalises each with its own
    statistics), is what WORLD processes with plain BatchNorm compute.
    """
    opt = mr.optim.SGD(model.parameters(), LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    opt.zero_grad()
    losses = [F.cross_entropy(model(mr.Tensor(x)), y) for x, y in batches]
    loss = losses[0]
    for other in losses[1:]:
        loss = loss + other
    (loss * (1.0 / len(losses))).backward()
    if after_backward is not None:
        after_backward()
    opt.step()
    return {k: np.array(v) for k, v in model.state_dict().items()}


def distributed_step(model: mr.nn.Module, comm: Any) -> dict[str, np.ndarray]:
    """This rank's share of the step: its shard, then the gradients averaged over the ranks."""
    x, y = global_batch()
    buckets = GradientBuckets(model.parameters(), comm, BUCKET_BYTES)
    return train_step(
        model, [(shard(x, comm.rank), shard(y, comm.rank))], buckets.all_reduce_gradients
    )


def sync_bn_layer_case(comm: Any) -> dict[str, np.ndarray]:
    """One SyncBatchNorm(5) on this rank's shard: y, x.grad, the local gamma/beta grads."""
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 1.5, size=(WORLD * 3, 5, 4, 3))
    w = rng.normal(size=x.shape)
    layer = mr.nn.SyncBatchNorm(5, process_group=comm).to(np.float64)
    layer.weight.data[:] = rng.normal(size=5)
    layer.bias.data[:] = rng.normal(size=5)
    mine = slice(comm.rank * 3, (comm.rank + 1) * 3)
    xt = mr.Tensor(x[mine], requires_grad=True)
    y = layer(xt)
    (y * mr.Tensor(w[mine])).sum().backward()
    return {
        "y": y.data.copy(),
        "gx": xt.grad.copy(),
        "ggamma": layer.weight.grad.copy(),
        "gbeta": layer.bias.grad.copy(),
        "running_mean": layer.running_mean.copy(),
        "running_var": layer.running_var.copy(),
    }


def check_sync_bn_layer_equals_batchnorm_on_the_union(got: list[dict], tol: float) -> None:
    """What the ranks' sync_bn_layer_case saved equals one BatchNorm2d on the
    whole batch: outputs and input gradients side by side, gamma/beta
    gradients once summed, and the union's running statistics on every rank."""
    rng = np.random.default_rng(2)  # sync_bn_layer_case's draws
    x = rng.normal(3.0, 1.5, size=(WORLD * 3, 5, 4, 3))
    w = rng.normal(size=x.shape)
    bn = mr.nn.BatchNorm2d(5).to(np.float64)
    bn.weight.data[:] = rng.normal(size=5)
    bn.bias.data[:] = rng.normal(size=5)
    xt = mr.Tensor(x, requires_grad=True)
    yt = bn(xt)
    (yt * mr.Tensor(w)).sum().backward()
    assert np.abs(np.concatenate([g["y"] for g in got]) - yt.data).max() < tol
    assert np.abs(np.concatenate([g["gx"] for g in got]) - xt.grad).max() < tol
    assert np.abs(sum(g["ggamma"] for g in got) - bn.weight.grad).max() < tol
    assert np.abs(sum(g["gbeta"] for g in got) - bn.bias.grad).max() < tol
    for g in got:
        assert np.abs(g["running_mean"] - bn.running_mean).max() < tol
        assert np.abs(g["running_var"] - bn.running_var).max() < tol


def directional_check(comm: Any, eps: float = 1e-6) -> dict[str, float]:
    """<grad, v> against a central difference of the loss *summed over the ranks*.

    Every rank moves its own inputs along its own direction at once, so the
    finite difference sees the cross-rank terms of SyncBatchNorm's backward.
    """
    rng = np.random.default_rng(10 + comm.rank)
    x = rng.normal(0.5, 2.0, size=(3, 4, 3, 3))
    v = rng.normal(size=x.shape)
    w = rng.normal(size=x.shape)
    layer = mr.nn.SyncBatchNorm(4, process_group=comm).to(np.float64)
    layer.weight.data[:] = np.linspace(0.5, 2.0, 4)  # the same on every rank

    def total(xa: np.ndarray) -> float:
        with mr.no_grad():
            local = np.array([float((layer(mr.Tensor(xa)) * mr.Tensor(w)).sum().item())])
        return float(comm.all_reduce(local)[0])

    xt = mr.Tensor(x, requires_grad=True)
    (layer(xt) * mr.Tensor(w)).sum().backward()
    analytic = float(comm.all_reduce(np.array([np.sum(xt.grad * v)]))[0])
    numeric = (total(x + eps * v) - total(x - eps * v)) / (2 * eps)
    return {"analytic": analytic, "numeric": numeric}


def ddp_step(comm: Any) -> dict[str, np.ndarray]:
    """The step through nn.parallel.DistributedDataParallel, SyncBatchNorm inside."""
    x, y = global_batch()
    model = make_model(True, comm)
    if comm.rank == 1:  # a different start on rank 1: the wrapper broadcasts rank 0's
        for p in model.parameters():
            p.data += 1.0
    ddp = mr.nn.parallel.DistributedDataParallel(model, comm, bucket_cap_mb=0.1)
    train_step(ddp, [(shard(x, comm.rank), shard(y, comm.rank))], ddp.all_reduce_gradients)
    return {k: np.array(v) for k, v in model.state_dict().items()}
