"""F.batch_norm_relu, the fused relu(batch_norm(x)), on the CPU backends.

The fusion is for speed on a GPU (tests/test_cuda_kernels_cpu.py checks its
kernels); here it must give exactly the numbers of the two ops in a row,
forward and backward, in training and evaluation, and its own gradient must
pass the finite-difference check.
"""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
import minires.functional as F
from minires import nn

BACKENDS = ("fast", "reference")


@pytest.fixture(params=BACKENDS)
def backend(request):
    previous = mr.backends.set_cpu_backend(request.param)
    yield request.param
    mr.backends.set_cpu_backend(previous)


def _inputs(rng: np.random.Generator, dtype=np.float64, shape=(3, 4, 5, 6)):
    C = shape[1]
    x = mr.Tensor((rng.standard_normal(shape) * 2 + 1).astype(dtype), requires_grad=True)
    gamma = mr.Tensor(rng.uniform(0.5, 2, C).astype(dtype), requires_grad=True)
    beta = mr.Tensor((rng.standard_normal(C) * 0.5).astype(dtype), requires_grad=True)
    stats = (rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype))
    return x, gamma, beta, stats


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_numbers_as_bn_then_relu(backend, training, dtype):
    rng = np.random.default_rng(0)
    x, gamma, beta, (rm, rv) = _inputs(rng, dtype)
    gy = rng.standard_normal(x.shape).astype(dtype)
    results = []
    for fused in (True, False):
        for t in (x, gamma, beta):
            t.grad = None
        running = (rm.copy(), rv.copy())
        if fused:
            y = F.batch_norm_relu(x, *running, gamma, beta, training=training)
        else:
            y = F.relu(F.batch_norm(x, *running, gamma, beta, training=training))
        y.backward(gy)
        results.append([y.data, x.grad, gamma.grad, beta.grad, *running])
    assert 0 < (results[0][0] > 0).mean() < 1  # the ReLU does cut something
    for fused, plain in zip(*results):
        assert fused.dtype == plain.dtype == dtype
        np.testing.assert_array_equal(fused, plain)


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck(backend, training):
    rng = np.random.default_rng(1)
    x, gamma, beta, (rm, rv) = _inputs(rng, shape=(2, 3, 3, 4))

    def f(x, gamma, beta):
        return F.batch_norm_relu(x, rm.copy(), rv.copy(), gamma, beta, training=training)

    assert mr.gradcheck(f, [x, gamma, beta])


def test_second_order_matches_bn_then_relu():
    """create_graph through the fused op: the same Hessian-vector product."""
    rng = np.random.default_rng(2)
    x, gamma, beta, _ = _inputs(rng, shape=(2, 3, 3, 3))
    v = rng.standard_normal(x.shape)
    hvps = []
    for fn in (F.batch_norm_relu, lambda *a, **k: F.relu(F.batch_norm(*a, **k))):
        y = fn(x, None, None, gamma, beta, training=True)
        loss = (y * y * mr.Tensor(v)).sum()
        (g,) = mr.autograd.grad(loss, [x], create_graph=True)
        (hvp,) = mr.autograd.grad((g * mr.Tensor(v)).sum(), [gamma])
        hvps.append(hvp.data if hasattr(hvp, "data") else hvp)
    np.testing.assert_allclose(hvps[0], hvps[1], rtol=1e-10, atol=1e-12)


def test_module_relu_argument():
    rng = np.random.default_rng(3)
    x = mr.Tensor(rng.standard_normal((4, 3, 2, 2)))
    fused, plain = nn.BatchNorm2d(3).to(np.float64), nn.BatchNorm2d(3).to(np.float64)
    np.testing.assert_array_equal(fused(x, relu=True).data, F.relu(plain(x)).data)
    np.testing.assert_array_equal(fused.running_var, plain.running_var)
    assert int(fused.num_batches_tracked) == int(plain.num_batches_tracked) == 1
    fused.eval(), plain.eval()
    np.testing.assert_array_equal(fused(x, relu=True).data, F.relu(plain(x)).data)


def test_bad_input_names_the_fused_op():
    with pytest.raises(ValueError, match=r"batch_norm_relu: evaluation mode needs running_mean"):
        F.batch_norm_relu(mr.Tensor(np.ones((2, 3))), None, None, training=False)
