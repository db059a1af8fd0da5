"""minires.parallel: threaded loops give the same results as the serial ones."""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
import minires.functional as F
from minires import parallel
from minires.backends import numpy_backend


@pytest.fixture
def threads():
    """Run a test body with a given thread count, restoring the default after."""
    before = parallel.get_num_threads()
    yield parallel.set_num_threads
    parallel.set_num_threads(before)


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


def test_matmul_helpers(threads) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((8, 300)), rng.standard_normal((300, 900))
    c = rng.standard_normal((5, 900))
    threads(2)
    np.testing.assert_allclose(parallel.matmul(a, b), a @ b, rtol=1e-12)
    np.testing.assert_allclose(parallel.matmul_t(a @ b, c), (a @ b) @ c.T, rtol=1e-12)


def _training_step_outputs(seed: int = 0) -> list[np.ndarray]:
    mr.manual_seed(seed)
    model = mr.models.cifar_resnet(8, shortcut="B")
    rng = np.random.default_rng(seed)
    x = mr.tensor(rng.standard_normal((4, 3, 16, 16)).astype(np.float32))
    loss = F.cross_entropy(model(x), rng.integers(0, 10, 4))
    loss.backward()
    return [loss.numpy()] + [p.grad for p in model.parameters()]


def test_threaded_step_equals_serial_step(threads) -> None:
    if not parallel._blas_controller():
        pytest.skip("threadpoolctl is not installed: minires runs serially")
    threads(1)
    serial = _training_step_outputs()
    threads(2)
    assert parallel.enabled()
    threaded = _training_step_outputs()
    for s, t in zip(serial, threaded):
        np.testing.assert_allclose(t, s, rtol=1e-5, atol=1e-6)


def test_batch_norm_and_relu_are_bitwise_equal_across_thread_counts(threads) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 50_000)).astype(np.float32)
    gamma = rng.standard_normal(6).astype(np.float32)
    beta = rng.standard_normal(6).astype(np.float32)
    results = []
    for n in (1, 2):
        threads(n)
        y, xhat, inv_std = numpy_backend.batch_norm_forward(x, gamma, beta, 1e-5, None, None, 0.1)
        gx = numpy_backend.batch_norm_backward(y, xhat, gamma, inv_std)[0]
        r = numpy_backend.relu_forward(y)
        results.append((y, gx, r, numpy_backend.relu_backward(x, r)))
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_without_threadpoolctl_everything_runs_serially(threads, monkeypatch) -> None:
    monkeypatch.setattr(parallel, "_controller", False)  # as if it were not installed
    threads(2)
    assert not parallel.enabled()
    outputs = _training_step_outputs()
    assert np.isfinite(outputs[0]).all()
