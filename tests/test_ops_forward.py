"""Forward values of the network ops against the naive loops in tests/naive.py.

Shapes come from hypothesis (odd sizes, stride > 1, padding, batch 1, one
channel, 1x1 and non-square kernels, kernels larger than the stride) plus a
fixed list of corners. PyTorch is a second, independent check: it is in the
`test` extra, and in CI a missing torch fails these tests (tests/conftest.py).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import naive
import numpy as np
import pytest
from conftest import (
    CONV_CORNERS,
    POOL_CORNERS,
    SHIFTED_CHUNK_CASES,
    ConvCase,
    conv_cases,
    grid_positions,
    kink_free,
    pool_cases,
    with_corners,
)
from hypothesis import given
from hypothesis import strategies as st

import minires as mr
import minires.functional as F
from minires.backends import numpy_backend

seeds = st.integers(0, 2**32 - 1)


def _conv_inputs(case: ConvCase, seed: int, dtype=np.float64):
    r = np.random.default_rng(seed)
    x = r.standard_normal(case.x_shape).astype(dtype)
    w = r.standard_normal(case.w_shape).astype(dtype)
    b = r.standard_normal(case.F).astype(dtype)
    return x, w, b


# --------------------------------------------------------------------------
# conv2d
# --------------------------------------------------------------------------


@contextmanager
def conv_algorithm(name: str):
    """Force conv2d's algorithm ("auto" picks the shifted GEMM for stride 1 on the CPU)."""
    previous = F.set_conv_algorithm(name)
    try:
        yield
    finally:
        F.set_conv_algorithm(previous)


@pytest.mark.parametrize("algorithm", ["auto", "im2col"])
@with_corners(CONV_CORNERS)
@given(case=conv_cases(), seed=seeds)
def test_conv2d_matches_naive(algorithm, case, seed):
    x, w, b = _conv_inputs(case, seed)
    with conv_algorithm(algorithm):
        y = F.conv2d(mr.Tensor(x), mr.Tensor(w), mr.Tensor(b), case.stride, case.padding)
    expected = naive.conv2d(x, w, b, case.stride, case.padding)
    assert y.shape == expected.shape
    assert y.dtype == np.float64
    np.testing.assert_allclose(y.data, expected, rtol=1e-12, atol=1e-12)


@given(case=conv_cases(), seed=seeds)
def test_conv2d_without_bias_matches_naive(case, seed):
    x, w, _ = _conv_inputs(case, seed)
    y = F.conv2d(mr.Tensor(x), mr.Tensor(w), None, case.stride, case.padding)
    np.testing.assert_allclose(
        y.data, naive.conv2d(x, w, None, case.stride, case.padding), rtol=1e-12, atol=1e-12
    )


@given(case=conv_cases(), seed=seeds)
def test_conv2d_float32_close_to_float64_reference(case, seed):
    x, w, b = _conv_inputs(case, seed, np.float32)
    y = F.conv2d(mr.Tensor(x), mr.Tensor(w), mr.Tensor(b), case.stride, case.padding)
    assert y.dtype == np.float32
    np.testing.assert_allclose(
        y.data, naive.conv2d(x, w, b, case.stride, case.padding), rtol=1e-4, atol=1e-5
    )


@contextmanager
def poisoned_empty():
    """np.empty returns NaN-filled arrays: any element read before written shows."""
    empty = np.empty

    def nan_filled(shape, dtype=float, **kwargs):
        out = empty(shape, dtype=dtype, **kwargs)
        out.fill(np.nan)
        return out

    np.empty = nan_filled
    try:
        yield
    finally:
        np.empty = empty


@given(case=conv_cases(), seed=seeds)
def test_conv2d_reads_no_uninitialised_memory(case, seed):
    """The shifted GEMM lays its operands out in np.empty buffers and writes the
    zero padding itself; a gap left unwritten would read stale memory."""
    x, w, b = _conv_inputs(case, seed)
    gy = np.random.default_rng(seed + 1).standard_normal(
        naive.conv2d(x, w, b, case.stride, case.padding).shape
    )

    def run():
        xt, wt = mr.Tensor(x, requires_grad=True), mr.Tensor(w, requires_grad=True)
        y = F.conv2d(xt, wt, mr.Tensor(b), case.stride, case.padding)
        y.backward(mr.Tensor(gy))
        return {"y": y.data, "x.grad": xt.grad, "w.grad": wt.grad}

    with poisoned_empty():
        poisoned = run()
    for name, array in poisoned.items():
        assert np.isfinite(array).all(), f"{name} read uninitialised memory"
    # The same numbers as a run on ordinary memory (whose values the other
    # tests check against the naive loops and finite differences).
    for name, array in run().items():
        np.testing.assert_array_equal(poisoned[name], array, err_msg=name)
    np.testing.assert_allclose(
        poisoned["y"], naive.conv2d(x, w, b, case.stride, case.padding), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("case", SHIFTED_CHUNK_CASES)
def test_conv2d_shifted_in_several_chunks_matches_naive(small_shifted_chunks, case):
    assert grid_positions(case) > 256 and grid_positions(case) % 256  # a partial last chunk
    x, w, b = _conv_inputs(case, 0)
    y = F.conv2d(mr.Tensor(x), mr.Tensor(w), mr.Tensor(b), case.stride, case.padding)
    np.testing.assert_allclose(
        y.data, naive.conv2d(x, w, b, case.stride, case.padding), rtol=1e-12, atol=1e-12
    )


def test_conv2d_int_arguments_equal_pairs(rng):
    x, w = rng.standard_normal((2, 2, 7, 7)), rng.standard_normal((3, 2, 3, 3))
    a = F.conv2d(mr.Tensor(x), mr.Tensor(w), stride=2, padding=1)
    b = F.conv2d(mr.Tensor(x), mr.Tensor(w), stride=(2, 2), padding=(1, 1))
    np.testing.assert_array_equal(a.data, b.data)
    assert a.shape == (2, 3, 4, 4)


def test_conv2d_known_values():
    # A 3x3 image of 1..9 with a 2x2 kernel of ones: each output is a window sum.
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    w = np.ones((1, 1, 2, 2))
    y = F.conv2d(mr.Tensor(x), mr.Tensor(w), mr.Tensor(np.array([0.5])))
    np.testing.assert_array_equal(y.data[0, 0], [[12.5, 16.5], [24.5, 28.5]])


def test_conv2d_is_cross_correlation_not_convolution():
    # PyTorch's conv does not flip the kernel: a one-hot kernel at (0, 0)
    # picks the top-left pixel of each window.
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.zeros((1, 1, 2, 2))
    w[0, 0, 0, 0] = 1.0
    y = F.conv2d(mr.Tensor(x), mr.Tensor(w))
    np.testing.assert_array_equal(y.data[0, 0], x[0, 0, :3, :3])


# --------------------------------------------------------------------------
# im2col / col2im
# --------------------------------------------------------------------------


@with_corners(CONV_CORNERS)
@given(case=conv_cases(), seed=seeds)
def test_im2col_entries_match_definition(case, seed):
    r = np.random.default_rng(seed)
    xc = r.standard_normal((case.C, case.N, case.H, case.W))
    (kh, kw), (sh, sw), (ph, pw) = case.kernel, case.stride, case.padding
    col = numpy_backend.im2col(xc, kh, kw, sh, sw, ph, pw)
    OH, OW = naive.out_size(case.H, kh, sh, ph), naive.out_size(case.W, kw, sw, pw)
    assert col.shape == (case.C * kh * kw, case.N * OH * OW)
    for row, (c, i, j) in enumerate(np.ndindex(case.C, kh, kw)):
        for column, (n, oh, ow) in enumerate(np.ndindex(case.N, OH, OW)):
            expected = naive.im2col_entry(xc, c, i, j, n, oh, ow, case.stride, case.padding)
            assert col[row, column] == expected


@with_corners(CONV_CORNERS)
@given(case=conv_cases(), seed=seeds)
def test_col2im_is_the_adjoint_of_im2col(case, seed):
    # <im2col(x), c> == <x, col2im(c)> for every x and c: col2im is exactly
    # the transpose of the linear map im2col, which is what conv's backward needs.
    r = np.random.default_rng(seed)
    shape = (case.C, case.N, case.H, case.W)
    (kh, kw), (sh, sw), (ph, pw) = case.kernel, case.stride, case.padding
    x = r.standard_normal(shape)
    col = numpy_backend.im2col(x, kh, kw, sh, sw, ph, pw)
    c = r.standard_normal(col.shape)
    back = numpy_backend.col2im(c, shape, kh, kw, sh, sw, ph, pw)
    assert back.shape == shape
    lhs, rhs = np.vdot(col, c), np.vdot(x, back)
    assert abs(lhs - rhs) <= 1e-10 * (1 + abs(lhs))


def test_col2im_counts_window_overlaps():
    # col2im of all-ones counts, for each pixel, the windows that cover it.
    shape = (1, 1, 4, 4)
    col = np.ones(numpy_backend.im2col(np.zeros(shape), 3, 3, 1, 1, 0, 0).shape)
    counts = numpy_backend.col2im(col, shape, 3, 3, 1, 1, 0, 0)[0, 0]
    np.testing.assert_array_equal(counts, [[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]])


# --------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------


@with_corners(POOL_CORNERS)
@given(case=pool_cases(), seed=seeds)
def test_max_pool2d_matches_naive(case, seed):
    x = np.random.default_rng(seed).standard_normal(case.x_shape)
    y = F.max_pool2d(mr.Tensor(x), case.kernel, case.stride, case.padding)
    expected = naive.max_pool2d(x, case.kernel, case.stride, case.padding)
    assert y.shape == expected.shape
    np.testing.assert_array_equal(y.data, expected)


def max_pool_with_argmax(x, kh, kw, sh, sw, ph, pw):
    """(P, H, W) planes -> (y, argmax), the rule numpy_backend.max_pool_forward
    states, written as a definition, window by window (padding reads -inf):
    a window holding a NaN gives NaN and points at its last NaN (PyTorch's
    choice); any other window gives its maximum and points at the first
    offset holding it."""
    P, H, W = x.shape
    OH, OW = naive.out_size(H, kh, sh, ph), naive.out_size(W, kw, sw, pw)
    y = np.zeros((P, OH, OW), dtype=x.dtype)
    argmax = np.zeros((P, OH, OW), dtype=np.int32)
    for p in range(P):
        for oh in range(OH):
            for ow in range(OW):
                window = []
                for i in range(kh):
                    for j in range(kw):
                        r, c = oh * sh + i - ph, ow * sw + j - pw
                        inside = 0 <= r < H and 0 <= c < W
                        window.append(float(x[p, r, c]) if inside else -math.inf)
                nans = [k for k, v in enumerate(window) if math.isnan(v)]
                if nans:
                    y[p, oh, ow], argmax[p, oh, ow] = math.nan, nans[-1]
                else:
                    y[p, oh, ow] = max(window)
                    argmax[p, oh, ow] = window.index(max(window))
    return y, argmax


@with_corners(POOL_CORNERS)
@given(case=pool_cases(), seed=seeds)
def test_max_pool_forward_propagates_nan(case, seed):
    """NaNs anywhere in a window (first, last, between ties, several, all)
    give NaN and point argmax at the last NaN; ties still go to the first
    maximum, and padding still never wins."""
    rng = np.random.default_rng(seed)
    P = case.N * case.C
    x = rng.integers(-2, 3, (P, case.H, case.W)).astype(np.float64)  # ties are common
    x[rng.random(x.shape) < rng.choice([0.1, 0.3, 1.0])] = np.nan
    geometry = (*case.kernel, *case.stride, *case.padding)
    y, argmax = numpy_backend.max_pool_forward(x, *geometry)
    y_ref, argmax_ref = max_pool_with_argmax(x, *geometry)
    np.testing.assert_array_equal(y, y_ref)  # NaN equals NaN here
    np.testing.assert_array_equal(argmax, argmax_ref)
    assert argmax.dtype == np.int32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool2d_nan_at_every_window_position(dtype):
    """One 3x3 window of distinct values (the largest at offset 4) with a NaN
    at each offset in turn: y is NaN and the gradient goes to the NaN."""
    for k in range(9):
        x = np.arange(9.0, dtype=dtype)[[0, 1, 2, 3, 8, 5, 6, 7, 4]].reshape(1, 1, 3, 3)
        x.flat[k] = np.nan
        xt = mr.Tensor(x, requires_grad=True)
        y = F.max_pool2d(xt, 3)
        y.backward(np.ones((1, 1, 1, 1), dtype))
        assert np.isnan(y.data).all(), k
        np.testing.assert_array_equal(xt.grad.ravel(), np.eye(9, dtype=dtype)[k])
    x = np.zeros((1, 1, 2, 2), dtype)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = np.nan  # two NaNs: the last one gets the gradient
    _, argmax = numpy_backend.max_pool_forward(x[0], 2, 2, 2, 2, 0, 0)
    assert argmax.item() == 2


def test_max_pool2d_padding_never_wins():
    # All-negative input: a zero-padded max would return 0 at the border.
    x = -1.0 - np.arange(16.0).reshape(1, 1, 4, 4)
    y = F.max_pool2d(mr.Tensor(x), 3, stride=2, padding=1)
    np.testing.assert_array_equal(y.data[0, 0], [[-1.0, -2.0], [-5.0, -6.0]])


def test_max_pool2d_stride_defaults_to_kernel(rng):
    x = rng.standard_normal((1, 2, 6, 6))
    np.testing.assert_array_equal(
        F.max_pool2d(mr.Tensor(x), 2).data, naive.max_pool2d(x, (2, 2), (2, 2))
    )


@with_corners(POOL_CORNERS)
@given(case=pool_cases(), seed=seeds)
def test_avg_pool2d_matches_naive_count_include_pad(case, seed):
    x = np.random.default_rng(seed).standard_normal(case.x_shape)
    y = F.avg_pool2d(mr.Tensor(x), case.kernel, case.stride, case.padding)
    expected = naive.avg_pool2d(x, case.kernel, case.stride, case.padding)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.data, expected, rtol=1e-12, atol=1e-14)


def test_avg_pool2d_padding_counts_in_divisor():
    x = np.ones((1, 1, 2, 2))
    y = F.avg_pool2d(mr.Tensor(x), 2, stride=1, padding=1)
    # The corner window holds one real pixel and three zeros of padding.
    np.testing.assert_allclose(
        y.data[0, 0], [[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]]
    )


@given(
    n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7), seed=seeds
)
def test_adaptive_avg_pool2d_1_matches_naive(n, c, h, w, seed):
    x = np.random.default_rng(seed).standard_normal((n, c, h, w))
    y = F.adaptive_avg_pool2d(mr.Tensor(x), 1)
    assert y.shape == (n, c, 1, 1)
    np.testing.assert_allclose(y.data, naive.adaptive_avg_pool2d_1(x), rtol=1e-12, atol=1e-14)


def test_adaptive_avg_pool2d_dividing_size_is_window_mean(rng):
    x = rng.standard_normal((2, 3, 6, 4))
    y = F.adaptive_avg_pool2d(mr.Tensor(x), (3, 2))
    np.testing.assert_allclose(y.data, naive.avg_pool2d(x, (2, 2), (2, 2)), rtol=1e-12)


# --------------------------------------------------------------------------
# batch_norm
# --------------------------------------------------------------------------

bn_shapes = st.one_of(
    st.tuples(st.integers(2, 4), st.integers(1, 3)),  # (N, C): BatchNorm1d
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(2, 5)),  # (N, C, L)
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 5), st.integers(2, 5)),
)


def _bn_params(r, C):
    gamma = r.uniform(0.5, 2.0, C) * r.choice([-1.0, 1.0], C)
    beta = r.standard_normal(C)
    running_mean = r.standard_normal(C)
    running_var = r.uniform(0.5, 2.0, C)
    return gamma, beta, running_mean, running_var


@given(shape=bn_shapes, momentum=st.sampled_from([0.1, 0.5, 1.0]), seed=seeds)
def test_batch_norm_training_matches_naive_and_updates_running_stats(shape, momentum, seed):
    r = np.random.default_rng(seed)
    x = 5 * r.standard_normal(shape) + 12  # non-centred, not unit scale
    gamma, beta, rm, rv = _bn_params(r, shape[1])
    expected, exp_rm, exp_rv = naive.batch_norm(x, gamma, beta, rm, rv, True, momentum, 1e-5)
    rm_buf, rv_buf = rm.copy(), rv.copy()
    y = F.batch_norm(
        mr.Tensor(x), rm_buf, rv_buf, mr.Tensor(gamma), mr.Tensor(beta), True, momentum, 1e-5
    )
    np.testing.assert_allclose(y.data, expected, rtol=1e-10, atol=1e-10)
    # Buffers are updated in place, the variance with Bessel's correction.
    np.testing.assert_allclose(rm_buf, exp_rm, rtol=1e-12)
    np.testing.assert_allclose(rv_buf, exp_rv, rtol=1e-12)


def test_batch_norm_running_var_is_unbiased():
    # One channel, values 0 and 2: biased variance 1, unbiased 2.
    x = np.array([[0.0], [2.0]])
    rm, rv = np.zeros(1), np.ones(1)
    F.batch_norm(mr.Tensor(x), rm, rv, training=True, momentum=1.0)
    np.testing.assert_allclose(rm, [1.0])
    np.testing.assert_allclose(rv, [2.0])
    y = F.batch_norm(mr.Tensor(x), None, None, training=True, eps=0.0)
    np.testing.assert_allclose(y.data, [[-1.0], [1.0]])  # normalised by the biased std


@given(shape=bn_shapes, seed=seeds)
def test_batch_norm_eval_uses_running_stats(shape, seed):
    r = np.random.default_rng(seed)
    x = 3 * r.standard_normal(shape) - 4
    gamma, beta, rm, rv = _bn_params(r, shape[1])
    rm_buf, rv_buf = rm.copy(), rv.copy()
    y = F.batch_norm(
        mr.Tensor(x), rm_buf, rv_buf, mr.Tensor(gamma), mr.Tensor(beta), training=False
    )
    expected, _, _ = naive.batch_norm(x, gamma, beta, rm, rv, training=False)
    np.testing.assert_allclose(y.data, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(rm_buf, rm)  # evaluation leaves the buffers alone
    np.testing.assert_array_equal(rv_buf, rv)


def test_batch_norm_without_affine_is_plain_normalisation(rng):
    x = 2 * rng.standard_normal((4, 3, 2, 2)) + 1
    y = F.batch_norm(mr.Tensor(x), None, None, training=True, eps=0.0)
    np.testing.assert_allclose(y.data.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.data.var(axis=(0, 2, 3)), 1, rtol=1e-12)


# --------------------------------------------------------------------------
# linear and cross_entropy
# --------------------------------------------------------------------------


@given(
    n=st.integers(1, 4),
    i=st.integers(1, 5),
    o=st.integers(1, 5),
    bias=st.booleans(),
    seed=seeds,
)
def test_linear_matches_naive(n, i, o, bias, seed):
    r = np.random.default_rng(seed)
    x, w, b = r.standard_normal((n, i)), r.standard_normal((o, i)), r.standard_normal(o)
    y = F.linear(mr.Tensor(x), mr.Tensor(w), mr.Tensor(b) if bias else None)
    np.testing.assert_allclose(
        y.data, naive.linear(x, w, b if bias else None), rtol=1e-12, atol=1e-12
    )


@given(n=st.integers(1, 4), k=st.integers(2, 5), scale=st.sampled_from([1.0, 30.0]), seed=seeds)
def test_cross_entropy_matches_naive(n, k, scale, seed):
    r = np.random.default_rng(seed)
    logits = scale * r.standard_normal((n, k))
    labels = r.integers(0, k, n)
    loss = F.cross_entropy(mr.Tensor(logits), labels)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(naive.cross_entropy(logits, labels), rel=1e-12, abs=1e-12)
    total = F.cross_entropy(mr.Tensor(logits), labels, reduction="sum")
    assert total.item() == pytest.approx(n * naive.cross_entropy(logits, labels), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_is_finite_for_huge_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [1e4, 1e4, -1e4]], dtype=dtype)
    labels = np.array([0, 0, 1])
    loss = F.cross_entropy(mr.Tensor(logits), labels)
    assert loss.dtype == dtype
    # Row 0: right with certainty (0). Row 1: wrong by 2e4. Row 2: a coin flip (log 2).
    expected = (0.0 + 2e4 + np.log(2.0)) / 3
    assert np.isfinite(loss.item())
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(naive.cross_entropy(logits, labels), rel=1e-6)
    x = mr.Tensor(logits, requires_grad=True)
    F.cross_entropy(x, labels).backward()
    assert np.isfinite(x.grad).all()
    np.testing.assert_allclose(x.grad.sum(axis=1), 0, atol=1e-6)


def test_cross_entropy_uniform_logits_is_log_k():
    loss = F.cross_entropy(mr.Tensor(np.zeros((2, 7))), np.array([3, 6]))
    assert loss.item() == pytest.approx(np.log(7.0), rel=1e-12)


# --------------------------------------------------------------------------
# PyTorch as a second, independent check (never skipped in CI)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CONV_CORNERS)
def test_conv2d_matches_torch(case):
    torch = pytest.importorskip("torch")
    x, w, b = _conv_inputs(case, 7)
    y = F.conv2d(mr.Tensor(x), mr.Tensor(w), mr.Tensor(b), case.stride, case.padding)
    t = torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), case.stride, case.padding
    )
    np.testing.assert_allclose(y.data, t.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", POOL_CORNERS)
def test_max_pool2d_matches_torch(case):
    torch = pytest.importorskip("torch")
    x = kink_free(np.random.default_rng(3), case.x_shape)
    xt = torch.from_numpy(x).requires_grad_()
    t = torch.nn.functional.max_pool2d(xt, case.kernel, case.stride, case.padding)
    gy = np.random.default_rng(4).standard_normal(tuple(t.shape))
    t.backward(torch.from_numpy(gy))
    xm = mr.Tensor(x, requires_grad=True)
    y = F.max_pool2d(xm, case.kernel, case.stride, case.padding)
    y.backward(gy)
    np.testing.assert_array_equal(y.data, t.detach().numpy())
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", POOL_CORNERS)
def test_max_pool2d_nan_matches_torch(case):
    """NaN in a window: the same NaN outputs as PyTorch, and the same gradient
    (each NaN window sends it to the NaN PyTorch picks, its last)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = kink_free(rng, case.x_shape)
    x[rng.random(x.shape) < 0.2] = np.nan
    xt = torch.from_numpy(x).requires_grad_()
    t = torch.nn.functional.max_pool2d(xt, case.kernel, case.stride, case.padding)
    gy = rng.standard_normal(tuple(t.shape))
    t.backward(torch.from_numpy(gy))
    xm = mr.Tensor(x, requires_grad=True)
    y = F.max_pool2d(xm, case.kernel, case.stride, case.padding)
    y.backward(gy)
    assert np.isnan(y.data).any()
    np.testing.assert_array_equal(y.data, t.detach().numpy())
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_torch(training, rng):
    torch = pytest.importorskip("torch")
    x = 5 * rng.standard_normal((3, 2, 4, 5)) + 12
    gamma, beta, rm, rv = _bn_params(rng, 2)
    gy = rng.standard_normal(x.shape)
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    xt, gt, bt = (torch.from_numpy(a).requires_grad_() for a in (x, gamma, beta))
    t = torch.nn.functional.batch_norm(xt, trm, trv, gt, bt, training, 0.1, 1e-5)
    t.backward(torch.from_numpy(gy))
    mrm, mrv = rm.copy(), rv.copy()
    xm, gm, bm = (mr.Tensor(a, requires_grad=True) for a in (x, gamma, beta))
    y = F.batch_norm(xm, mrm, mrv, gm, bm, training, 0.1, 1e-5)
    y.backward(gy)
    np.testing.assert_allclose(y.data, t.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(mrm, trm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(mrv, trv.numpy(), rtol=1e-12)
    for mine, theirs in ((xm, xt), (gm, gt), (bm, bt)):
        np.testing.assert_allclose(mine.grad, theirs.grad.numpy(), rtol=1e-8, atol=1e-10)


def test_cross_entropy_matches_torch(rng):
    torch = pytest.importorskip("torch")
    logits = 4 * rng.standard_normal((5, 6))
    labels = rng.integers(0, 6, 5)
    lt = torch.from_numpy(logits).requires_grad_()
    t = torch.nn.functional.cross_entropy(lt, torch.from_numpy(labels))
    t.backward()
    lm = mr.Tensor(logits, requires_grad=True)
    loss = F.cross_entropy(lm, labels)
    loss.backward()
    assert loss.item() == pytest.approx(t.item(), rel=1e-12)
    np.testing.assert_allclose(lm.grad, lt.grad.numpy(), rtol=1e-10, atol=1e-12)
