"""The public finite-difference helpers of minires.gradcheck, against exact gradients."""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
import minires.functional as F
from minires.gradcheck import numerical_directional, numerical_jacobian, numerical_vjp


def test_numerical_vjp_of_a_matmul_is_exact_up_to_rounding():
    rng = np.random.default_rng(0)
    a, b, u = rng.standard_normal((3, 4)), rng.standard_normal((4, 2)), rng.standard_normal((3, 2))
    ga, gb = numerical_vjp(lambda x, y: x @ y, [mr.tensor(a), mr.tensor(b)], u)
    assert np.allclose(ga, u @ b.T, atol=1e-9) and np.allclose(gb, a.T @ u, atol=1e-9)
    # one input in, one array out; an array input is copied, not changed
    a_before = a.copy()
    assert np.allclose(numerical_vjp(lambda x: x @ mr.tensor(b), a, u), u @ b.T, atol=1e-9)
    assert np.array_equal(a, a_before)


def test_inputs_are_restored_exactly():
    rng = np.random.default_rng(1)
    x = mr.tensor(rng.standard_normal((2, 3, 4, 4)))
    before = x.data.copy()
    numerical_vjp(F.relu, x, rng.standard_normal(x.shape))
    numerical_jacobian(F.relu, x)
    numerical_directional(F.relu, x, rng.standard_normal(x.shape), rng.standard_normal(x.shape))
    assert np.array_equal(x.data, before)


def test_numerical_jacobian_and_directional_agree_with_autograd():
    rng = np.random.default_rng(2)
    x_np = rng.standard_normal((2, 2, 3, 3)) + 0.5

    def fn(t):
        return F.batch_norm(t, None, None, training=True) * t

    J = numerical_jacobian(fn, x_np)
    assert J.shape == (x_np.size, x_np.size)
    u, v = rng.standard_normal(x_np.shape), rng.standard_normal(x_np.shape)
    x = mr.tensor(x_np.copy(), requires_grad=True)
    fn(x).backward(u)
    assert np.allclose(u.ravel() @ J, x.grad.ravel(), atol=1e-7)
    assert np.isclose(numerical_directional(fn, x_np, u, v), np.vdot(x.grad, v), rtol=1e-7)


def test_directional_needs_one_direction_per_input():
    x = mr.tensor(np.ones(3))
    with pytest.raises(ValueError, match="directions"):
        numerical_directional(lambda a, b: a * b, [x, x], np.ones(3), [np.ones(3)])
