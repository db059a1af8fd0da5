"""Run by test_distributed_nccl.py: ``mpiexec -n N python mpi_nccl_worker.py OUT MODE [KERNELS]``.

MODE "standin": CuPy and NCCL are the test stand-ins (tests/cupy_standin:
NumPy memory, the real kernels/*.cu on CPU threads, NCCL's collectives over
MPI between these processes); KERNELS is the folder where the test built the
kernels, which every process loads. MODE "cuda": the real CuPy and NCCL, one
GPU per process. MODE "too-few-gpus": two processes on a stand-in with one
GPU, which must both fail to start NCCL, with the reason (error-rank<r>.txt),
then both on GPU 0 of two (shared-rank<r>.txt).

Each rank joins the process group for the GPU, then saves to OUT:

* collectives-rank<r>.npz: all_reduce (sum, max, min; float32, int64, bool,
  a non-contiguous view), broadcast and all_gather of device arrays, and an
  all_reduce of a host array (which goes over MPI);
* with 2 processes, layer-rank<r>.npz: distributed_cases's SyncBatchNorm
  layer case on the GPU, with the default group left for the layer to make
  NCCL; step-rank<r>.npz: the state after one SGD step of
  distributed_cases's float64 ResNet-8 with SyncBatchNorm (default group) on
  the GPU, wrapped in DistributedDataParallel, on this rank's shard; and
  traffic-rank<r>.npz: the group's collectives during the whole step and
  during the gradient all-reduce alone, and (stand-in) the copies between
  host and device and the NCCL calls it saw in each.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cupy_standin  # noqa: E402
import distributed_cases as cases  # noqa: E402

import minires as mr  # noqa: E402
import minires.functional as F  # noqa: E402
from minires import distributed as dist  # noqa: E402
from minires.backends.device import to_numpy  # noqa: E402


def collectives(comm: dist.Communicator) -> dict[str, np.ndarray]:
    import cupy as cp

    r = comm.rank
    out = {}
    base = cp.arange(6, dtype=cp.float32).reshape(2, 3)
    for op in ("sum", "max", "min"):
        a = base * (r + 1)
        out[op] = to_numpy(comm.all_reduce(a, op))
    ints = cp.full(3, 10**12 + r, dtype=cp.int64)  # past float32's and int32's range
    out["int64"] = to_numpy(comm.all_reduce(ints))
    grid = cp.zeros((4, 3))
    column = grid[:, 1]  # not contiguous
    column[...] = r + 1
    comm.all_reduce(column)
    out["strided"] = to_numpy(grid)
    flags = cp.array([r == 0, False, True])
    out["bool"] = to_numpy(comm.all_reduce(flags, "max"))
    src = comm.world_size - 1
    out["broadcast"] = to_numpy(comm.broadcast(cp.full(5, float(r)), src=src))
    out["gather"] = to_numpy(comm.all_gather(cp.array([r, 10 + r], dtype=cp.float64)))
    out["host"] = comm.all_reduce(np.array([1.0 + r]))
    out["stats_calls"] = np.array(
        [comm.stats.calls.get(k, 0) for k in ("nccl_all_reduce", "nccl_broadcast", "all_reduce")]
    )
    return out


def cpu_group() -> dist.Communicator:
    """A fresh default group as a CPU program makes it: MPI, no NCCL yet."""
    dist.destroy_process_group()
    group = dist.init_process_group()
    assert group.name == "mpi", group
    return group


def sync_bn_layer(counts) -> dict[str, np.ndarray]:
    """distributed_cases.sync_bn_layer_case on the GPU, the default group left to the layer.

    The default group is MPI: SyncBatchNorm, seeing its input on the GPU,
    must turn it into NCCL, so that its sums stay on the device.
    """
    import cupy as cp

    cpu_group()
    rng = np.random.default_rng(2)  # the draws of sync_bn_layer_case
    x = rng.normal(3.0, 1.5, size=(cases.WORLD * 3, 5, 4, 3))
    w = rng.normal(size=x.shape)
    layer = mr.nn.SyncBatchNorm(5).to(np.float64)
    layer.weight.data[:] = rng.normal(size=5)
    layer.bias.data[:] = rng.normal(size=5)
    layer.to("cuda")
    r = dist.get_rank()
    mine = slice(r * 3, (r + 1) * 3)
    xt, wt = mr.Tensor(cp.asarray(x[mine]), requires_grad=True), mr.Tensor(cp.asarray(w[mine]))
    if counts is not None:
        counts.reset()
    y = layer(xt)
    (y * wt).sum().backward()
    d2h_bytes = -1 if counts is None else counts.d2h_bytes
    got = {
        "y": y.data,
        "gx": xt.grad,
        "ggamma": layer.weight.grad,
        "gbeta": layer.bias.grad,
        "running_mean": layer.running_mean,
        "running_var": layer.running_var,
    }
    got = {k: to_numpy(v) for k, v in got.items()}
    got["group_is_nccl"] = np.array(dist.get_communicator().name == "nccl")
    got["d2h_bytes"] = np.array(d2h_bytes)
    return got


def step(counts) -> tuple[dict, dict]:
    """One SGD step through DistributedDataParallel: (the state, the traffic).

    The default group is MPI: the wrapper, seeing the model on the GPU, must
    turn it into NCCL.
    """
    import cupy as cp

    cpu_group()
    x, y = cases.global_batch()
    model = cases.make_model(True)  # SyncBatchNorm over the default group
    model.to("cuda")
    ddp = mr.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=cases.BUCKET_BYTES / 2**20)
    comm = ddp.process_group
    assert comm.name == "nccl" and comm is dist.get_communicator(), comm
    opt = mr.optim.SGD(
        model.parameters(), cases.LR, momentum=cases.MOMENTUM, weight_decay=cases.WEIGHT_DECAY
    )
    xs, ys = cp.asarray(cases.shard(x, comm.rank)), cp.asarray(cases.shard(y, comm.rank))
    traffic: dict[str, int] = {"buckets": len(ddp.buckets.buckets)}
    _reset(comm, counts)
    opt.zero_grad()
    F.cross_entropy(ddp(mr.Tensor(xs)), ys).backward()
    traffic.update(_traffic(comm, counts, "forward_backward"))
    ddp.all_reduce_gradients()
    traffic.update(_traffic(comm, counts, "reduce"))
    opt.step()
    state = {k: to_numpy(v) for k, v in model.state_dict().items()}
    return state, traffic


def _reset(comm: dist.Communicator, counts) -> None:
    comm.stats.reset()
    if counts is not None:
        counts.reset()


def _traffic(comm: dist.Communicator, counts, phase: str) -> dict[str, int]:
    """What the group and (stand-in) the device did since the last call; then reset."""
    s = comm.stats
    got = {
        f"{phase}_nccl_all_reduce": s.calls.get("nccl_all_reduce", 0),
        f"{phase}_nccl_all_reduce_bytes": s.bytes.get("nccl_all_reduce", 0),
        f"{phase}_nccl_broadcast": s.calls.get("nccl_broadcast", 0),
        f"{phase}_mpi_all_reduce": s.calls.get("all_reduce", 0),
    }
    if counts is not None:
        got[f"{phase}_h2d"] = counts.total("h2d")
        got[f"{phase}_d2h"] = counts.total("d2h")
        got[f"{phase}_d2h_bytes"] = counts.d2h_bytes
        got[f"{phase}_standin_allreduce"] = counts.by("nccl")["allReduce"]
        got[f"{phase}_standin_nccl_bytes"] = counts.nccl_bytes
    _reset(comm, counts)
    return got


def too_few_gpus(out: Path) -> None:
    """Two processes, one stand-in GPU; then both told to use GPU 0 of two.

    Every rank must raise, with the reason (none may wait forever).
    """
    with cupy_standin.install(device_count=1):
        try:
            dist.init_process_group(device="cuda")
        except dist.DistributedError as e:
            (out / f"error-rank{dist.get_rank()}.txt").write_text(str(e))
    with cupy_standin.install(device_count=2):
        try:
            dist.NCCLCommunicator(device=0)
        except dist.DistributedError as e:
            (out / f"shared-rank{dist.get_rank()}.txt").write_text(str(e))


def main(out: Path, mode: str, kernels: Path | None) -> None:
    mr.set_num_threads(1)
    if mode == "too-few-gpus":
        return too_few_gpus(out)
    if mode == "standin":
        cupy_standin.prebuild_minires_kernels(kernels)
        gpu = cupy_standin.install(device_count=2)
    else:
        gpu = contextlib.nullcontext()
    with gpu as standin:
        # With one process "auto" is the group of one: ask for NCCL by name,
        # so that a single GPU still runs every NCCL call.
        many = dist.launched_world_size() > 1
        comm = dist.init_process_group("auto" if many else "nccl", device="cuda")
        assert comm.name == "nccl", comm
        r = comm.rank
        np.savez(out / f"collectives-rank{r}.npz", **collectives(comm))
        if comm.world_size == cases.WORLD:
            counts = standin.counts if standin else None
            np.savez(out / f"layer-rank{r}.npz", **sync_bn_layer(counts))
            state, traffic = step(counts)
            np.savez(out / f"step-rank{r}.npz", **state)
            np.savez(out / f"traffic-rank{r}.npz", **traffic)
        comm.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]) if len(sys.argv) > 3 else None)
