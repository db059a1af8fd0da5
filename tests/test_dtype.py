"""Dtype discipline: a float32 net stays float32 end to end, float64 stays float64.

Under NumPy 2, one np.float64 scalar or a float64 temporary turns a float32
array into float64 without a word, and the framework then runs 1.5x slower
in twice the memory. These tests walk every intermediate of a real graph and
every gradient, so a single promoting step anywhere is caught.
"""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
import minires.functional as F
from minires import Tensor, nn


def intermediates(root: Tensor) -> list[Tensor]:
    """Every non-leaf Tensor of the graph below root (root included)."""
    seen: dict[int, Tensor] = {}
    stack = [root]
    while stack:
        t = stack.pop()
        if t.creator is None or id(t) in seen:
            continue
        seen[id(t)] = t
        stack.extend(t.creator.inputs)
    return list(seen.values())


class Net(nn.Module):
    """conv-BN-ReLU, a residual add, pools, scalar arithmetic, linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)) + h)  # residual add
        h = self.pool(h)
        h = F.avg_pool2d(h, 3, stride=1, padding=1)
        h = h * 0.5 + h / 3 - 1.0  # Python scalars on both sides
        h = 2.0 * h + np.float64(0.25) * h  # a NumPy float64 scalar too
        h = (h**2 + 1.0) ** 0.5 + h ** np.float64(2.0)
        h = F.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        return self.fc(h)


def run(dtype, labels_dtype=np.int64, seed=0):
    mr.manual_seed(seed)
    net = Net().to(dtype)
    r = np.random.default_rng(seed)
    x = mr.Tensor(r.standard_normal((4, 1, 6, 6)).astype(dtype), requires_grad=True)
    labels = r.integers(0, 5, 4).astype(labels_dtype)
    logits = net(x)
    loss = F.cross_entropy(logits, labels) + logits.mean() * 0.1
    nodes = intermediates(loss)
    for t in nodes:
        t.retain_grad()
    loss.backward()
    return net, x, loss, nodes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("labels_dtype", [np.int64, np.int32])
def test_every_intermediate_and_gradient_keeps_the_dtype(dtype, labels_dtype):
    net, x, loss, nodes = run(dtype, labels_dtype)
    assert len(nodes) >= 25  # the walk really saw the graph
    bad = [type(t.creator).__name__ for t in nodes if t.dtype != dtype]
    assert not bad, f"outputs promoted away from {np.dtype(dtype)} by: {bad}"
    bad = [type(t.creator).__name__ for t in nodes if t.grad is None or t.grad.dtype != dtype]
    assert not bad, f"gradients not {np.dtype(dtype)} at outputs of: {bad}"
    assert loss.dtype == dtype and loss.shape == ()
    assert x.grad.dtype == dtype
    for name, p in net.named_parameters():
        assert p.dtype == dtype, name
        assert p.grad is not None and p.grad.dtype == dtype, name
        assert p.grad.shape == p.shape, name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_buffers_keep_their_dtype_through_training(dtype):
    net, *_ = run(dtype)
    assert net.bn1.num_batches_tracked.dtype == np.int64
    assert int(net.bn1.num_batches_tracked) == 1
    for name, b in net.named_buffers():
        if "num_batches_tracked" not in name:
            assert b.dtype == dtype, name
    net.eval()
    with mr.no_grad():
        y = net(mr.Tensor(np.ones((2, 1, 6, 6), dtype)))
    assert y.dtype == dtype


def test_float32_and_float64_nets_agree():
    # Same seed, same math: the float32 run is the float64 run, rounded.
    net32, x32, loss32, _ = run(np.float32)
    net64, x64, loss64, _ = run(np.float64)
    assert loss32.item() == pytest.approx(loss64.item(), rel=1e-4)
    np.testing.assert_allclose(x32.grad, x64.grad, rtol=1e-3, atol=1e-5)
    for (name, p32), (_, p64) in zip(net32.named_parameters(), net64.named_parameters()):
        np.testing.assert_allclose(p32.grad, p64.grad, rtol=2e-3, atol=1e-5, err_msg=name)


@pytest.mark.parametrize(
    "op",
    [
        lambda x: x * 0.5,
        lambda x: 0.5 * x,
        lambda x: x / 3,
        lambda x: 3 / x,
        lambda x: x + 1,
        lambda x: 1 - x,
        lambda x: x - np.float64(1.5),
        lambda x: np.float64(2.0) * x,
        lambda x: x**2,
        lambda x: x**0.5,
        lambda x: x ** np.float64(3),
        lambda x: x.mean(),
        lambda x: x.sum(dim=0),
        lambda x: x.exp().log(),
        lambda x: -x,
        lambda x: x @ x.T,
        lambda x: x[np.array([0, 0])],
        lambda x: F.cross_entropy(x, np.array([1, 0, 2])),
        lambda x: F.cross_entropy(x, np.array([1, 0, 2]), reduction="sum"),
        lambda x: F.batch_norm(x, None, None, training=True),
    ],
)
def test_single_ops_keep_float32(op):
    x = mr.Tensor(np.arange(1.0, 10.0, dtype=np.float32).reshape(3, 3), requires_grad=True)
    y = op(x)
    assert y.dtype == np.float32
    y.backward(np.ones(y.shape, np.float32))
    assert x.grad.dtype == np.float32


def test_a_float64_upstream_does_not_promote_the_graph():
    x = mr.Tensor(np.ones(3, np.float32), requires_grad=True)
    y = x * 2.0
    y.backward(np.ones(3, np.float64))  # cast to the output's dtype
    assert x.grad.dtype == np.float32


def test_tensor_creation_dtypes():
    assert mr.Tensor([1.0]).dtype == np.float32  # PyTorch's default
    assert mr.Tensor(1.5).dtype == np.float32
    assert mr.tensor([1.0, 2.0]).dtype == np.float32
    assert mr.tensor([1, 2]).dtype == np.int64
    assert mr.Tensor(np.array([1.0])).dtype == np.float64  # an array keeps its dtype
    assert mr.Tensor(np.array([1.0], np.float16)).dtype == np.float16
    assert mr.tensor([1.0], dtype=np.float64).dtype == np.float64
    assert mr.Tensor(np.float64(2.0)).dtype == np.float64


def test_layers_are_created_in_float32_and_converted_with_to():
    layers = [nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Linear(4, 2)]
    for layer in layers:
        for name, p in layer.named_parameters():
            assert p.dtype == np.float32, name
        layer.to(np.float64)
        for name, p in layer.named_parameters():
            assert p.dtype == np.float64, name


def test_tensor_to_dtype_is_differentiable():
    x = mr.Tensor(np.ones(3, np.float32), requires_grad=True)
    y = x.to(np.float64)
    assert y.dtype == np.float64
    (y * 3.0).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, [3.0, 3.0, 3.0])
    assert x.to(np.float32) is x
