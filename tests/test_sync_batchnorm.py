"""SyncBatchNorm in one process is BatchNorm2d; gradchecked; convert_sync_batchnorm keeps the state.

(Two processes: tests/test_distributed_mpi.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minires as mr
import minires.functional as F
from minires.distributed import GradientBuckets, SingleProcess, broadcast_arrays
from minires.nn import BatchNorm2d, SyncBatchNorm, convert_sync_batchnorm


def _pair(C: int, momentum=0.1, affine=True, seed=0):
    rng = np.random.default_rng(seed)
    bn = BatchNorm2d(C, momentum=momentum, affine=affine).to(np.float64)
    sync = SyncBatchNorm(C, momentum=momentum, affine=affine).to(np.float64)
    if affine:
        bn.weight.data[:] = sync.weight.data[:] = rng.normal(size=C)
        bn.bias.data[:] = sync.bias.data[:] = rng.normal(size=C)
    return bn, sync


@given(
    N=st.integers(1, 3),
    C=st.integers(1, 4),
    H=st.integers(1, 4),
    W=st.integers(2, 4),
    momentum=st.sampled_from([0.1, None]),
    affine=st.booleans(),
)
def test_one_process_equals_batchnorm2d(N, C, H, W, momentum, affine):
    rng = np.random.default_rng(N * 100 + C * 10 + H)
    x = rng.normal(2.0, 3.0, size=(N, C, H, W))
    w = rng.normal(size=x.shape)
    bn, sync = _pair(C, momentum, affine)
    results = []
    for layer in (bn, sync):
        for _ in range(2):  # twice: the running statistics and the counter move on
            xt = mr.Tensor(x, requires_grad=True)
            (layer(xt) * mr.Tensor(w)).sum().backward()
        results.append((layer(mr.Tensor(x)).data, xt.grad, layer.state_dict()))
    (y0, g0, s0), (y1, g1, s1) = results
    np.testing.assert_allclose(y1, y0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-12)
    for k in s0:
        np.testing.assert_allclose(s1[k], s0[k], rtol=0, atol=1e-12, err_msg=k)
    if affine:
        np.testing.assert_allclose(sync.weight.grad, bn.weight.grad, rtol=0, atol=1e-10)
        np.testing.assert_allclose(sync.bias.grad, bn.bias.grad, rtol=0, atol=1e-10)
    for layer in (bn, sync):  # evaluation: the running statistics, the same code
        layer.eval()
    np.testing.assert_array_equal(sync(mr.Tensor(x)).data, bn(mr.Tensor(x)).data)


@pytest.mark.parametrize("shape", [(2, 3, 3, 2), (1, 2, 1, 3), (3, 1, 2, 2)])
def test_gradcheck(shape):
    rng = np.random.default_rng(sum(shape))
    _, sync = _pair(shape[1], seed=1)
    x = mr.Tensor(rng.normal(1.0, 2.0, size=shape), requires_grad=True)
    w = mr.Tensor(rng.normal(size=shape))
    assert mr.gradcheck(lambda x, g, b: sync(x) * w, [x, sync.weight, sync.bias])


def test_float32_stays_float32_and_matches():
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(4, 3, 5, 5)) * 3 + 10).astype(np.float32)
    bn, sync = BatchNorm2d(3), SyncBatchNorm(3)
    y0, y1 = bn(mr.Tensor(x)), sync(mr.Tensor(x))
    assert y1.dtype == np.float32 and sync.running_var.dtype == np.float32
    np.testing.assert_allclose(y1.data, y0.data, atol=1e-5)


def test_one_value_per_channel_is_refused():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        SyncBatchNorm(2)(mr.Tensor(np.ones((1, 2, 1, 1), np.float32)))


def test_convert_keeps_parameters_buffers_and_keys():
    model = mr.models.resnet20()
    before = {k: v for k, v in model.state_dict().items()}
    params = list(model.parameters())
    out = convert_sync_batchnorm(model)
    assert out is model
    kinds = {type(m).__name__ for m in model.modules()}
    assert "SyncBatchNorm" in kinds and not any(type(m) is BatchNorm2d for m in model.modules())
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(after[k] is before[k] for k in before)  # the same arrays, not copies
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert isinstance(SyncBatchNorm.convert_sync_batchnorm(BatchNorm2d(3)), SyncBatchNorm)


def test_model_with_sync_bn_trains_like_the_original():
    x = np.random.default_rng(4).normal(size=(6, 3, 8, 8))
    labels = np.arange(6) % 10
    losses = []
    for sync in (False, True):
        mr.manual_seed(0)
        model = mr.models.cifar_resnet(8).to(np.float64)
        if sync:
            convert_sync_batchnorm(model)
        loss = F.cross_entropy(model(mr.Tensor(x)), labels)
        loss.backward()
        losses.append((float(loss.item()), [p.grad.copy() for p in model.parameters()]))
    assert abs(losses[0][0] - losses[1][0]) < 1e-12
    for a, b in zip(losses[0][1], losses[1][1]):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)


def test_buckets_in_one_process_leave_gradients_as_they_are():
    mr.manual_seed(0)
    model = mr.models.cifar_resnet(8)
    F.cross_entropy(
        model(mr.Tensor(np.ones((2, 3, 8, 8), np.float32))), np.array([1, 2])
    ).backward()
    grads = [p.grad.copy() for p in model.parameters()]
    buckets = GradientBuckets(model.parameters(), SingleProcess(), bucket_bytes=40_000)
    assert len(buckets.buckets) > 1
    assert buckets.nbytes == sum(p.data.nbytes for p in model.parameters())
    buckets.all_reduce_gradients()
    for p, g in zip(model.parameters(), grads):
        assert p.grad.dtype == np.float32
        np.testing.assert_array_equal(p.grad, g)
    broadcast_arrays([p.data for p in model.parameters()], SingleProcess())  # a no-op
