"""The autograd engine: every Tensor op against finite differences, and the
graph semantics that hand-written engines most often get wrong (ANCHORS §8.1-3):
reuse and accumulation, generation order, no_grad, backward twice, deep
graphs, gradient aliasing, retain_grad.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import kink_free
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minires as mr
import minires.functional as F
from minires import Function

seeds = st.integers(0, 2**32 - 1)


def T(a, requires_grad=True) -> mr.Tensor:
    return mr.Tensor(np.array(a, dtype=np.float64), requires_grad=requires_grad)


def away_from_zero(r, shape, low=0.5, high=2.0):
    return r.uniform(low, high, shape) * r.choice([-1.0, 1.0], shape)


def check(fn, *inputs, **kw):
    return mr.gradcheck(fn, inputs, mode="elementwise", **kw)


# --------------------------------------------------------------------------
# Every Tensor op, gradchecked in float64, with broadcasting
# --------------------------------------------------------------------------

pairs = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=3)


@given(shapes=pairs, seed=seeds)
def test_add_sub_mul_broadcast_gradcheck(shapes, seed):
    r = np.random.default_rng(seed)
    a, b = (
        T(r.standard_normal(shapes.input_shapes[0])),
        T(r.standard_normal(shapes.input_shapes[1])),
    )
    assert check(lambda a, b: a + b, a, b)
    assert check(lambda a, b: a - b, a, b)
    assert check(lambda a, b: a * b, a, b)
    assert check(lambda a, b: b - a * b, a, b)


@given(shapes=pairs, seed=seeds)
def test_div_broadcast_gradcheck(shapes, seed):
    r = np.random.default_rng(seed)
    a = T(r.standard_normal(shapes.input_shapes[0]))
    b = T(away_from_zero(r, shapes.input_shapes[1]))
    assert check(lambda a, b: a / b, a, b)


@given(shapes=pairs, seed=seeds)
def test_broadcast_gradients_are_reduced_to_each_input_shape(shapes, seed):
    r = np.random.default_rng(seed)
    sa, sb = shapes.input_shapes
    a, b = T(r.standard_normal(sa)), T(r.standard_normal(sb))
    y = a * b
    assert y.shape == shapes.result_shape
    gy = r.standard_normal(y.shape)
    y.backward(gy)
    assert a.grad.shape == sa and b.grad.shape == sb
    # The reference reduction: the broadcast gradient summed over the copies.
    ga = np.broadcast_to(gy * np.broadcast_to(b.data, y.shape), y.shape)
    expected = ga.sum(axis=tuple(range(len(y.shape) - len(sa)))) if len(sa) < len(y.shape) else ga
    expected = expected.sum(
        axis=tuple(i for i, n in enumerate(sa) if n == 1 and expected.shape[i] != 1),
        keepdims=True,
    )
    np.testing.assert_allclose(a.grad, expected.reshape(sa), rtol=1e-12, atol=1e-12)


def test_broadcast_counts_by_hand():
    a = T(np.ones((3, 1)))
    b = T(np.ones((2, 1, 4)))
    (a + b).sum().backward()
    np.testing.assert_array_equal(a.grad, np.full((3, 1), 8.0))  # used 2*4 times
    np.testing.assert_array_equal(b.grad, np.full((2, 1, 4), 3.0))


@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=3), seed=seeds)
def test_python_scalar_operands_gradcheck(shape, seed):
    r = np.random.default_rng(seed)
    x = T(away_from_zero(r, shape))
    assert check(lambda x: 2.5 + x, x)
    assert check(lambda x: x - 1.5, x)
    assert check(lambda x: 3.0 - x, x)
    assert check(lambda x: 0.5 * x, x)
    assert check(lambda x: x / 3, x)
    assert check(lambda x: 3 / x, x)
    assert check(lambda x: -x, x)


@given(
    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=3),
    exponent=st.sampled_from([2, 3, -1, 0.5, 1.5, -2.5]),
    seed=seeds,
)
def test_pow_gradcheck(shape, exponent, seed):
    x = T(np.random.default_rng(seed).uniform(0.5, 2.0, shape))  # x > 0 for any exponent
    assert check(lambda x: x**exponent, x)


@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=3), seed=seeds)
def test_exp_log_relu_gradcheck(shape, seed):
    r = np.random.default_rng(seed)
    assert check(lambda x: x.exp(), T(r.standard_normal(shape)))
    assert check(lambda x: x.log(), T(r.uniform(0.2, 3.0, shape)))
    assert check(lambda x: F.relu(x), T(kink_free(r, shape)))


@given(
    m=st.integers(1, 3),
    k=st.integers(1, 3),
    n=st.integers(1, 3),
    batch_a=st.sampled_from([(), (2,), (1,), (2, 1)]),
    batch_b=st.sampled_from([(), (2,), (1,), (3, 1, 1)]),
    seed=seeds,
)
def test_matmul_gradcheck_with_batch_broadcasting(m, k, n, batch_a, batch_b, seed):
    r = np.random.default_rng(seed)
    a, b = T(r.standard_normal((*batch_a, m, k))), T(r.standard_normal((*batch_b, k, n)))
    y = a @ b
    assert y.shape == np.broadcast_shapes(batch_a, batch_b) + (m, n)
    assert check(lambda a, b: a @ b, a, b)


@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=3),
    keepdims=st.booleans(),
    data=st.data(),
    seed=seeds,
)
def test_sum_mean_gradcheck(shape, keepdims, data, seed):
    nd = len(shape)
    axis = data.draw(
        st.one_of(
            st.none(),
            st.integers(-nd, nd - 1),
            st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True).map(tuple),
        )
    )
    x = T(np.random.default_rng(seed).standard_normal(shape))
    y = x.sum(dim=axis, keepdim=keepdims)
    np.testing.assert_allclose(y.data, x.data.sum(axis=axis, keepdims=keepdims))
    m = x.mean(dim=axis, keepdim=keepdims)
    np.testing.assert_allclose(m.data, x.data.mean(axis=axis, keepdims=keepdims))
    assert check(lambda x: x.sum(dim=axis, keepdim=keepdims), x)
    assert check(lambda x: x.mean(dim=axis, keepdim=keepdims), x)


@given(shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=3), data=st.data(), seed=seeds)
def test_reshape_transpose_flatten_gradcheck(shape, data, seed):
    x = T(np.random.default_rng(seed).standard_normal(shape))
    axes = data.draw(st.permutations(range(len(shape))))
    start = data.draw(st.integers(0, len(shape) - 1))
    assert check(lambda x: x.reshape(-1, 1) * 2.0, x)
    assert check(lambda x: x.reshape(x.numel()) * 2.0, x)
    assert check(lambda x: x.permute(*axes) * 2.0, x)
    assert check(lambda x: x.T * 2.0, x)
    assert check(lambda x: x.flatten(start) * 2.0, x)
    np.testing.assert_array_equal(x.permute(*axes).data, x.data.transpose(axes))
    assert x.flatten(start).shape == shape[:start] + (int(np.prod(shape[start:])),)


@pytest.mark.parametrize(
    "index",
    [
        0,
        -1,
        (slice(None), 1),
        (slice(None, None, -1), slice(0, 2)),
        np.array([0, 0, 2]),  # repeated index: both copies send gradient back
        (np.array([1, 0, 1]), np.array([2, 2, 2])),
        np.array([True, False, True]),
        (Ellipsis, None, 1),
    ],
    ids=["int", "negative", "slice", "reversed", "repeated", "pairs", "mask", "ellipsis"],
)
def test_getitem_gradcheck(index, rng):
    x = T(rng.standard_normal((3, 3, 2)))
    np.testing.assert_array_equal(x[index].data, x.data[index])
    assert check(lambda x: x[index] * 1.5, x)


def test_getitem_repeated_index_accumulates():
    x = T(np.zeros(3))
    x[np.array([0, 0, 0, 2])].sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 0.0, 1.0])


def test_composite_expression_gradcheck(rng):
    a, b, c = (
        T(rng.standard_normal((2, 3))),
        T(rng.standard_normal(3)),
        T(rng.uniform(1, 2, (2, 1))),
    )
    assert check(
        lambda a, b, c: ((a * b - c).exp() / c + (a @ b.reshape(3, 1)) ** 2).mean(0), a, b, c
    )
    assert mr.gradcheck(
        lambda a, b, c: (F.relu(a) * b + c.log()).sum(1), (a, b, c), mode="jacobian"
    )


# --------------------------------------------------------------------------
# A tensor used twice: gradients accumulate
# --------------------------------------------------------------------------


def test_a_plus_a():
    a = T([3.0, -1.0])
    (a + a).sum().backward()
    np.testing.assert_array_equal(a.grad, [2.0, 2.0])


def test_a_times_a():
    a = T([3.0, -1.0])
    (a * a).sum().backward()
    np.testing.assert_array_equal(a.grad, [6.0, -2.0])


def test_diamond():
    # x -> b = 2x, c = 3x -> y = b * c = 6 x^2  =>  dy/dx = 12 x
    x = T([1.5, -2.0])
    b, c = x * 2.0, x * 3.0
    (b * c).sum().backward()
    np.testing.assert_allclose(x.grad, 12 * x.data)


def test_reused_intermediate():
    # micrograd#21 style: a non-leaf used three times. h = 2x, y = h*h + h.
    x = T([0.5, -3.0])
    h = x * 2.0
    (h * h + h).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * (2 * h.data + 1))
    assert check(lambda x: (x * 2.0) * (x * 2.0) + x * 2.0, x)


def test_residual_fork(rng):
    # y = f(x) + x with f = tanh-free but nonlinear: f(x) = (x*w)^2.
    w = T(rng.standard_normal(4))
    x = T(rng.standard_normal(4))
    y = (x * w) ** 2 + x
    gy = rng.standard_normal(4)
    y.backward(gy)
    np.testing.assert_allclose(x.grad, gy * (2 * x.data * w.data**2 + 1), rtol=1e-12)
    np.testing.assert_allclose(w.grad, gy * 2 * w.data * x.data**2, rtol=1e-12)
    assert check(lambda x, w: (x * w) ** 2 + x, x, w)


def test_stacked_residual_forks_gradcheck(rng):
    x = T(rng.standard_normal((2, 3)))
    ws = [T(rng.standard_normal((3, 3)) * 0.5) for _ in range(4)]

    def net(x, *ws):
        for w in ws:
            x = F.relu(x @ w) + x
        return x

    assert check(net, x, *ws)


# --------------------------------------------------------------------------
# Generation order
# --------------------------------------------------------------------------


class Trace(Function):
    """Identity that records when its backward runs and what it received."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def forward(self, x):
        return x.copy()

    def backward(self, gy):
        self.log.append((self.name, gy.copy()))
        return gy


def test_generation_numbers_on_a_diamond():
    log = []
    x = T([1.0])
    top = Trace("top", log)(x)
    left = Trace("L", log)(top)
    r1 = Trace("R1", log)(top)
    r2 = Trace("R2", log)(r1)
    y = left + r2
    assert (x.generation, top.generation, left.generation, r1.generation) == (0, 1, 2, 2)
    assert (r2.generation, y.generation) == (3, 4)
    assert top.creator.generation == 0 and y.creator.generation == 3


def test_asymmetric_diamond_runs_the_shared_node_once_after_both_branches():
    # top feeds a short branch (L) and a long one (R1 -> R2). A depth-first
    # walk would run top after L, before R1 had delivered its share.
    log = []
    x = T([1.0, 2.0])
    top = Trace("top", log)(x)
    y = Trace("L", log)(top) * 3.0 + Trace("R2", log)(Trace("R1", log)(top))
    y.backward(np.array([1.0, 1.0]))
    names = [name for name, _ in log]
    assert sorted(names) == ["L", "R1", "R2", "top"]
    assert names[-1] == "top" and names.index("R2") < names.index("R1")
    np.testing.assert_array_equal(log[-1][1], [4.0, 4.0])  # 3 via L + 1 via R
    np.testing.assert_array_equal(x.grad, [4.0, 4.0])


def test_many_blocks_each_backward_runs_once():
    log = []
    x = T(np.ones(2))
    h = x
    for i in range(6):
        h = Trace(f"b{i}", log)(h) * 2.0 + h  # h_{i+1} = 3 h_i
    h.sum().backward()
    names = [n for n, _ in log]
    assert names == [f"b{i}" for i in reversed(range(6))]
    np.testing.assert_array_equal(x.grad, [3.0**6, 3.0**6])


# --------------------------------------------------------------------------
# no_grad
# --------------------------------------------------------------------------


def test_no_grad_records_no_graph(rng):
    x = T(rng.standard_normal((2, 3)))
    with mr.no_grad():
        assert not mr.is_grad_enabled()
        y = F.relu(x * 2.0).sum()
        z = F.linear(x, x)
    assert mr.is_grad_enabled()
    for t in (y, z):
        assert t.creator is None and not t.requires_grad and t.is_leaf
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_no_grad_as_decorator_and_enable_grad_inside(rng):
    x = T(rng.standard_normal(3))

    @mr.no_grad()
    def infer(x):
        with mr.enable_grad():
            inner = x * 2.0
        return x * 2.0, inner

    outer, inner = infer(x)
    assert outer.creator is None and not outer.requires_grad
    assert inner.creator is not None and inner.requires_grad
    assert mr.is_grad_enabled()


def test_no_grad_restores_the_flag_after_an_exception():
    with pytest.raises(KeyError), mr.no_grad():
        raise KeyError("inside no_grad")
    assert mr.is_grad_enabled()


def test_inputs_without_requires_grad_build_no_graph(rng):
    a, b = T(rng.standard_normal(3), False), T(rng.standard_normal(3), False)
    y = a * b
    assert y.creator is None and not y.requires_grad


def test_detach_cuts_the_graph(rng):
    x = T(rng.standard_normal(3))
    y = (x * 2.0).detach() * x
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data)  # the detached factor is a constant


def test_only_inputs_that_require_grad_get_gradients(rng):
    a, b = T(rng.standard_normal(3)), T(rng.standard_normal(3), False)
    (a * b).sum().backward()
    np.testing.assert_array_equal(a.grad, b.data)
    assert b.grad is None


# --------------------------------------------------------------------------
# backward semantics
# --------------------------------------------------------------------------


def test_backward_twice_without_retain_graph_raises(rng):
    x = T(rng.standard_normal(3))
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match=r"already freed.*retain_graph=True"):
        y.backward()


def test_backward_twice_with_retain_graph_accumulates(rng):
    x = T(rng.standard_normal(3))
    w = T(rng.standard_normal(3))
    y = ((x * w).exp()).sum()
    y.backward(retain_graph=True)
    once_x, once_w = x.grad.copy(), w.grad.copy()
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * once_x, rtol=1e-15)
    np.testing.assert_allclose(w.grad, 2 * once_w, rtol=1e-15)
    with pytest.raises(RuntimeError, match="already freed"):
        y.backward()  # the second call did not retain


def test_grads_accumulate_across_graphs_until_zeroed(rng):
    x = T(rng.standard_normal(3))
    (x * 2.0).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, np.full(3, 5.0))
    x.zero_grad()
    assert x.grad is None
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, np.full(3, 3.0))


def test_non_scalar_backward_without_grad_raises(rng):
    y = T(rng.standard_normal(3)) * 2.0
    with pytest.raises(
        RuntimeError, match=r"gradient can be omitted only for a one-element.*\(3,\)"
    ):  # noqa: E501
        y.backward()


def test_backward_with_grad_of_wrong_shape_raises(rng):
    y = T(rng.standard_normal(3)) * 2.0
    with pytest.raises(
        ValueError, match=r"gradient must have the output's shape \(3,\), got \(2,\)"
    ):  # noqa: E501
        y.backward(np.ones(2))


def test_backward_of_a_one_element_tensor_seeds_one(rng):
    x = T(rng.standard_normal((1, 1)))
    (x * 4.0).backward()
    np.testing.assert_array_equal(x.grad, [[4.0]])
    leaf = T(2.0)
    leaf.backward()
    assert leaf.grad == 1.0


def test_backward_on_a_leaf_with_grad(rng):
    x = T(rng.standard_normal(3))
    g = rng.standard_normal(3)
    x.backward(g)
    np.testing.assert_array_equal(x.grad, g)
    g[0] = 1e9  # x.grad is not the caller's array
    assert x.grad[0] != 1e9


def test_deep_chain_of_10000_ops_backpropagates_without_recursion():
    assert sys.getrecursionlimit() < 10_000  # the default: recursion would fail
    x = T([1.0])
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.backward()
    assert y.generation == 10_000
    np.testing.assert_allclose(x.grad, [1.0001**10_000], rtol=1e-9)


def test_deep_chain_is_freed_without_backward():
    # Dropping a 10,000-node graph that never ran backward must not overflow
    # the C stack while the nested objects are deallocated.
    x = T([1.0])
    y = x
    for _ in range(10_000):
        y = y + 1.0
    del y
    y = x * 2.0
    y.backward()
    np.testing.assert_array_equal(x.grad, [2.0])


def test_deep_residual_chain_gradient(rng):
    # 2,000 residual forks y = 0.001*y + y: every node is reused twice.
    x = T([1.0])
    y = x
    for _ in range(2_000):
        y = y * 0.001 + y
    y.backward()
    np.testing.assert_allclose(x.grad, [1.001**2_000], rtol=1e-9)


# --------------------------------------------------------------------------
# Leaf gradients are never aliased
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda a, b: (a - (-b.reshape(2, 3))).sum(),
        lambda a, b: (a + b.reshape(2, 3)) * 1.0,
        lambda a, b: (a + b.reshape(2, 3)).sum(),  # Reshape's backward returns a view
        lambda a, b: (a + b.reshape(3, 2).T).sum(),  # so does Transpose's
    ],
    ids=["sub-neg", "seeded", "reshape-view", "transpose-view"],
)
def test_leaf_grads_are_not_aliased(make, rng):
    a, b = T(rng.standard_normal((2, 3))), T(rng.standard_normal(6))
    y = make(a, b)
    y.backward(np.ones(y.shape))
    b_before = b.grad.copy()
    assert not np.shares_memory(a.grad, b.grad)
    a.grad[...] = 123.0
    np.testing.assert_array_equal(b.grad, b_before)


def test_add_of_two_leaves_gives_separate_grads(rng):
    a, b = T(rng.standard_normal((2, 3))), T(rng.standard_normal((2, 3)))
    (a + b).sum().backward()
    assert not np.shares_memory(a.grad, b.grad)
    a.grad[...] = 5.0
    np.testing.assert_array_equal(b.grad, np.ones((2, 3)))


def test_retained_grad_is_not_aliased_with_a_leaf_grad(rng):
    a, c = T(rng.standard_normal(3)), T(rng.standard_normal(3))
    h = c * 2.0
    h.retain_grad()
    (h + a).sum().backward()
    assert not np.shares_memory(h.grad, a.grad)
    a.grad[...] = 7.0
    np.testing.assert_array_equal(h.grad, np.ones(3))


def test_a_plus_a_grad_is_not_the_upstream_array():
    a = T(np.ones(2))
    y = a * 1.0
    z = y + y  # Add hands the very same gy to both operands
    z.sum().backward()
    np.testing.assert_array_equal(a.grad, [2.0, 2.0])


# --------------------------------------------------------------------------
# retain_grad
# --------------------------------------------------------------------------


def test_retain_grad_on_a_non_leaf(rng):
    x = T(rng.standard_normal(3))
    h = x * 3.0
    k = h * h
    h.retain_grad()
    k.sum().backward()
    np.testing.assert_allclose(h.grad, 2 * h.data)
    assert k.grad is None  # not asked for
    np.testing.assert_allclose(x.grad, 3 * 2 * h.data)


def test_retain_grad_sums_all_consumers(rng):
    x = T(rng.standard_normal(3))
    h = x * 1.0
    h.retain_grad()
    (h * 2.0 + h * 5.0).sum().backward()
    np.testing.assert_array_equal(h.grad, np.full(3, 7.0))


def test_retain_grad_accumulates_over_backward_calls(rng):
    # Like a leaf's, a retained gradient adds up over backward passes until
    # it is reset; it is not overwritten by the latest pass.
    x = T(rng.standard_normal(3))
    h = x * 3.0
    h.retain_grad()
    y1, y2 = (h * h).sum(), (h * 5.0).sum()
    y1.backward(retain_graph=True)
    np.testing.assert_allclose(h.grad, 2 * h.data, rtol=1e-15)
    y2.backward()
    np.testing.assert_allclose(h.grad, 2 * h.data + 5.0, rtol=1e-15)
    np.testing.assert_allclose(x.grad, 3 * (2 * h.data + 5.0), rtol=1e-15)


def test_retain_grad_accumulates_as_torch(rng):
    torch = pytest.importorskip("torch")
    a = rng.standard_normal((2, 3))
    x, xt = T(a), torch.tensor(a, requires_grad=True)
    h, ht = x * 3.0, xt * 3.0
    h.retain_grad(), ht.retain_grad()
    for _ in range(2):  # the same graph twice
        (h * h).sum().backward(retain_graph=True)
        (ht * ht).sum().backward(retain_graph=True)
    (h * h.exp()).mean().backward()  # and another graph through h
    (ht * ht.exp()).mean().backward()
    np.testing.assert_allclose(h.grad, ht.grad.numpy(), rtol=1e-13)
    np.testing.assert_allclose(x.grad, xt.grad.numpy(), rtol=1e-13)


def test_gradient_keeps_dtype_and_shape(rng):
    for dtype in (np.float32, np.float64):
        x = mr.Tensor(rng.standard_normal((2, 1, 3)).astype(dtype), requires_grad=True)
        y = (x * x).mean()
        assert y.dtype == dtype
        y.backward()
        assert x.grad.dtype == dtype and x.grad.shape == x.shape


def test_backward_returning_wrong_shape_is_reported(rng):
    class Bad(Function):
        def forward(self, x):
            return x * 2

        def backward(self, gy):
            return gy.sum(axis=0)

    x = T(rng.standard_normal((2, 3)))
    with pytest.raises(RuntimeError, match=r"Bad.backward returned a gradient of shape \(3,\)"):
        Bad()(x).sum().backward()


def test_tensor_requires_grad_and_leaf_flags(rng):
    x = T(rng.standard_normal(3))
    y = x * 2.0
    assert x.is_leaf and x.requires_grad and x.creator is None
    assert not y.is_leaf and y.requires_grad and isinstance(y.creator, Function)


class Split(Function):
    """Two outputs: the rows of a (2, n) array."""

    def forward(self, a):
        return a[0].copy(), a[1].copy()

    def backward(self, g0, g1):
        return np.stack([g0, g1])


def test_multi_output_function_with_one_output_unused(rng):
    x = T(rng.standard_normal((2, 3)))
    top, bottom = Split()(x)
    assert top.generation == bottom.generation == 1
    (top * 2.0).sum().backward()  # bottom never used: its gradient is zeros
    np.testing.assert_array_equal(x.grad, [[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]])


def test_multi_output_gradcheck_in_every_mode(rng):
    x, w = T(rng.standard_normal((2, 3))), T(rng.standard_normal(3))

    def fn(x, w):
        top, bottom = Split()(x * w)
        return top * bottom, (x * x).sum(0), w.exp()

    for mode in ("elementwise", "jacobian", "directional"):
        assert mr.gradcheck(fn, (x, w), mode=mode)
