"""The GPU twin: data-parallel training over NCCL, proved on the CuPy stand-in and on GPUs.

mpi_nccl_worker.py runs on two MPI processes, each with its "GPU", and joins
the NCCL process group; these tests compare what the ranks saved with one
CPU process on the whole batch (distributed_cases.py), in float64:

* one SGD step of a ResNet-8 with SyncBatchNorm (default group) through
  DistributedDataParallel equals the step of one CPU process on 2B, to 1e-10;
* a SyncBatchNorm layer on two shards equals BatchNorm2d on their union
  (outputs, input gradients, gamma/beta gradients once summed, running
  statistics);
* selection: the default group starts as MPI (as a CPU program makes it),
  and DistributedDataParallel, or SyncBatchNorm alone, seeing arrays on the
  GPU, makes it NCCL;
* the gradients went to NCCL in the few buckets of the CPU tests, their
  bytes once; SyncBatchNorm's sums went to NCCL too (3 per layer);
* no gradient visited the host: the gradient all-reduce copied nothing
  between host and device, and the whole step copied to the host only one
  count per SyncBatchNorm layer (and the byte of cross_entropy's label check);
* the collectives on device arrays (sum, max, min; float32, int64, bool, a
  strided view; broadcast; all_gather) and on a host array (over MPI).

Where: the stand-in runs everywhere (tests/cupy_standin: NumPy memory, the
real kernels on CPU threads, NCCL's calls done over MPI with the real raw
pointers and counts). The tests marked ``gpu`` run the same worker and the
same checks with the real CuPy and NCCL: two GPUs for the step, one for the
collectives (a group of one process still makes every NCCL call). They skip,
saying why, without GPUs or NCCL.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import distributed_cases as cases
import numpy as np
import pytest
from mpi_helpers import REPO, run_mpi

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cupy_standin  # noqa: E402
from cuda_harness import harness  # noqa: E402

from minires import distributed as dist  # noqa: E402
from minires.backends import nccl as nccl_backend  # noqa: E402
from minires.checkpoint import load_checkpoint  # noqa: E402
from minires.distributed import GradientBuckets, NCCLCommunicator, SingleProcess  # noqa: E402

TOL = 1e-10
WORKER = str(REPO / "tests" / "mpi_nccl_worker.py")


def run_worker(nproc: int, out: Path, mode: str, kernels: Path | None = None) -> dict:
    """Run the worker on ``nproc`` processes: {"collectives"|"step"|"traffic": [per rank]}."""
    args = [WORKER, str(out), mode] + ([str(kernels)] if kernels else [])
    done = run_mpi(nproc, args, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return {
        name: [dict(np.load(out / f"{name}-rank{r}.npz")) for r in range(nproc)]
        for name in ("collectives", "layer", "step", "traffic")
        if (out / f"{name}-rank0.npz").exists()
    }


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> dict:
    """The worker on 2 processes with the CuPy + NCCL stand-in (kernels built once, here)."""
    if harness.find_compiler() is None:
        pytest.skip("no C++ compiler (g++, clang++ or $CXX) to build the CUDA CPU harness")
    kernels = tmp_path_factory.mktemp("kernels")
    cupy_standin.prebuild_minires_kernels(kernels)
    ranks = run_worker(cases.WORLD, tmp_path_factory.mktemp("nccl"), "standin", kernels)
    return {**ranks, "kernels": kernels}


# --------------------------------------------------------------------------
# The checks, shared by the stand-in and the GPUs
# --------------------------------------------------------------------------


def check_step_equals_one_cpu_process(ranks: dict) -> None:
    x, y = cases.global_batch()
    reference = cases.train_step(cases.make_model(False), [(x, y)])
    for state in ranks["step"]:
        assert state.keys() == reference.keys()
        worst = max(float(np.abs(state[k] - reference[k]).max()) for k in reference)
        assert worst < TOL, worst  # weights and running statistics


def check_sync_bn_layer_equals_batchnorm_on_the_union(ranks: dict) -> None:
    """The layer case of test_distributed_mpi.py, on the GPU; the layer made the group NCCL."""
    assert all(bool(g["group_is_nccl"]) for g in ranks["layer"])
    cases.check_sync_bn_layer_equals_batchnorm_on_the_union(ranks["layer"], TOL)


def check_gradients_went_through_nccl(ranks: dict) -> None:
    params = list(cases.make_model(False).parameters())
    buckets = GradientBuckets(params, SingleProcess(), cases.BUCKET_BYTES)
    n_buckets, grad_bytes = len(buckets.buckets), sum(p.data.nbytes for p in params)
    n_bn = 7  # ResNet-8: the stem and two per block
    assert 1 < n_buckets < len(params) / 2
    for t in ranks["traffic"]:
        assert int(t["buckets"]) == n_buckets
        # The gradient all-reduce: one NCCL call per bucket, every gradient
        # once; over MPI only the tiny host flags of who has a gradient.
        assert int(t["reduce_nccl_all_reduce"]) == n_buckets
        assert int(t["reduce_nccl_all_reduce_bytes"]) == grad_bytes
        assert int(t["reduce_mpi_all_reduce"]) == 1
        # Forward and backward: SyncBatchNorm's sums, 3 NCCL calls per layer
        # (statistics, deviations, backward), and the buffers DDP broadcasts
        # (one call per dtype); no collective over MPI.
        assert int(t["forward_backward_nccl_all_reduce"]) == 3 * n_bn
        assert int(t["forward_backward_nccl_broadcast"]) == 2
        assert int(t["forward_backward_mpi_all_reduce"]) == 0


def check_no_gradient_visits_the_host(ranks: dict) -> None:
    """Stand-in only: its counts of every copy between host and device."""
    n_bn = 7
    for t in ranks["traffic"]:
        assert int(t["reduce_standin_allreduce"]) == int(t["reduce_nccl_all_reduce"])
        assert int(t["reduce_standin_nccl_bytes"]) == int(t["reduce_nccl_all_reduce_bytes"])
        assert int(t["reduce_h2d"]) == 0 and int(t["reduce_d2h"]) == 0
        assert int(t["forward_backward_h2d"]) == 0
        # To the host: one float64 count per SyncBatchNorm layer, and the
        # byte of cross_entropy's check of the labels (a bool); never an
        # array the size of a gradient (the smallest is 16 float64: 128 bytes).
        assert 8 * n_bn <= int(t["forward_backward_d2h_bytes"]) < 8 * n_bn + 16
    for g in ranks["layer"]:  # one layer, alone: its count, 8 bytes
        assert int(g["d2h_bytes"]) == 8


def check_collectives(ranks: dict) -> None:
    W = len(ranks["collectives"])
    base = np.arange(6, dtype=np.float32).reshape(2, 3)
    factors = np.arange(1, W + 1)
    for got in ranks["collectives"]:
        assert got["sum"].dtype == np.float32
        np.testing.assert_array_equal(got["sum"], base * factors.sum())
        np.testing.assert_array_equal(got["max"], base * W)
        np.testing.assert_array_equal(got["min"], base)
        np.testing.assert_array_equal(got["int64"], [sum(10**12 + r for r in range(W))] * 3)
        expected_grid = np.zeros((4, 3))
        expected_grid[:, 1] = factors.sum()  # the strided column, and nothing else
        np.testing.assert_array_equal(got["strided"], expected_grid)
        np.testing.assert_array_equal(got["bool"], [True, False, True])
        np.testing.assert_array_equal(got["broadcast"], np.full(5, W - 1.0))
        np.testing.assert_array_equal(got["gather"], [[r, 10 + r] for r in range(W)])
        np.testing.assert_array_equal(got["host"], [factors.sum()])
        # Six device all-reduces and one broadcast went to NCCL; the host array
        # and the agreement on starting NCCL went over MPI.
        np.testing.assert_array_equal(got["stats_calls"], [6, 1, 2])


# --------------------------------------------------------------------------
# On the stand-in (everywhere)
# --------------------------------------------------------------------------


def test_standin_step_equals_one_cpu_process_on_the_whole_batch(standin):
    check_step_equals_one_cpu_process(standin)


def test_standin_sync_bn_layer_equals_batchnorm_on_the_union(standin):
    check_sync_bn_layer_equals_batchnorm_on_the_union(standin)


def test_standin_every_rank_holds_the_same_weights(standin):
    r0, r1 = standin["step"]
    assert all(np.array_equal(r0[k], r1[k]) for k in r0)


def test_standin_gradients_travel_through_nccl_in_a_few_buckets(standin):
    check_gradients_went_through_nccl(standin)


def test_standin_no_gradient_visits_the_host(standin):
    check_no_gradient_visits_the_host(standin)


def test_standin_collectives_on_device_arrays(standin):
    check_collectives(standin)


def test_standin_train_nproc_2_on_cuda_uses_nccl_and_matches_the_cpu_run(standin, tmp_path):
    """``minires train --device cuda`` on 2 processes (what ``--nproc 2`` starts): NCCL, and
    the weights and losses of the same run on 2 CPU processes (float32, different kernels)."""
    tiny = ["--num-train", "16", "--num-test", "8", "--batch-size", "4", "--epochs", "1"]
    tiny += ["--progress", "none"]
    cli_worker = str(REPO / "tests" / "mpi_nccl_cli_worker.py")
    done = run_mpi(
        2,
        [cli_worker, str(standin["kernels"]), "train", *tiny, "--device", "cuda", "--out", "gpu"],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("collectives over NCCL (device arrays) and MPI") == 1, done.stdout
    done = run_mpi(2, ["-m", "minires", "train", *tiny, "--out", "cpu"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("collectives over MPI") == 1, done.stdout
    gpu, cpu = (load_checkpoint(tmp_path / run / "checkpoint.npz") for run in ("gpu", "cpu"))
    assert gpu["config"]["device"] == "cuda" and cpu["config"]["device"] == "cpu"
    for key, value in cpu["model"].items():
        np.testing.assert_allclose(gpu["model"][key], value, rtol=1e-4, atol=1e-5, err_msg=key)
    metrics = [json.loads((tmp_path / run / "metrics.jsonl").read_text()) for run in ("gpu", "cpu")]
    for key in ("train_loss", "test_loss"):
        assert abs(metrics[0][key] - metrics[1][key]) < 1e-5, key


def test_standin_too_few_or_shared_gpus_fail_on_every_rank_with_the_reason(tmp_path):
    done = run_mpi(2, [WORKER, str(tmp_path), "too-few-gpus"])
    assert done.returncode == 0, done.stdout + done.stderr
    errors = [(tmp_path / f"error-rank{r}.txt").read_text() for r in range(2)]
    assert "needs GPU 1, but the machine has 1 GPU(s)" in errors[1], errors
    assert "another process could not start NCCL" in errors[0], errors
    for r in range(2):
        shared = (tmp_path / f"shared-rank{r}.txt").read_text()
        assert "ranks [0, 1] would share a GPU (0 on" in shared, shared


# --------------------------------------------------------------------------
# Choosing the engine, the calls NCCL gets, and clear errors (one process, no MPI)
# --------------------------------------------------------------------------


@pytest.fixture
def alone(monkeypatch):
    """A process not started by mpiexec, with no default group before or after."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    dist.destroy_process_group()
    yield
    dist.destroy_process_group()


def test_one_process_on_cuda_is_the_group_of_one(alone):
    group = dist.init_process_group(device="cuda")
    assert isinstance(group, SingleProcess)
    assert dist.get_communicator("cuda") is group and dist.with_nccl(group) is group


def test_init_process_group_refuses_unknown_backends_and_devices(alone):
    with pytest.raises(ValueError, match="backend must be one of auto, mpi, nccl, single.*'gloo'"):
        dist.init_process_group("gloo")
    with pytest.raises(ValueError, match="init_process_group: expected device .*'gpu'"):
        dist.init_process_group(device="gpu")


def test_nccl_without_cupy_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` fails
    with pytest.raises(nccl_backend.NcclUnavailable, match=r"minires\[gpu\]"):
        nccl_backend.nccl_module()


class RecordingComm:
    """Stands for cupy.cuda.nccl.NcclCommunicator: records each call's arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name: str):
        return lambda *args: self.calls.append((name, *args))


@pytest.fixture
def recorded():
    """An NcclGroup of 2 ranks on the stand-in, whose NCCL calls are recorded, not made."""
    with cupy_standin.install() as gpu:
        group = nccl_backend.NcclGroup.__new__(nccl_backend.NcclGroup)
        group.nccl, group.comm = cupy_standin.nccl, RecordingComm()
        group.rank, group.world_size = 0, 2
        yield gpu.cupy, group


def test_nccl_gets_pointers_counts_and_its_constants(recorded):
    cp, group = recorded
    nccl = cupy_standin.nccl
    a = cp.zeros((2, 3), dtype=cp.float32)
    group.all_reduce(a, "max")
    group.broadcast(cp.zeros(4, dtype=cp.int64), root=1)
    flags = cp.zeros(3, dtype=bool)
    group.all_reduce(flags, "min")
    out = group.all_gather(cp.zeros(5))
    (reduce, p1, p2, n, dtype, op, stream), bcast, reduce_bool, gather = group.comm.calls
    assert (reduce, p1, p2, n, dtype, op, stream) == (
        "allReduce",
        a.data.ptr,
        a.data.ptr,
        6,
        nccl.NCCL_FLOAT32,
        nccl.NCCL_MAX,
        0,
    )  # in place: a's own memory
    assert bcast[0] == "bcast" and bcast[2:] == (4, nccl.NCCL_INT64, 1, 0)
    assert reduce_bool[1] == flags.data.ptr
    assert reduce_bool[3:6] == (3, nccl.NCCL_UINT8, nccl.NCCL_MIN)
    assert gather[0] == "allGather" and gather[2:] == (out.data.ptr, 5, nccl.NCCL_FLOAT64, 0)
    assert out.shape == (2, 5)


def test_nccl_refuses_host_arrays_and_unknown_dtypes(recorded):
    cp, group = recorded
    with pytest.raises(TypeError, match="NCCL all_reduce: expected a CuPy array, got ndarray"):
        group.all_reduce(np.zeros(3))
    with pytest.raises(TypeError, match="NCCL broadcast: cannot reduce dtype complex64"):
        group.broadcast(cp.zeros(3, dtype=cp.complex64))
    with pytest.raises(TypeError, match="a sum of bools is not a bool; use op='max'"):
        group.all_reduce(cp.zeros(3, dtype=bool))
    assert group.comm.calls == []


def test_an_array_on_another_gpu_is_a_clear_error():
    with cupy_standin.install(device_count=2) as gpu:
        a = gpu.cupy.zeros(3)  # on GPU 0, the current one
        comm = NCCLCommunicator.__new__(NCCLCommunicator)  # as set up on GPU 1, without MPI
        comm.rank, comm.device = 1, 1
        with pytest.raises(dist.DistributedError, match=r"on GPU 0.*uses GPU 1.*device='cuda'"):
            comm.all_reduce(a)


# --------------------------------------------------------------------------
# On real GPUs (marked gpu)
# --------------------------------------------------------------------------


@functools.cache
def _why_no_nccl(gpus: int) -> str:
    """'' when CuPy, NCCL and ``gpus`` GPUs are usable here; else the reason."""
    from minires.backends import cuda_backend, nccl

    if not cuda_backend.gpu_available():
        return cuda_backend.gpu_unavailable_reason()
    try:
        nccl.nccl_module()
    except nccl.NcclUnavailable as e:
        return str(e)
    have = nccl.device_count()
    return "" if have >= gpus else f"needs {gpus} GPUs, this machine has {have}"


def _require_gpus(n: int) -> None:
    why = _why_no_nccl(n)
    if why:
        pytest.skip(f"NCCL on {n} GPU(s) cannot run here: {why}")


@pytest.fixture(scope="module")
def two_gpus(tmp_path_factory) -> dict:
    _require_gpus(2)
    return run_worker(2, tmp_path_factory.mktemp("gpus"), "cuda")


@pytest.mark.gpu
def test_two_gpus_step_equals_one_cpu_process_on_the_whole_batch(two_gpus):
    check_step_equals_one_cpu_process(two_gpus)


@pytest.mark.gpu
def test_two_gpus_sync_bn_layer_equals_batchnorm_on_the_union(two_gpus):
    check_sync_bn_layer_equals_batchnorm_on_the_union(two_gpus)


@pytest.mark.gpu
def test_two_gpus_gradients_travel_through_nccl_in_a_few_buckets(two_gpus):
    check_gradients_went_through_nccl(two_gpus)


@pytest.mark.gpu
def test_two_gpus_collectives_on_device_arrays(two_gpus):
    check_collectives(two_gpus)


@pytest.mark.gpu
def test_one_gpu_makes_every_nccl_call(tmp_path):
    _require_gpus(1)
    check_collectives(run_worker(1, tmp_path, "cuda"))
