"""The fast CPU backend against the reference, function by function.

``cpu_backend`` promises the reference's contract and results (to rounding)
for every function; here each one runs on the same inputs through both, with
minires's threads on and every threaded path taken (tiny thresholds), so a
block of channels dropped or written twice shows up as a difference.
"""

from __future__ import annotations

import numpy as np
import pytest

from minires.backends import cpu_backend, numpy_backend, parallel


@pytest.fixture(autouse=True)
def threads_everywhere(monkeypatch):
    previous = parallel.get_num_threads()
    parallel.set_num_threads(3)
    monkeypatch.setattr(parallel, "MIN_PARALLEL_WORK", 0)
    monkeypatch.setattr(parallel, "MIN_PARALLEL_PRODUCT", 0)
    yield
    parallel.set_num_threads(previous)


def channel_major(rng, shape):
    """An (N, C, H, W) view of (C, N, H, W) memory, as convolutions produce."""
    n, c, h, w = shape
    return rng.standard_normal((c, n, h, w)).swapaxes(0, 1)


@pytest.mark.parametrize("stride, padding, kernel", [(1, 1, 3), (2, 1, 3), (1, 0, 1), (2, 0, 1)])
def test_conv2d_forward_and_backward(rng, stride, padding, kernel):
    x = channel_major(rng, (3, 5, 7, 6))
    w = rng.standard_normal((4, 5, kernel, kernel))
    b = rng.standard_normal(4)
    args = ((stride, stride), (padding, padding))
    y_ref, saved_ref = numpy_backend.conv2d_forward(x, w, b, *args)
    y_fast, saved_fast = cpu_backend.conv2d_forward(x, w, b, *args)
    np.testing.assert_allclose(y_fast, y_ref, rtol=1e-12, atol=1e-12)
    gy = rng.standard_normal(y_ref.shape)
    needs = (True, True, True)
    for fast, ref in zip(
        cpu_backend.conv2d_backward(gy, saved_fast, needs),
        numpy_backend.conv2d_backward(gy, saved_ref, needs),
    ):
        np.testing.assert_allclose(fast, ref, rtol=1e-12, atol=1e-12)


def test_im2col_and_col2im(rng):
    x = rng.standard_normal((5, 2, 7, 6))
    col = cpu_backend.im2col(x, 3, 2, 2, 1, 1, 0)
    np.testing.assert_array_equal(col, numpy_backend.im2col(x, 3, 2, 2, 1, 1, 0))
    g = rng.standard_normal(col.shape)
    np.testing.assert_allclose(
        cpu_backend.col2im(g, x.shape, 3, 2, 2, 1, 1, 0),
        numpy_backend.col2im(g, x.shape, 3, 2, 2, 1, 1, 0),
        rtol=1e-14,
    )


@pytest.mark.parametrize("running", [False, True])
def test_batch_norm_forward_and_backward(rng, running):
    x = 3 * rng.standard_normal((6, 40)) + 1
    gamma, beta = rng.standard_normal(6), rng.standard_normal(6)
    stats = [(rng.random(6), rng.random(6) + 0.5) if running else (None, None) for _ in range(2)]
    if running:
        stats[1] = (stats[0][0].copy(), stats[0][1].copy())
    fast = cpu_backend.batch_norm_forward(x, gamma, beta, 1e-5, *stats[0], 0.1)
    ref = numpy_backend.batch_norm_forward(x, gamma, beta, 1e-5, *stats[1], 0.1)
    for a, b in zip(fast, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    if running:  # the running statistics were updated in place, identically
        np.testing.assert_allclose(stats[0][0], stats[1][0], rtol=1e-13)
        np.testing.assert_allclose(stats[0][1], stats[1][1], rtol=1e-13)
    gy = rng.standard_normal(x.shape)
    y, xhat, inv_std = ref
    for a, b in zip(
        cpu_backend.batch_norm_backward(gy, xhat, gamma, inv_std),
        numpy_backend.batch_norm_backward(gy, xhat, gamma, inv_std),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["nchw", "channel_major"])
def test_relu_keeps_values_and_layout(rng, layout):
    shape = (3, 4, 5, 6)
    x = channel_major(rng, shape) if layout == "channel_major" else rng.standard_normal(shape)
    y = cpu_backend.relu_forward(x)
    np.testing.assert_array_equal(y, numpy_backend.relu_forward(x))
    assert y.swapaxes(0, 1).flags.c_contiguous == (layout == "channel_major")
    gy = rng.standard_normal(shape)
    np.testing.assert_array_equal(
        cpu_backend.relu_backward(gy, y), numpy_backend.relu_backward(gy, y)
    )
