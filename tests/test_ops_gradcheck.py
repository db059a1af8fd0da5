"""Every differentiable network op against central differences, in float64.

mr.gradcheck weights the outputs by a random upstream gradient (never a plain
sum), so these checks see every entry of every gradient. Shapes come from
hypothesis; ReLU and max-pool inputs are kept away from kinks and ties.
"""

from __future__ import annotations

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
    min_gap,
    pool_cases,
    with_corners,
)
from hypothesis import given
from hypothesis import strategies as st

import minires as mr
import minires.functional as F

seeds = st.integers(0, 2**32 - 1)


def T(a) -> mr.Tensor:
    return mr.Tensor(np.array(a, dtype=np.float64), requires_grad=True)


def test_kink_free_inputs_are_kink_free(rng):
    for shape in [(1,), (3, 3, 7, 7), (2, 5)]:
        a = kink_free(rng, shape)
        assert a.shape == shape
        assert min_gap(a) >= 1e-3
        assert (a > 0).any() or a.size == 1
    assert len(np.unique(kink_free(rng, (50,)))) == 50


# --------------------------------------------------------------------------
# conv2d
# --------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["auto", "im2col"])
@with_corners(CONV_CORNERS)
@given(case=conv_cases(), seed=seeds)
def test_conv2d_gradcheck(algorithm, case, seed):
    # "auto" takes the shifted-GEMM path for stride-1 convs on the CPU.
    r = np.random.default_rng(seed)
    x, w, b = (
        T(r.standard_normal(case.x_shape)),
        T(r.standard_normal(case.w_shape)),
        T(r.standard_normal(case.F)),
    )
    previous = F.set_conv_algorithm(algorithm)
    try:
        assert mr.gradcheck(
            lambda x, w, b: F.conv2d(x, w, b, case.stride, case.padding),
            (x, w, b),
            mode="elementwise",
            seed=seed,
        )
    finally:
        F.set_conv_algorithm(previous)


@pytest.mark.parametrize("algorithm", ["auto", "im2col"])
@pytest.mark.parametrize("wanted", ["input", "weight", "bias"])
@with_corners(CONV_CORNERS)
@given(case=conv_cases(), seed=seeds)
def test_conv2d_one_gradient_alone_equals_both(algorithm, wanted, case, seed):
    # The shifted backward computes the input and weight gradients from one
    # set of columns when both are needed, and each on its own otherwise
    # (the first conv of a net needs no input gradient).
    r = np.random.default_rng(seed)
    x, w = r.standard_normal(case.x_shape), r.standard_normal(case.w_shape)
    b = r.standard_normal(case.F)
    gy = r.standard_normal(naive.conv2d(x, w, b, case.stride, case.padding).shape)

    def grads(*needed: str):
        t = {
            name: mr.Tensor(value, requires_grad=name in needed)
            for name, value in (("input", x), ("weight", w), ("bias", b))
        }
        F.conv2d(t["input"], t["weight"], t["bias"], case.stride, case.padding).backward(
            mr.Tensor(gy)
        )
        return {name: tensor.grad for name, tensor in t.items()}

    previous = F.set_conv_algorithm(algorithm)
    try:
        every = grads("input", "weight", "bias")
        alone = grads(wanted)
    finally:
        F.set_conv_algorithm(previous)
    assert all(alone[name] is None for name in alone if name != wanted)
    np.testing.assert_allclose(alone[wanted], every[wanted], rtol=1e-12, atol=1e-12)


@given(case=conv_cases(max_n=2, max_c=2, max_hw=5), seed=seeds)
def test_conv2d_without_bias_gradcheck(case, seed):
    r = np.random.default_rng(seed)
    x, w = T(r.standard_normal(case.x_shape)), T(r.standard_normal(case.w_shape))
    assert mr.gradcheck(
        lambda x, w: F.conv2d(x, w, None, case.stride, case.padding), (x, w), mode="elementwise"
    )


@pytest.mark.parametrize("case", SHIFTED_CHUNK_CASES)
def test_conv2d_shifted_in_several_chunks_gradcheck(small_shifted_chunks, case):
    # The input and weight gradients run the same chunk loop as the forward.
    assert grid_positions(case) > 256 and grid_positions(case) % 256  # a partial last chunk
    r = np.random.default_rng(0)
    x, w, b = (
        T(r.standard_normal(case.x_shape)),
        T(r.standard_normal(case.w_shape)),
        T(r.standard_normal(case.F)),
    )
    assert mr.gradcheck(
        lambda x, w, b: F.conv2d(x, w, b, case.stride, case.padding),
        (x, w, b),
        mode="elementwise",
    )


def test_conv2d_gradcheck_full_jacobian(rng):
    # Every entry of d out / d in, one backward per output entry.
    x, w, b = (
        T(rng.standard_normal((1, 2, 4, 3))),
        T(rng.standard_normal((2, 2, 2, 2))),
        T([0.3, -1]),
    )
    assert mr.gradcheck(
        lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=1), (x, w, b), mode="jacobian"
    )


def test_conv2d_gradcheck_only_weight(rng):
    # An input without requires_grad gets no gradient and is not checked.
    x = mr.Tensor(rng.standard_normal((2, 2, 5, 5)))
    w = T(rng.standard_normal((3, 2, 3, 3)))
    assert mr.gradcheck(lambda x, w: F.conv2d(x, w, padding=1), (x, w), mode="elementwise")
    y = F.conv2d(x, w, padding=1)
    y.backward(np.ones(y.shape))
    assert x.grad is None and w.grad.shape == w.shape


# --------------------------------------------------------------------------
# batch_norm
# --------------------------------------------------------------------------

bn_shapes = st.one_of(
    st.tuples(st.integers(2, 4), st.integers(1, 3)),
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(2, 4)),
)


def _bn_inputs(r, shape):
    C = shape[1]
    x = T(5 * r.standard_normal(shape) + 12)  # non-centred (CS231n's test)
    gamma = T(r.uniform(0.5, 2.0, C) * r.choice([-1.0, 1.0], C))  # never all ones
    beta = T(r.standard_normal(C))
    return x, gamma, beta


@given(shape=bn_shapes, seed=seeds)
def test_batch_norm_training_gradcheck(shape, seed):
    r = np.random.default_rng(seed)
    x, gamma, beta = _bn_inputs(r, shape)
    C = shape[1]
    rm, rv = np.zeros(C), np.ones(C)

    def fn(x, gamma, beta):
        # Fresh buffers each call, so the check's many forwards see one state.
        return F.batch_norm(x, rm.copy(), rv.copy(), gamma, beta, training=True)

    assert mr.gradcheck(fn, (x, gamma, beta), mode="elementwise", seed=seed)


@given(shape=bn_shapes, seed=seeds)
def test_batch_norm_eval_gradcheck(shape, seed):
    r = np.random.default_rng(seed)
    x, gamma, beta = _bn_inputs(r, shape)
    C = shape[1]
    rm, rv = 12 + r.standard_normal(C), r.uniform(5, 30, C)
    assert mr.gradcheck(
        lambda x, g, b: F.batch_norm(x, rm, rv, g, b, training=False),
        (x, gamma, beta),
        mode="elementwise",
    )


# Which of (x, weight, bias) require a gradient. Each one alone matters: in
# eval mode gamma's gradient needs x-hat, saved only when gamma asks for it,
# and a swapped flag (weight's read as bias's) once passed every other test.
BN_WANTED = [
    ("weight",),
    ("bias",),
    ("x",),
    ("x", "weight"),
    ("x", "bias"),
    ("weight", "bias"),
]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("wanted", BN_WANTED, ids="+".join)
def test_batch_norm_one_gradient_alone(wanted, training, rng):
    x0, g0, b0 = _bn_inputs(rng, (3, 2, 2, 3))
    rm, rv = 12 + rng.standard_normal(2), rng.uniform(5, 30, 2)
    x, gamma, beta = (
        mr.Tensor(t.data, requires_grad=name in wanted)
        for t, name in zip((x0, g0, b0), ("x", "weight", "bias"))
    )

    def fn(x, gamma, beta):
        return F.batch_norm(x, rm.copy(), rv.copy(), gamma, beta, training=training)

    # Against finite differences: a gradient left at None counts as zero,
    # which finite differences contradict.
    assert mr.gradcheck(fn, (x, gamma, beta), mode="elementwise")
    gy = rng.standard_normal(x.shape)
    fn(x, gamma, beta).backward(gy)
    for t, name in zip((x, gamma, beta), ("x", "weight", "bias")):
        assert (t.grad is not None) == (name in wanted), name
    if not training:  # and against the formula: y = gamma * (x - rm) / sqrt(rv + eps) + beta
        xhat = (x.data - rm[:, None, None]) / np.sqrt(rv + 1e-5)[:, None, None]
        if "weight" in wanted:
            np.testing.assert_allclose(gamma.grad, (gy * xhat).sum(axis=(0, 2, 3)), rtol=1e-12)
        if "bias" in wanted:
            np.testing.assert_allclose(beta.grad, gy.sum(axis=(0, 2, 3)), rtol=1e-12)


def test_batch_norm_training_without_affine_gradcheck(rng):
    x = T(5 * rng.standard_normal((3, 2, 3, 3)) + 12)
    assert mr.gradcheck(lambda x: F.batch_norm(x, None, None, training=True), x)


def test_batch_norm_gradient_is_not_trivially_small(rng):
    # Guard against a vacuous pass: with a random upstream, the input gradient
    # of a training BatchNorm is O(1), not the ~0 a summed output would give.
    x, gamma, beta = _bn_inputs(rng, (4, 3, 2, 2))
    y = F.batch_norm(x, None, None, gamma, beta, training=True)
    y.backward(rng.standard_normal(y.shape))
    assert np.abs(x.grad).max() > 1e-2
    assert np.abs(gamma.grad).max() > 1e-1


# --------------------------------------------------------------------------
# ReLU and pooling
# --------------------------------------------------------------------------


@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple),
    seed=seeds,
)
def test_relu_gradcheck_away_from_kink(shape, seed):
    x = T(kink_free(np.random.default_rng(seed), shape))
    assert mr.gradcheck(F.relu, x, mode="elementwise", seed=seed)


@with_corners(POOL_CORNERS)
@given(case=pool_cases(), seed=seeds)
def test_max_pool2d_gradcheck_without_ties(case, seed):
    x = T(kink_free(np.random.default_rng(seed), case.x_shape))
    assert mr.gradcheck(
        lambda x: F.max_pool2d(x, case.kernel, case.stride, case.padding),
        x,
        mode="elementwise",
        seed=seed,
    )


def test_max_pool2d_gradient_goes_to_the_maximum():
    x = T([[[[1.0, 5.0, 2.0], [0.0, 3.0, 4.0], [7.0, 6.0, -1.0]]]])
    y = F.max_pool2d(x, 2, stride=1)
    np.testing.assert_array_equal(y.data[0, 0], [[5, 5], [7, 6]])
    y.backward(np.array([[[[1.0, 10.0], [100.0, 1000.0]]]]))
    # 5 wins two windows and gets both shares.
    np.testing.assert_array_equal(x.grad[0, 0], [[0, 11, 0], [0, 0, 0], [100, 1000, 0]])


@with_corners(POOL_CORNERS)
@given(case=pool_cases(), seed=seeds)
def test_avg_pool2d_gradcheck(case, seed):
    x = T(np.random.default_rng(seed).standard_normal(case.x_shape))
    assert mr.gradcheck(
        lambda x: F.avg_pool2d(x, case.kernel, case.stride, case.padding),
        x,
        mode="elementwise",
    )


@given(
    n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 5), w=st.integers(1, 5), seed=seeds
)
def test_adaptive_avg_pool2d_gradcheck(n, c, h, w, seed):
    x = T(np.random.default_rng(seed).standard_normal((n, c, h, w)))
    assert mr.gradcheck(lambda x: F.adaptive_avg_pool2d(x, 1), x, mode="elementwise")


def test_adaptive_avg_pool2d_window_gradcheck(rng):
    x = T(rng.standard_normal((2, 2, 4, 6)))
    assert mr.gradcheck(lambda x: F.adaptive_avg_pool2d(x, (2, 3)), x, mode="elementwise")


# --------------------------------------------------------------------------
# linear, cross_entropy, flatten
# --------------------------------------------------------------------------


@given(n=st.integers(1, 4), i=st.integers(1, 5), o=st.integers(1, 4), seed=seeds)
def test_linear_gradcheck(n, i, o, seed):
    r = np.random.default_rng(seed)
    x, w, b = T(r.standard_normal((n, i))), T(r.standard_normal((o, i))), T(r.standard_normal(o))
    assert mr.gradcheck(F.linear, (x, w, b), mode="elementwise", seed=seed)
    assert mr.gradcheck(lambda x, w: F.linear(x, w), (x, w), mode="elementwise")


@given(
    n=st.integers(1, 4),
    k=st.integers(2, 5),
    reduction=st.sampled_from(["mean", "sum"]),
    seed=seeds,
)
def test_cross_entropy_gradcheck(n, k, reduction, seed):
    r = np.random.default_rng(seed)
    logits = T(3 * r.standard_normal((n, k)))
    labels = r.integers(0, k, n)
    assert mr.gradcheck(
        lambda z: F.cross_entropy(z, labels, reduction=reduction), logits, mode="elementwise"
    )


def test_cross_entropy_gradient_is_softmax_minus_onehot(rng):
    z = T(rng.standard_normal((3, 4)))
    labels = np.array([2, 0, 3])
    F.cross_entropy(z, labels).backward()
    p = np.exp(z.data) / np.exp(z.data).sum(axis=1, keepdims=True)
    p[np.arange(3), labels] -= 1
    np.testing.assert_allclose(z.grad, p / 3, rtol=1e-12, atol=1e-15)


def test_flatten_gradcheck(rng):
    x = T(rng.standard_normal((2, 3, 2, 2)))
    assert mr.gradcheck(lambda x: F.flatten(x, 1) * 2.0, x, mode="elementwise")


# --------------------------------------------------------------------------
# Whole blocks: the residual block, end to end
# --------------------------------------------------------------------------


def _residual_block(case_seed: int, C: int = 2):
    r = np.random.default_rng(case_seed)
    w1, w2 = T(0.5 * r.standard_normal((C, C, 3, 3))), T(0.5 * r.standard_normal((C, C, 3, 3)))
    g1, g2 = T(r.uniform(0.5, 1.5, C)), T(r.uniform(0.5, 1.5, C))
    b1, b2 = T(r.standard_normal(C)), T(r.standard_normal(C))

    def block(x):
        h = F.conv2d(x, w1, padding=1)
        h = F.relu(F.batch_norm(h, None, None, g1, b1, training=True))
        h = F.conv2d(h, w2, padding=1)
        h = F.batch_norm(h, None, None, g2, b2, training=True)
        return F.relu(h + x)

    return block, [w1, g1, b1, w2, g2, b2]


def test_residual_block_directional_gradcheck(rng):
    block, params = _residual_block(1)
    x = T(rng.standard_normal((2, 2, 5, 5)))
    assert mr.gradcheck(block, x, params=params, mode="directional", n_directions=4)


def test_residual_block_elementwise_gradcheck_of_input(rng):
    block, params = _residual_block(2, C=1)
    x = T(rng.standard_normal((2, 1, 3, 3)))
    assert mr.gradcheck(block, x, params=params, mode="elementwise")


def test_residual_gradient_is_shortcut_plus_branch(rng):
    # y = F(x) + x  =>  dL/dx = dL/dy (I + dF/dx): the shortcut hands gy to x
    # unchanged, and the branch adds its own part.
    w = T(0.5 * rng.standard_normal((2, 2, 3, 3)))
    x = T(rng.standard_normal((1, 2, 4, 4)))
    gy = rng.standard_normal(x.shape)

    branch = F.conv2d(x, w, padding=1)
    branch.backward(gy)
    branch_grad = x.grad.copy()

    x.grad = None
    (F.conv2d(x, w, padding=1) + x).backward(gy)
    np.testing.assert_allclose(x.grad, gy + branch_grad, rtol=1e-12, atol=1e-12)


def test_small_network_directional_gradcheck(rng):
    C = 2
    w1, b1 = T(0.5 * rng.standard_normal((C, 1, 3, 3))), T(rng.standard_normal(C))
    g, bb = T(rng.uniform(0.5, 1.5, C)), T(rng.standard_normal(C))
    wl, bl = T(rng.standard_normal((3, C))), T(rng.standard_normal(3))
    labels = np.array([0, 2, 1])

    def net(x):
        h = F.conv2d(x, w1, b1, stride=2, padding=1)
        h = F.relu(F.batch_norm(h, None, None, g, bb, training=True))
        h = F.avg_pool2d(h, 2, stride=1)
        h = F.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        return F.cross_entropy(F.linear(h, wl, bl), labels)

    x = T(rng.standard_normal((3, 1, 7, 7)))
    params = [w1, b1, g, bb, wl, bl]
    assert mr.gradcheck(net, x, params=params, mode="directional", n_directions=5)
    assert mr.gradcheck(net, x, params=params, mode="elementwise")


def test_gradcheck_refuses_a_silent_pass_without_inputs(rng):
    x = mr.Tensor(rng.standard_normal(3))
    with pytest.raises(ValueError, match="no input has requires_grad"):
        mr.gradcheck(F.relu, x)


def test_gradcheck_warns_below_float64(rng):
    x = mr.Tensor(rng.standard_normal(3).astype(np.float32) + 3, requires_grad=True)
    with pytest.warns(UserWarning, match="not float64"):
        assert mr.gradcheck(lambda x: x * 2.0, x, eps=1e-2, atol=1e-3, rtol=1e-3)


def test_gradcheck_restores_inputs_and_grads(rng):
    x = T(rng.standard_normal((2, 3)))
    before = x.data.copy()
    x.grad = np.full((2, 3), 7.0)
    assert mr.gradcheck(lambda x: (x * x).sum(dim=1), x, mode="elementwise")
    assert mr.gradcheck(lambda x: (x * x).sum(dim=1), x, mode="directional")
    np.testing.assert_array_equal(x.data, before)
    np.testing.assert_array_equal(x.grad, 7.0)


@pytest.mark.parametrize("case", [CONV_CORNERS[0], ConvCase(1, 2, 2, 6, 6, (3, 3), (2, 2), (1, 1))])
def test_conv_bn_relu_directional(case):
    r = np.random.default_rng(5)
    x = T(r.standard_normal(case.x_shape))
    w = T(r.standard_normal(case.w_shape))
    g, b = T(r.uniform(0.5, 2, case.F)), T(r.standard_normal(case.F))

    def fn(x, w, g, b):
        y = F.conv2d(x, w, None, case.stride, case.padding)
        return F.batch_norm(y, None, None, g, b, training=True)

    assert mr.gradcheck(fn, (x, w, g, b), mode="directional", n_directions=6)


# --------------------------------------------------------------------------
# Memory layout: ops read channel-major views (the layout conv and BN
# produce) and strided slices exactly as they read contiguous NCHW arrays
# --------------------------------------------------------------------------

LAYOUT_OPS = {
    "conv2d": lambda x, w: F.conv2d(x, w, stride=2, padding=1),
    "batch_norm": lambda x, w: F.batch_norm(x, None, None, w[0, :, 0, 0] + 2, None, training=True),
    "max_pool2d": lambda x, w: F.max_pool2d(x, 3, stride=2, padding=1),
    "avg_pool2d": lambda x, w: F.avg_pool2d(x, 2, stride=1, padding=1),
    "adaptive_avg_pool2d": lambda x, w: F.adaptive_avg_pool2d(x, 1),
    "relu": lambda x, w: F.relu(x),
    "flatten": lambda x, w: F.flatten(x, 1),
}
LAYOUTS = {
    # (N, C, H, W) views of the same values, from differently stored arrays
    "contiguous": lambda a: a,
    "channel-major": lambda a: (  # stored (C, N, H, W)
        a.permute(1, 0, 2, 3) if isinstance(a, mr.Tensor) else a.transpose(1, 0, 2, 3)
    ),
    "strided": lambda a: a[:, :, ::2, 1::2],  # every other row and column
}
LAYOUT_STORAGE = {
    "contiguous": lambda a: a,
    "channel-major": lambda a: np.ascontiguousarray(a.transpose(1, 0, 2, 3)),
    "strided": lambda a: np.repeat(np.repeat(a, 2, axis=2), 2, axis=3),
}


@pytest.mark.parametrize("op", list(LAYOUT_OPS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_ops_give_the_same_values_and_gradients_for_any_layout(op, layout, rng):
    values = kink_free(rng, (2, 3, 5, 5))  # no ReLU kinks, no max-pool ties
    w = T(rng.standard_normal((3, 3, 3, 3)))
    fn = LAYOUT_OPS[op]
    gy = None

    def run(x_view):
        nonlocal gy
        y = fn(x_view, w)
        if gy is None:
            gy = rng.standard_normal(y.shape)
        y.backward(gy)
        return y.data.copy()

    x_ref = T(values)
    y_ref = run(x_ref)
    stored = T(LAYOUT_STORAGE[layout](values))
    view = LAYOUTS[layout]
    x_view = view(stored)  # a Transpose / GetItem node: its data is a non-contiguous view
    assert x_view.data.flags.c_contiguous == (layout == "contiguous")
    y = run(x_view)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(view(stored.grad), x_ref.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d", "batch_norm", "conv2d"])
def test_channel_major_input_gradcheck(op, rng):
    # x is stored (C, N, H, W); the op sees its (N, C, H, W) view.
    x = T(kink_free(rng, (3, 2, 5, 5)))
    w = T(rng.standard_normal((3, 3, 3, 3)))
    assert mr.gradcheck(
        lambda x, w: LAYOUT_OPS[op](x.permute(1, 0, 2, 3), w), (x, w), mode="elementwise"
    )
