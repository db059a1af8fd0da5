"""The CUDA backend, kernels included, run on the CPU and compared with NumPy.

No GPU needed: kernels/*.cu are compiled by a C++ compiler against
tests/cuda_harness/cuda_cpu.h (CUDA's threads, blocks, shared memory and
__syncthreads mapped onto std::thread), and cuda_backend.py itself runs on
NumPy arrays with those kernels (tests/cuda_harness/harness.py explains how).
So each test exercises the Python side (argument order and types, output
shapes, grid sizes) and the kernel side (index arithmetic, grid-stride loops,
reductions) of one contract function, against numpy_backend.

Launch sizes are drawn small and odd (1 to 64 threads, 1 to 5 blocks), so
the grid-stride loops and the block reductions are exercised with far fewer
threads than elements, and with more threads than elements.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_harness import harness  # noqa: E402
from cuda_harness.cases import (  # noqa: E402
    DTYPES,
    BackendChecks,
    Device,
    dilated_geometry,
    pool_modes,
    window_geometry,
)

from minires.backends import cuda_backend, numpy_backend  # noqa: E402


@pytest.fixture(scope="session")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> harness.CpuKernels:
    """kernels/*.cu and the harness self-test, compiled once per session."""
    if harness.find_compiler() is None:
        pytest.skip("no C++ compiler (g++, clang++ or $CXX) to build the CUDA CPU harness")
    return harness.build_library(tmp_path_factory.mktemp("cuda_cpu"))


CPU = Device(to_device=np.array, to_host=np.asarray)  # np.array copies

launch_sizes = st.fixed_dictionaries(
    {
        "threads": st.sampled_from([1, 2, 7, 32, 64]),
        "max_blocks": st.sampled_from([1, 2, 3, 5]),
        "reduce_threads": st.sampled_from([1, 2, 8, 32, 64]),  # powers of two
    }
)
seeds = st.integers(0, 2**32 - 1)
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])


def run_checks(kernels: harness.CpuKernels, launch: dict, check: str, *args, **kwargs) -> None:
    with harness.cpu_cuda_backend(cuda_backend, kernels, **launch):
        getattr(BackendChecks(cuda_backend, CPU), check)(*args, **kwargs)


# --------------------------------------------------------------------------
# Every contract function, on shapes drawn by hypothesis
# --------------------------------------------------------------------------


@dtypes
@given(
    geometry=window_geometry(),
    C=st.integers(1, 3),
    N=st.integers(1, 3),
    launch=launch_sizes,
    seed=seeds,
)
def test_im2col_col2im(kernels, dtype, geometry, C, N, launch, seed):
    H, W, kh, kw, sh, sw, ph, pw = geometry
    rng = np.random.default_rng(seed)
    run_checks(kernels, launch, "im2col", rng, dtype, C, N, H, W, kh, kw, sh, sw, ph, pw)


@dtypes
@given(
    geometry=dilated_geometry(),
    C=st.integers(1, 3),
    N=st.integers(1, 2),
    launch=launch_sizes,
    seed=seeds,
)
def test_im2col_col2im_dilated(kernels, dtype, geometry, C, N, launch, seed):
    """Dilation 1..3: offset (i, j) reads i*dh rows and j*dw columns into its window."""
    H, W, kh, kw, sh, sw, ph, pw, dh, dw = geometry
    rng = np.random.default_rng(seed)
    run_checks(kernels, launch, "im2col", rng, dtype, C, N, H, W, kh, kw, sh, sw, ph, pw, dh, dw)


@dtypes
@given(
    geometry=dilated_geometry(max_size=6),
    N=st.integers(1, 2),
    groups=st.integers(1, 3),
    per_group_in=st.integers(1, 2),
    per_group_out=st.integers(1, 2),
    launch=launch_sizes,
    seed=seeds,
)
def test_conv2d_groups_and_dilation(
    kernels, dtype, geometry, N, groups, per_group_in, per_group_out, launch, seed
):
    """cuda_backend.conv2d_forward/backward (kernels and batched GEMM) equal numpy_backend's."""
    rng = np.random.default_rng(seed)
    args = (rng, dtype, N, groups, per_group_in, per_group_out, geometry)
    run_checks(kernels, launch, "conv2d", *args)


@dtypes
@given(
    C=st.integers(1, 5),
    M=st.integers(1, 200),
    running=st.booleans(),
    momentum=st.sampled_from([0.1, 0.01, 1.0]),
    relu=st.booleans(),
    per_thread=st.sampled_from([1, 3, 10**6]),
    launch=launch_sizes,
    seed=seeds,
)
def test_batch_norm(kernels, dtype, C, M, running, momentum, relu, per_thread, launch, seed):
    """per_thread sets BN_MIN_PER_THREAD: 1 cuts every row into as many
    chunks as the block has threads (up to 200 chunks per channel, combined
    by the last block), 10**6 keeps one chunk per channel."""
    rng = np.random.default_rng(seed)
    saved = cuda_backend.BN_MIN_PER_THREAD
    cuda_backend.BN_MIN_PER_THREAD = per_thread
    try:
        args = (rng, dtype, C, M, running, momentum)
        run_checks(kernels, launch, "batch_norm", *args, relu=relu)
    finally:
        cuda_backend.BN_MIN_PER_THREAD = saved


sgd_hyper = st.one_of(
    st.tuples(  # (lr, momentum, dampening, weight_decay, nesterov, maximize)
        st.sampled_from([0.1, 0.01]),
        st.sampled_from([0.0, 0.9]),
        st.sampled_from([0.0, 0.3]),
        st.sampled_from([0.0, 5e-4]),
        st.just(False),
        st.booleans(),
    ),
    st.tuples(
        st.just(0.05), st.just(0.9), st.just(0.0), st.just(1e-4), st.just(True), st.booleans()
    ),
)


@dtypes
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    hyper=sgd_hyper,
    launch=launch_sizes,
    seed=seeds,
)
def test_sgd_step(kernels, dtype, sizes, hyper, launch, seed):
    rng = np.random.default_rng(seed)
    run_checks(kernels, launch, "sgd", rng, dtype, sizes, hyper)


@dtypes
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
    launch=launch_sizes,
    seed=seeds,
)
def test_relu(kernels, dtype, shape, launch, seed):
    run_checks(kernels, launch, "relu", np.random.default_rng(seed), dtype, shape)


@dtypes
@given(
    shape=st.lists(st.integers(1, 4), min_size=2, max_size=4).map(tuple),
    launch=launch_sizes,
    seed=seeds,
)
def test_relu_keeps_channel_major_layout(kernels, dtype, shape, launch, seed):
    """Channel-major activations (conv2d's and batch_norm's outputs) stay so
    through ReLU, forward and backward, and the kernels read and write that
    memory as it is: no copy of any input, outputs in the inputs' layout."""
    rng = np.random.default_rng(seed)
    with harness.cpu_cuda_backend(cuda_backend, kernels, **launch) as fake:
        x, y, gy, gx = BackendChecks(cuda_backend, CPU).relu_channel_major(rng, dtype, shape)
    assert fake.copies == 0, "an input was copied (made C-contiguous)"
    assert [name for name, _ in fake.launches] == ["relu_forward", "relu_backward"]
    (_, forward), (_, backward) = fake.launches
    for args, arrays in ((forward, (x, y)), (backward, (gy, y, gx))):
        for given_to_kernel, own in zip(args, arrays):
            assert np.shares_memory(given_to_kernel, own)


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (1, 3, 4, 4), (3, 1, 4, 5)])
def test_conv2d_reads_an_nchw_batch_where_it_is(kernels, shape):
    """A network's input arrives NCHW: the im2col kernel reads it through
    strides, with no copy into the channel-major layout, forward and in the
    weight gradient's rebuilt columns, and gives numpy_backend's values."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((4, shape[1], 3, 3))
    gy = rng.standard_normal((shape[0], 4, shape[2], shape[3]))
    args = ((1, 1), (1, 1))
    y_np, saved_np = numpy_backend.conv2d_forward(x, w, None, *args)
    grads_np = numpy_backend.conv2d_backward(gy, saved_np, (True, True, False))
    with harness.cpu_cuda_backend(cuda_backend, kernels, threads=7, max_blocks=3) as fake:
        y, saved = cuda_backend.conv2d_forward(x, w, None, *args)
        grads = cuda_backend.conv2d_backward(gy, saved, (True, True, False))
    reads = [args[0] for name, args in fake.launches if name == "im2col"]
    assert len(reads) == 2 and all(np.shares_memory(a, x) for a in reads), "x was copied"
    np.testing.assert_allclose(y, y_np, rtol=1e-12, atol=1e-12)
    for g, g_np in zip(grads[:2], grads_np[:2]):
        np.testing.assert_allclose(g, g_np, rtol=1e-12, atol=1e-12)


def test_relu_layouts_it_cannot_keep(kernels):
    """NCHW stays NCHW with no copy; a mix of layouts, or strided views, are
    copied to C-contiguous first (the kernels read flat memory) and give
    NumPy's values in C-contiguous outputs."""
    rng = np.random.default_rng(4)
    nchw = rng.standard_normal((2, 3, 4, 5))
    channel_major = np.ascontiguousarray(nchw.swapaxes(0, 1)).swapaxes(0, 1)
    y_np = numpy_backend.relu_forward(channel_major)
    with harness.cpu_cuda_backend(cuda_backend, kernels) as fake:
        y = cuda_backend.relu_forward(nchw)
        gx = cuda_backend.relu_backward(nchw, y)
        assert fake.copies == 0 and y.flags.c_contiguous and gx.flags.c_contiguous
        gx_mixed = cuda_backend.relu_backward(nchw, y_np)  # gy NCHW, y channel-major
        assert fake.copies == 1 and gx_mixed.flags.c_contiguous
        strided = channel_major[:, :, ::2]
        y_strided = cuda_backend.relu_forward(strided)
        assert y_strided.flags.c_contiguous
    np.testing.assert_array_equal(y, numpy_backend.relu_forward(nchw))
    np.testing.assert_array_equal(gx, numpy_backend.relu_backward(nchw, y))
    np.testing.assert_array_equal(gx_mixed, numpy_backend.relu_backward(nchw, y_np))
    np.testing.assert_array_equal(y_strided, np.maximum(strided, 0))
    with harness.cpu_cuda_backend(cuda_backend, kernels):
        with pytest.raises(ValueError, match="shapes differ"):
            cuda_backend.relu_backward(nchw, nchw[:1])


@dtypes
@given(
    geometry=window_geometry(),
    P=st.integers(1, 4),
    ties=st.booleans(),
    nans=st.sampled_from([0.0, 0.0, 0.1, 0.3, 1.0]),
    launch=launch_sizes,
    seed=seeds,
)
def test_max_pool(kernels, dtype, geometry, P, ties, nans, launch, seed):
    rng = np.random.default_rng(seed)
    run_checks(kernels, launch, "max_pool", rng, dtype, P, *geometry, ties, nans)


@dtypes
@given(geometry=window_geometry(), P=st.integers(1, 4), launch=launch_sizes, seed=seeds)
def test_avg_pool(kernels, dtype, geometry, P, launch, seed):
    run_checks(kernels, launch, "avg_pool", np.random.default_rng(seed), dtype, P, *geometry)


@dtypes
@given(modes=pool_modes(), P=st.integers(1, 3), ties=st.booleans(), launch=launch_sizes, seed=seeds)
def test_pools_ceil_mode_and_count_include_pad(kernels, dtype, modes, P, ties, launch, seed):
    """ceil_mode's extra last window (past the padding) and both divisor rules."""
    *geometry, ceil_mode, count_include_pad = modes
    rng = np.random.default_rng(seed)
    run_checks(kernels, launch, "max_pool", rng, dtype, P, *geometry, ties, 0.0, ceil_mode)
    run_checks(kernels, launch, "avg_pool", rng, dtype, P, *geometry, ceil_mode, count_include_pad)


@dtypes
@given(
    N=st.integers(1, 9),
    K=st.integers(1, 12),
    scale=st.sampled_from([0.1, 3.0, 100.0]),
    label_dtype=st.sampled_from([np.int64, np.int32, np.uint8]),
    launch=launch_sizes,
    seed=seeds,
)
def test_cross_entropy(kernels, dtype, N, K, scale, label_dtype, launch, seed):
    rng = np.random.default_rng(seed)
    run_checks(kernels, launch, "cross_entropy", rng, dtype, N, K, scale, label_dtype)


@dtypes
@given(
    N=st.integers(1, 9),
    K=st.integers(1, 12),
    weighted=st.booleans(),
    ignored=st.sampled_from([0.0, 0.3, 1.0]),
    label_smoothing=st.sampled_from([0.0, 0.1, 1.0]),
    ignore_index=st.sampled_from([-100, 0, 3]),
    launch=launch_sizes,
    seed=seeds,
)
def test_cross_entropy_weights_ignore_index_smoothing(
    kernels, dtype, N, K, weighted, ignored, label_smoothing, ignore_index, launch, seed
):
    """Class weights, ignored rows (ignore_index also a real class) and label smoothing."""
    rng = np.random.default_rng(seed)
    args = (rng, dtype, N, K, 3.0, np.int64, weighted, ignored, label_smoothing, ignore_index)
    run_checks(kernels, launch, "cross_entropy", *args)


# --------------------------------------------------------------------------
# Edge cases, written out
# --------------------------------------------------------------------------


@dtypes
def test_resnet_shapes(kernels, dtype):
    """The windows a ResNet uses: 3x3/1 pad 1, 3x3/2 pad 1, 1x1/2, 7x7/2 pad 3, pool 3x3/2."""
    rng = np.random.default_rng(0)
    launch = {"threads": 64, "max_blocks": 4, "reduce_threads": 64}
    for geometry in [
        (3, 3, 1, 1, 1, 1),
        (3, 3, 2, 2, 1, 1),
        (1, 1, 2, 2, 0, 0),
        (7, 7, 2, 2, 3, 3),
    ]:
        run_checks(kernels, launch, "im2col", rng, dtype, 2, 2, 9, 8, *geometry)
    run_checks(kernels, launch, "max_pool", rng, dtype, 3, 9, 8, 3, 3, 2, 2, 1, 1, False)
    run_checks(kernels, launch, "avg_pool", rng, dtype, 3, 8, 8, 8, 8, 1, 1, 0, 0)  # global


@dtypes
def test_batch_norm_many_values_per_thread(kernels, dtype):
    """M much larger than the block, one value per channel (var 0), more channels than blocks."""
    rng = np.random.default_rng(1)
    launch = {"threads": 32, "max_blocks": 2, "reduce_threads": 32}
    run_checks(kernels, launch, "batch_norm", rng, dtype, 3, 2000, True)
    run_checks(kernels, launch, "batch_norm", rng, dtype, 7, 1, True)


def test_max_pool_windows_in_padding(kernels):
    """Padding of at least the kernel size gives windows that see only padding.

    Their maximum is -inf and their argmax 0, on both backends; the backward
    pass must drop their gradient (it belongs to no pixel).
    """
    rng = np.random.default_rng(2)
    launch = {"threads": 32, "max_blocks": 2, "reduce_threads": 32}
    # 2x2 windows, padding 2: the corner windows hold padding only.
    for dtype in DTYPES:
        run_checks(kernels, launch, "max_pool", rng, dtype, 2, 3, 2, 2, 2, 1, 1, 2, 2, True)
    with harness.cpu_cuda_backend(cuda_backend, kernels):
        y, argmax = cuda_backend.max_pool_forward(np.full((1, 1, 1), 5.0), 2, 2, 1, 1, 2, 2)
    assert y.shape == (1, 4, 4) and y[0, 0, 0] == -np.inf and argmax[0, 0, 0] == 0
    assert y[0, 1, 1] == 5.0 and argmax[0, 1, 1] == 3  # the pixel at offset (1, 1)


def test_relu_passes_nan_through(kernels):
    """NaN and inf behave as in numpy_backend, forward and backward (gx = gy * (y > 0))."""
    x = np.array([np.nan, -1.0, 0.0, 2.0, 3.0, -4.0])
    gy = np.array([1.0, np.nan, np.inf, np.nan, -np.inf, 5.0])
    with harness.cpu_cuda_backend(cuda_backend, kernels):
        y = cuda_backend.relu_forward(x)
        gx = cuda_backend.relu_backward(gy, y)
    np.testing.assert_array_equal(y, [np.nan, 0.0, 0.0, 2.0, 3.0, 0.0])
    # NaN * 0 and inf * 0 are NaN: a bad gradient shows even where y <= 0.
    np.testing.assert_array_equal(gx, [0.0, np.nan, np.nan, np.nan, -np.inf, 0.0])
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(y, numpy_backend.relu_forward(x))
        np.testing.assert_array_equal(gx, numpy_backend.relu_backward(gy, y))


@dtypes
def test_max_pool_propagates_nan(kernels, dtype):
    """A NaN anywhere in a window gives NaN, and argmax (so the gradient)
    points at it, the last one if there are several: as numpy_backend, as
    PyTorch. A bare "v > best" would keep only a NaN that comes first."""
    x = np.arange(9, dtype=dtype)[[0, 1, 2, 3, 8, 5, 6, 7, 4]].reshape(1, 3, 3)
    cases = []
    for k in range(9):
        xk = x.copy()
        xk.flat[k] = np.nan
        cases.append((xk, k))
    two = np.zeros((1, 3, 3), dtype)
    two[0, 0, 1] = two[0, 2, 0] = np.nan
    cases.append((two, 6))
    with harness.cpu_cuda_backend(cuda_backend, kernels):
        for xk, k in cases:
            y, argmax = cuda_backend.max_pool_forward(xk, 3, 3, 1, 1, 0, 0)
            gx = cuda_backend.max_pool_backward(np.ones_like(y), argmax, xk.shape, 3, 3, 1, 1, 0, 0)
            assert np.isnan(y).all() and argmax.item() == k
            np.testing.assert_array_equal(gx.ravel(), np.eye(9, dtype=dtype)[k])
            y_np, argmax_np = numpy_backend.max_pool_forward(xk, 3, 3, 1, 1, 0, 0)
            np.testing.assert_array_equal(y, y_np)
            np.testing.assert_array_equal(argmax, argmax_np)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_cross_entropy_extreme_logits(kernels, dtype):
    """log-sum-exp keeps the loss finite for logits of +-1e4 (exp alone overflows)."""
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=dtype)
    labels = np.array([1, 2])
    targets = (labels, np.ones(3, dtype), -100, 0.1)
    with harness.cpu_cuda_backend(cuda_backend, kernels):
        loss, probs, _ = cuda_backend.cross_entropy_forward(logits, *targets)
    loss_np, probs_np, _ = numpy_backend.cross_entropy_forward(logits, *targets)
    assert np.isfinite(loss).all() and loss.dtype == dtype and loss.shape == (2,)
    np.testing.assert_allclose(loss, loss_np, rtol=1e-6)
    np.testing.assert_allclose(probs, probs_np, atol=1e-7)


@pytest.mark.parametrize("w", [np.array([2.0, 1.0, 1.0]), None], ids=["weighted", "no weight"])
def test_cross_entropy_bad_label_gives_nan(kernels, w):
    """An out-of-range label (not ignore_index) is never used as an index: its
    row's loss, weight and gradient are NaN, not a stray read; an ignored row
    gives 0."""
    logits = np.zeros((3, 3))
    labels = np.array([0, 3, -100])
    with harness.cpu_cuda_backend(cuda_backend, kernels):
        loss, probs, row_weight = cuda_backend.cross_entropy_forward(logits, labels, w, -100, 0.1)
        g = cuda_backend.cross_entropy_backward(probs, labels, w, -100, 0.1, np.ones(3))
    assert np.isfinite(loss[0]) and np.isnan(loss[1]) and loss[2] == 0
    assert row_weight[0] == (1.0 if w is None else 2.0)
    assert np.isnan(row_weight[1]) and row_weight[2] == 0
    assert np.isfinite(g[0]).all() and np.isnan(g[1]).all() and (g[2] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_cross_entropy_no_weight_is_all_ones(kernels, dtype):
    """weight=None is read as K ones, by both kernels (the forward's smoothing
    term and the backward's sum of the weights, which is then K), with label
    smoothing so that every weight is used."""
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((4, 5)).astype(dtype)
    labels, grads = np.array([1, -100, 4, 0]), rng.uniform(0.5, 2.0, 4).astype(dtype)
    runs = []
    with harness.cpu_cuda_backend(cuda_backend, kernels):
        for w in (None, np.ones(5, dtype)):
            loss, probs, row_weight = cuda_backend.cross_entropy_forward(
                logits, labels, w, -100, 0.3
            )
            g = cuda_backend.cross_entropy_backward(probs, labels, w, -100, 0.3, grads)
            runs.append((loss, probs, row_weight, g))
    for none, ones in zip(*runs):
        np.testing.assert_array_equal(none, ones)
    np.testing.assert_array_equal(runs[0][2], [1, 0, 1, 1])


def test_empty_outputs_launch_nothing(kernels):
    """Zero elements: no launch (CUDA rejects a grid of 0 blocks), right shapes anyway."""
    with harness.cpu_cuda_backend(cuda_backend, kernels):
        col = cuda_backend.im2col(np.zeros((2, 0, 5, 5), np.float32), 3, 3, 1, 1, 1, 1)
        y = cuda_backend.relu_forward(np.zeros((0, 3)))
    assert col.shape == (18, 0) and col.dtype == np.float32
    assert y.shape == (0, 3)


def test_non_contiguous_inputs(kernels):
    """Views with strides are copied to contiguous memory before a kernel sees them."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 5)).transpose(1, 0, 2, 3)  # (C, N, H, W) view
    assert not x.flags.c_contiguous
    with harness.cpu_cuda_backend(cuda_backend, kernels):
        col = cuda_backend.im2col(x, 3, 2, 2, 1, 1, 0)
        y = cuda_backend.relu_forward(x[:, :, ::2])
    np.testing.assert_array_equal(col, numpy_backend.im2col(x, 3, 2, 2, 1, 1, 0))
    np.testing.assert_array_equal(y, np.maximum(x[:, :, ::2], 0))


def test_dtype_errors(kernels):
    """Wrong dtypes are refused before a kernel could misread them."""
    with harness.cpu_cuda_backend(cuda_backend, kernels):
        with pytest.raises(TypeError, match="float32 or float64"):
            cuda_backend.relu_forward(np.zeros(3, dtype=np.int64))
        with pytest.raises(TypeError, match="float32 or float64"):
            cuda_backend.relu_forward(np.zeros(3, dtype=np.float16))
        x = np.zeros((2, 4), np.float32)
        with pytest.raises(TypeError, match="float64 but the other inputs are float32"):
            cuda_backend.batch_norm_forward(
                x, np.ones(2), np.zeros(2, np.float32), 1e-5, None, None, 0.1
            )
        with pytest.raises(TypeError, match="integer"):
            cuda_backend.cross_entropy_forward(x, np.zeros(2, np.float32), np.ones(4), -100, 0.0)
        with pytest.raises(TypeError, match="float64 but the other inputs are float32"):
            cuda_backend.cross_entropy_forward(x, np.zeros(2, np.int64), np.ones(4), -100, 0.0)
        with pytest.raises(TypeError, match="array"):
            cuda_backend.relu_forward([1.0, 2.0])


# --------------------------------------------------------------------------
# The harness itself, and the tables that tie cuda_backend to the .cu files
# --------------------------------------------------------------------------


def test_harness_thread_ids(kernels):
    k = kernels.kernel("harness_thread_ids", np.float64)
    out = np.full(3 * 4 + 2, -1.0)
    k((3,), (4,), (out,))
    expected = [b * 1000 + t for b in range(3) for t in range(4)] + [4, 3]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("threads", [1, 2, 32, 64])
def test_harness_shared_memory_and_barrier(kernels, threads):
    """Threads of a block share __shared__ arrays and wait for each other at __syncthreads."""
    k = kernels.kernel("harness_block_reverse", np.float32)
    x = np.arange(3 * threads, dtype=np.float32)
    for rounds in (1, 2, 5):
        out = np.empty_like(x)
        k((3,), (threads,), (x, out, np.int32(rounds)))
        blocks = x.reshape(3, threads)
        np.testing.assert_array_equal(
            out.reshape(3, threads), blocks[:, ::-1] if rounds % 2 else blocks
        )


def test_harness_reports_divergent_syncthreads(kernels):
    k = kernels.kernel("harness_divergent_sync", np.float32)
    with pytest.raises(harness.LaunchError, match="__syncthreads"):
        k((1,), (8,), (np.zeros(8, np.float32), np.int32(3)))
    k((1,), (8,), (np.zeros(8, np.float32), np.int32(8)))  # all threads wait: fine


def test_harness_refuses_python_scalars(kernels):
    """The RawKernel scalar trap, caught: a Python int where the kernel declares int."""
    k = kernels.kernel("relu_forward", np.float32)
    x = np.ones(4, np.float32)
    with pytest.raises(TypeError, match="Python int"):
        k((1,), (4,), (x, np.empty_like(x), 4))
    with pytest.raises(TypeError, match="int64"):
        k((1,), (4,), (x, np.empty_like(x), np.int64(4)))
    with pytest.raises(TypeError, match="float64"):
        k((1,), (4,), (x.astype(np.float64), np.empty_like(x), np.int32(4)))


def test_harness_catches_out_of_bounds_writes_and_unwritten_outputs(kernels):
    fake = harness.FakeCupy()
    y = fake.empty((2, 3), np.float32)
    assert np.isnan(y).all()
    k = kernels.kernel("relu_forward", np.float32, after=fake.check_guards)
    with pytest.raises(AssertionError, match="outside the bounds"):
        k((1,), (8,), (np.ones(7, np.float32), y, np.int32(7)))  # one too many


def test_kernel_table_matches_sources():
    """cuda_backend.KERNELS names exactly the __global__ kernels of each .cu file."""
    found = {
        path.stem: tuple(k.name for k in harness.parse_kernels(path.read_text()))
        for path in harness.kernel_sources()
    }
    assert found == cuda_backend.KERNELS


def test_kernel_sources_are_nvrtc_friendly():
    """NVRTC has no host headers, and every kernel is a template over float/double."""
    for path in harness.kernel_sources():
        code = harness.strip_comments(path.read_text())
        assert not re.search(r"#\s*include", code), f"{path.name} includes a header"
        globals_ = re.findall(r"__global__\s+void\s+(\w+)", code)
        templated = [k.name for k in harness.parse_kernels(path.read_text())]
        assert globals_ == templated, (
            f"{path.name}: non-template kernels {set(globals_) - set(templated)}"
        )
    source = (harness.KERNEL_DIR / "batch_norm.cu").read_text()
    assert f"BN_MAX_THREADS = {cuda_backend.BN_MAX_THREADS};" in source
    assert cuda_backend.REDUCE_THREADS <= cuda_backend.BN_MAX_THREADS


def test_kernel_dir_finds_the_sources():
    assert (cuda_backend.kernel_dir() / "im2col.cu").is_file()
    names = {p.name for p in cuda_backend.kernel_dir().glob("*.cu")}
    assert names == {f"{stem}.cu" for stem in cuda_backend.KERNELS}


def test_without_a_gpu_the_reason_is_clear():
    """Importing cuda_backend needs no CuPy; without a GPU it says what is missing."""
    if cuda_backend.gpu_available():
        pytest.skip("a GPU is available here")
    reason = cuda_backend.gpu_unavailable_reason()
    assert reason
    try:
        import cupy  # noqa: F401
    except ImportError:
        assert 'pip install "minires[gpu]"' in reason
        assert "cupy-cuda12x" in reason and "cupy-cuda13x" in reason
    with pytest.raises(RuntimeError, match="cannot use the GPU"):
        cuda_backend.require_gpu()
    x = np.ones(3)
    assert cuda_backend.to_cpu(x) is x
