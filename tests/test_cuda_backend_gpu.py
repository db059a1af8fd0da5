"""cuda_backend on a real GPU equals numpy_backend, function by function.

Skipped, with the reason, where cuda_backend.gpu_available() is False (no
CuPy, no GPU, or no working NVRTC). The checks are those of
tests/test_cuda_kernels_cpu.py (tests/cuda_harness/cases.py), here with CuPy
arrays, the kernels compiled by NVRTC and cuda_backend's real launch sizes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_harness.cases import (  # noqa: E402
    DTYPES,
    BackendChecks,
    Device,
    dilated_geometry,
    pool_modes,
    window_geometry,
)

from minires.backends import cuda_backend  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not cuda_backend.gpu_available(), reason=cuda_backend.gpu_unavailable_reason()
    ),
]

dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
seeds = st.integers(0, 2**32 - 1)


@pytest.fixture(scope="module")
def checks() -> BackendChecks:
    return BackendChecks(cuda_backend, Device(cuda_backend.to_gpu, cuda_backend.to_cpu))


# --------------------------------------------------------------------------
# Every contract function, on shapes drawn by hypothesis
# --------------------------------------------------------------------------


@dtypes
@given(geometry=window_geometry(), C=st.integers(1, 3), N=st.integers(1, 3), seed=seeds)
def test_im2col_col2im(checks, dtype, geometry, C, N, seed):
    H, W, kh, kw, sh, sw, ph, pw = geometry
    checks.im2col(np.random.default_rng(seed), dtype, C, N, H, W, kh, kw, sh, sw, ph, pw)


@dtypes
@given(geometry=dilated_geometry(), C=st.integers(1, 3), N=st.integers(1, 3), seed=seeds)
def test_im2col_col2im_dilated(checks, dtype, geometry, C, N, seed):
    H, W, kh, kw, sh, sw, ph, pw, dh, dw = geometry
    checks.im2col(np.random.default_rng(seed), dtype, C, N, H, W, kh, kw, sh, sw, ph, pw, dh, dw)


@dtypes
@given(
    geometry=dilated_geometry(max_size=7),
    N=st.integers(1, 3),
    groups=st.sampled_from([1, 2, 3, 8]),
    per_group_in=st.integers(1, 3),
    per_group_out=st.integers(1, 3),
    seed=seeds,
)
def test_conv2d_groups_and_dilation(
    checks, dtype, geometry, N, groups, per_group_in, per_group_out, seed
):
    rng = np.random.default_rng(seed)
    checks.conv2d(rng, dtype, N, groups, per_group_in, per_group_out, geometry)


@dtypes
@given(
    C=st.integers(1, 5),
    M=st.sampled_from([1, 2, 7, 255, 256, 257, 3000]),
    running=st.booleans(),
    relu=st.booleans(),
    seed=seeds,
)
def test_batch_norm(checks, dtype, C, M, running, relu, seed):
    checks.batch_norm(np.random.default_rng(seed), dtype, C, M, running, relu=relu)


@dtypes
@given(
    sizes=st.lists(st.sampled_from([0, 1, 16, 432, 2304, 9216, 36864]), min_size=1, max_size=8),
    nesterov=st.booleans(),
    maximize=st.booleans(),
    seed=seeds,
)
def test_sgd_step(checks, dtype, sizes, nesterov, maximize, seed):
    """Every parameter in one launch, NumPy's bits over several steps (resnet20's tensor sizes)."""
    hyper = (0.1, 0.9, 0.0, 5e-4, nesterov, maximize)
    checks.sgd(np.random.default_rng(seed), dtype, sizes, hyper)


@dtypes
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple), seed=seeds)
def test_relu(checks, dtype, shape, seed):
    checks.relu(np.random.default_rng(seed), dtype, shape)


@dtypes
@given(geometry=window_geometry(), P=st.integers(1, 4), ties=st.booleans(), seed=seeds)
def test_max_pool(checks, dtype, geometry, P, ties, seed):
    checks.max_pool(np.random.default_rng(seed), dtype, P, *geometry, ties)


@dtypes
@given(geometry=window_geometry(), P=st.integers(1, 4), seed=seeds)
def test_avg_pool(checks, dtype, geometry, P, seed):
    checks.avg_pool(np.random.default_rng(seed), dtype, P, *geometry)


@dtypes
@given(modes=pool_modes(), P=st.integers(1, 4), ties=st.booleans(), seed=seeds)
def test_pools_ceil_mode_and_count_include_pad(checks, dtype, modes, P, ties, seed):
    *geometry, ceil_mode, count_include_pad = modes
    rng = np.random.default_rng(seed)
    checks.max_pool(rng, dtype, P, *geometry, ties, 0.0, ceil_mode)
    checks.avg_pool(rng, dtype, P, *geometry, ceil_mode, count_include_pad)


@dtypes
@given(
    N=st.integers(1, 9),
    K=st.integers(1, 12),
    scale=st.sampled_from([0.1, 3.0, 100.0]),
    label_dtype=st.sampled_from([np.int64, np.int32]),
    seed=seeds,
)
def test_cross_entropy(checks, dtype, N, K, scale, label_dtype, seed):
    checks.cross_entropy(np.random.default_rng(seed), dtype, N, K, scale, label_dtype)


@dtypes
@given(
    N=st.integers(1, 9),
    K=st.integers(1, 12),
    weighted=st.booleans(),
    ignored=st.sampled_from([0.0, 0.3, 1.0]),
    label_smoothing=st.sampled_from([0.0, 0.1, 1.0]),
    ignore_index=st.sampled_from([-100, 0, 3]),
    seed=seeds,
)
def test_cross_entropy_weights_ignore_index_smoothing(
    checks, dtype, N, K, weighted, ignored, label_smoothing, ignore_index, seed
):
    rng = np.random.default_rng(seed)
    args = (N, K, 3.0, np.int64, weighted, ignored, label_smoothing, ignore_index)
    checks.cross_entropy(rng, dtype, *args)


# --------------------------------------------------------------------------
# Sizes the CPU harness cannot afford: many blocks, full-size launches
# --------------------------------------------------------------------------


@dtypes
def test_resnet_sized_layers(checks, dtype):
    """A CIFAR-ResNet stage at batch 16, and a grid larger than MAX_BLOCKS * THREADS."""
    rng = np.random.default_rng(0)
    checks.im2col(rng, dtype, 16, 16, 32, 32, 3, 3, 1, 1, 1, 1)
    checks.im2col(rng, dtype, 16, 8, 32, 32, 3, 3, 2, 2, 1, 1)
    checks.batch_norm(rng, dtype, 16, 16 * 32 * 32, True)
    checks.batch_norm(rng, dtype, 16, 128 * 32 * 32, True, relu=True)  # resnet20, batch 128
    checks.batch_norm(rng, dtype, 2048, 32 * 7 * 7, True, relu=True)  # resnet50's last layer
    checks.max_pool(rng, dtype, 64, 32, 32, 3, 3, 2, 2, 1, 1, False)
    checks.avg_pool(rng, dtype, 64, 8, 8, 8, 8, 1, 1, 0, 0)
    checks.cross_entropy(rng, dtype, 128, 1000)
    checks.cross_entropy(rng, dtype, 128, 1000, 3.0, np.int64, True, 0.2, 0.1)
    checks.conv2d(rng, dtype, 8, 32, 4, 4, (16, 16, 3, 3, 1, 1, 1, 1, 1, 1))  # ResNeXt-like
    checks.conv2d(rng, dtype, 8, 64, 1, 1, (16, 16, 3, 3, 2, 2, 2, 2, 2, 2))  # depthwise
    checks.max_pool(rng, dtype, 64, 32, 32, 3, 3, 2, 2, 1, 1, False, 0.0, True)
    checks.avg_pool(rng, dtype, 64, 31, 31, 3, 3, 2, 2, 1, 1, True, False)
    big = cuda_backend.MAX_BLOCKS * cuda_backend.THREADS * 2 + 3
    checks.relu(rng, dtype, (big,))


def test_col2im_and_batch_norm_are_deterministic():
    """Gathers and fixed reduction trees: the same bits on every run."""
    import cupy

    rng = np.random.default_rng(1)
    col = cupy.asarray(rng.standard_normal((16 * 9, 4 * 16 * 16)).astype(np.float32))
    a = cuda_backend.col2im(col, (16, 4, 16, 16), 3, 3, 1, 1, 1, 1)
    b = cuda_backend.col2im(col, (16, 4, 16, 16), 3, 3, 1, 1, 1, 1)
    assert bool((a == b).all())
    x = cupy.asarray(rng.standard_normal((8, 50_000)).astype(np.float32))
    g, z = cupy.ones(8, np.float32), cupy.zeros(8, np.float32)
    # Many blocks per channel, combined in a fixed order by whichever finishes last.
    r1 = cuda_backend.batch_norm_forward(x, g, z, 1e-5, None, None, 0.1, relu=True)
    r2 = cuda_backend.batch_norm_forward(x, g, z, 1e-5, None, None, 0.1, relu=True)
    for u, v in zip(r1, r2):
        assert bool((u == v).all())
    gy = cupy.asarray(rng.standard_normal((8, 50_000)).astype(np.float32))
    b1 = cuda_backend.batch_norm_backward(gy, r1[1], g, r1[2], y=r1[0])
    b2 = cuda_backend.batch_norm_backward(gy, r1[1], g, r1[2], y=r1[0])
    for u, v in zip(b1, b2):
        assert bool((u == v).all())


def test_kernels_are_compiled_once_per_device_and_file():
    x = cuda_backend.to_gpu(np.ones((2, 3), np.float32))
    cuda_backend.relu_forward(x)
    before = cuda_backend._module.cache_info()
    cuda_backend.relu_forward(x)
    cuda_backend.relu_backward(x, x)
    after = cuda_backend._module.cache_info()
    assert after.misses == before.misses
    assert cuda_backend._kernel("relu_forward", np.float32) is cuda_backend._kernel(
        "relu_forward", np.float32
    )


def test_running_stats_update_in_place():
    rng = np.random.default_rng(2)
    x = cuda_backend.to_gpu(rng.standard_normal((3, 10)))
    rm, rv = cuda_backend.to_gpu(np.zeros(3)), cuda_backend.to_gpu(np.ones(3))
    rm_ptr = rm.data.ptr
    g, b = cuda_backend.to_gpu(np.ones(3)), cuda_backend.to_gpu(np.zeros(3))
    cuda_backend.batch_norm_forward(x, g, b, 1e-5, rm, rv, 0.1)
    assert rm.data.ptr == rm_ptr
    xh = cuda_backend.to_cpu(x)
    np.testing.assert_allclose(cuda_backend.to_cpu(rm), 0.1 * xh.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(
        cuda_backend.to_cpu(rv), 0.9 + 0.1 * xh.var(axis=1, ddof=1), rtol=1e-12
    )


def test_numpy_inputs_are_refused():
    with pytest.raises(TypeError, match="to_gpu"):
        cuda_backend.relu_forward(np.ones(3, np.float32))


def test_gpu_is_reported_available():
    assert cuda_backend.gpu_unavailable_reason() == ""
    cuda_backend.require_gpu()
