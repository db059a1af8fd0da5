"""minires.parallel: threaded loops give the same results as the serial ones."""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
import minires.functional as F
from minires.backends import cpu_backend, parallel, shifted_conv


@pytest.fixture
def threads():
    """Run a test body with a given thread count, restoring the default after."""
    before = parallel.get_num_threads()
    yield parallel.set_num_threads
    parallel.set_num_threads(before)


def needs_threadpoolctl() -> None:
    """Skip where minires can only run serially: a threaded-equals-serial check
    would then compare the serial path with itself."""
    if not parallel._blas_controller():
        pytest.skip("threadpoolctl (or a BLAS it can limit) is missing: minires runs serially")


@pytest.fixture
def threaded_loops(monkeypatch) -> set[str]:
    """Make every loop of a small test go parallel, and record which ones did.

    The tests' arrays are far below MIN_PARALLEL_WORK and MIN_PARALLEL_PRODUCT,
    and a convolution of them is far below one shifted_conv chunk, so each loop
    would otherwise run serially or as one chunk on one worker. With the
    thresholds at 0 and 256-column chunks, the loops split into several uneven
    shares. Returns where the loops that went through run_workers came from:
    the name of the minires.parallel function, or "shifted_conv" for the
    convolution's chunks.
    """
    monkeypatch.setattr(parallel, "MIN_PARALLEL_WORK", 0)
    monkeypatch.setattr(parallel, "MIN_PARALLEL_PRODUCT", 0)
    monkeypatch.setattr(shifted_conv, "CHUNK_VALUES", 1)  # _chunk's minimum: 256 columns
    seen: set[str] = set()
    run_workers = parallel.run_workers

    def recording(work):
        if work.__module__ == shifted_conv.__name__:
            seen.add("shifted_conv")
        else:
            seen.add(work.__qualname__.split(".")[0])
        return run_workers(work)

    monkeypatch.setattr(parallel, "run_workers", recording)
    return seen


def test_for_rows_visits_every_row_once(threads) -> None:
    threads(3)
    seen = np.zeros(10, dtype=int)

    def body(rows: slice) -> None:
        seen[rows] += 1

    parallel.for_rows(10, body)  # small job: may run serially, still exact
    parallel.for_rows(10, body, work=10**7)
    assert seen.tolist() == [2] * 10


def test_set_num_threads_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="set_num_threads"):
        parallel.set_num_threads(0)


def test_matmul_helpers(threads, threaded_loops) -> None:
    needs_threadpoolctl()
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((8, 300)), rng.standard_normal((300, 901))
    c = rng.standard_normal((5, 901))
    threads(3)  # 901 columns: uneven shares
    np.testing.assert_allclose(parallel.matmul(a, b), a @ b, rtol=1e-12)
    np.testing.assert_allclose(parallel.matmul_t(a @ b, c), (a @ b) @ c.T, rtol=1e-12)
    assert threaded_loops == {"matmul", "matmul_t"}


def _training_step_outputs(seed: int = 0) -> list[np.ndarray]:
    mr.manual_seed(seed)
    model = mr.models.cifar_resnet(8, shortcut="B")
    rng = np.random.default_rng(seed)
    x = mr.tensor(rng.standard_normal((4, 3, 16, 16)).astype(np.float32))
    loss = F.cross_entropy(model(x), rng.integers(0, 10, 4))
    loss.backward()
    return [loss.numpy()] + [p.grad for p in model.parameters()]


def test_threaded_step_equals_serial_step(threads, threaded_loops) -> None:
    needs_threadpoolctl()
    threads(1)
    serial = _training_step_outputs()
    assert not threaded_loops
    threads(3)  # chunks and channels do not divide evenly among 3 workers
    assert parallel.enabled()
    threaded = _training_step_outputs()
    # Every threaded loop ran: the convolutions' chunk loops, the strided
    # convolutions' GEMMs, and the channel loops of im2col, col2im,
    # BatchNorm, ReLU and the padding copies.
    assert threaded_loops == {"shifted_conv", "matmul", "matmul_t", "for_rows"}
    for s, t in zip(serial, threaded, strict=True):
        np.testing.assert_allclose(t, s, rtol=1e-5, atol=1e-6)


def test_batch_norm_and_relu_are_bitwise_equal_across_thread_counts(threads) -> None:
    needs_threadpoolctl()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 50_000)).astype(np.float32)
    gamma = rng.standard_normal(6).astype(np.float32)
    beta = rng.standard_normal(6).astype(np.float32)
    results = []
    for n in (1, 2):
        threads(n)
        y, xhat, inv_std = cpu_backend.batch_norm_forward(x, gamma, beta, 1e-5, None, None, 0.1)
        gx = cpu_backend.batch_norm_backward(y, xhat, gamma, inv_std)[0]
        r = cpu_backend.relu_forward(y)
        results.append((y, gx, r, cpu_backend.relu_backward(x, r)))
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_without_threadpoolctl_everything_runs_serially(
    threads, threaded_loops, monkeypatch
) -> None:
    threads(1)
    serial = _training_step_outputs()
    monkeypatch.setattr(parallel, "_controller", False)  # as if it were not installed
    threads(2)
    assert not parallel.enabled()
    outputs = _training_step_outputs()
    assert not threaded_loops
    for s, t in zip(serial, outputs, strict=True):
        np.testing.assert_array_equal(t, s)


def test_workers_run_blas_single_threaded(threads) -> None:
    """Each worker's GEMM must not start BLAS threads of its own (oversubscription)."""
    needs_threadpoolctl()
    blas = parallel._blas_controller()

    def blas_threads() -> list[int]:
        return [lib.num_threads for lib in blas.select(user_api="blas").lib_controllers]

    threads(2)
    seen = []
    with blas.limit(limits=2, user_api="blas"):
        if min(blas_threads()) < 2:
            pytest.skip("this BLAS cannot be given 2 threads")
        parallel.for_rows(4, lambda rows: seen.append(blas_threads()), work=10**7)
        after = blas_threads()
    assert seen == [[1] * len(after)] * 2
    assert min(after) == 2  # the caller's setting is back once the workers are done


def test_workers_follow_the_callers_errstate(threads) -> None:
    needs_threadpoolctl()
    threads(2)
    big = np.full((4, 8), 3e38, dtype=np.float32)
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        parallel.for_rows(4, lambda rows: big[rows] * np.float32(10), work=10**7)
