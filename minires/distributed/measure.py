"""Measure data-parallel training: ``mpiexec -n N python -m minires.distributed.measure``.

    mpiexec -n 2 python -m minires.distributed.measure --model resnet20 --batch 64
    python -m minires.distributed.measure --model resnet20 --batch 64      # 1 process
    mpiexec -n 2 python -m minires.distributed.measure --allreduce-mb 1.1  # the collective alone

Every process trains the model on its share of a global batch of ``--batch``
random CIFAR-shaped images (float32), with SyncBatchNorm unless --no-sync-bn
and ``cpu_count / N`` threads per process; after warm-up steps, ``--steps``
steps are timed. Rank 0 prints one JSON line: images per second for the
whole group, seconds per step, and what the gradient all-reduce cost per step
(its seconds, its bytes, its calls) and what SyncBatchNorm's small
all-reduces cost. The time of a collective includes any wait for the slower
process. tutorials/08 and docs/benchmarks.md use these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from .. import functional as F
from .. import models, nn, optim
from ..autograd import Tensor
from ..backends.parallel import set_num_threads
from .buckets import GradientBuckets
from .group import init_process_group
from .launch import threads_per_process


def time_allreduce(comm, megabytes: float, repeats: int) -> dict[str, float]:
    """Seconds of one Allreduce of a float32 buffer of ``megabytes`` (median of repeats)."""
    buf = np.ones(max(1, int(megabytes * 2**20 / 4)), np.float32)
    times = []
    for _ in range(repeats + 1):
        comm.barrier()
        t0 = time.perf_counter()
        comm.all_reduce(buf)
        times.append(time.perf_counter() - t0)
    return {"allreduce_mb": buf.nbytes / 2**20, "allreduce_s": float(np.median(times[1:]))}


def time_training(comm, args: argparse.Namespace) -> dict[str, float]:
    """Train ``args.steps`` timed steps; the group's throughput and the all-reduce costs."""
    W = comm.world_size
    if args.batch % W:
        raise SystemExit(f"--batch {args.batch} must be a multiple of the {W} processes")
    model = models.get_model(args.model, num_classes=10)
    if args.sync_bn and W > 1:  # one process: BatchNorm2d, the fast path
        nn.convert_sync_batchnorm(model, comm)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    buckets = GradientBuckets(model.parameters(), comm)
    rng = np.random.default_rng(comm.rank)
    size = args.image_size
    x = rng.normal(size=(args.batch // W, 3, size, size)).astype(np.float32)
    y = rng.integers(0, 10, size=args.batch // W)
    grad_s = 0.0
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            comm.barrier()
            comm.stats.reset()
            grad_s, t0 = 0.0, time.perf_counter()
        loss = F.cross_entropy(model(Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        t1 = time.perf_counter()
        buckets.all_reduce_gradients()
        grad_s += time.perf_counter() - t1
        opt.step()
    comm.barrier()
    step_s = (time.perf_counter() - t0) / args.steps
    n = args.steps
    grad_calls = len(buckets.buckets) + 1
    all_calls = comm.stats.calls.get("all_reduce", 0) / n
    all_bytes = comm.stats.bytes.get("all_reduce", 0) / n
    return {
        "img_per_s": args.batch / step_s,
        "step_s": step_s,
        "grad_allreduce_s": grad_s / n,
        "grad_allreduce_bytes": buckets.nbytes,
        "grad_allreduce_calls": grad_calls,
        "bn_allreduce_calls": all_calls - grad_calls if W > 1 else 0,
        "bn_allreduce_bytes": all_bytes - buckets.nbytes - len(buckets.params) if W > 1 else 0,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(prog="python -m minires.distributed.measure", description=__doc__)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=64, help="global batch (all processes)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-sync-bn", dest="sync_bn", action="store_false")
    p.add_argument("--allreduce-mb", type=float, help="time only an all-reduce of this size")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    comm = init_process_group()
    threads = int(os.environ.get("OPENBLAS_NUM_THREADS", threads_per_process(comm.world_size)))
    set_num_threads(threads)
    result = {"nproc": comm.world_size, "threads_per_process": threads}
    if args.allreduce_mb is not None:
        result.update(time_allreduce(comm, args.allreduce_mb, args.repeats))
    else:
        result.update(model=args.model, batch=args.batch, sync_bn=args.sync_bn)
        result.update(time_training(comm, args))
    if comm.rank == 0:
        print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
