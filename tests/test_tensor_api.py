"""Tensor speaks PyTorch: each method against torch, values and gradients."""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr

torch = pytest.importorskip("torch")

X = np.random.default_rng(3).standard_normal((2, 3, 4))


def pair():
    """The same values as a minires and a torch tensor, both requiring grad."""
    return mr.tensor(X.copy(), requires_grad=True), torch.tensor(X.copy(), requires_grad=True)


def check(fn, gradient_seed=0):
    """fn(tensor) on both: same values, and the same gradient for a random upstream."""
    ours, theirs = pair()
    y, t = fn(ours), fn(theirs)
    np.testing.assert_allclose(y.data, t.detach().numpy(), rtol=1e-12, atol=1e-12)
    assert y.shape == tuple(t.shape)
    if not t.requires_grad:
        return
    up = np.random.default_rng(gradient_seed).standard_normal(t.shape)
    y.backward(gradient=up)
    t.backward(gradient=torch.tensor(up))
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dim", [None, 0, 1, -1, (0, 2)])
@pytest.mark.parametrize("keepdim", [False, True])
def test_sum_and_mean(dim, keepdim):
    if dim is None and keepdim:
        check(lambda t: t.sum())
        return
    kwargs = {} if dim is None else {"dim": dim, "keepdim": keepdim}
    check(lambda t: t.sum(**kwargs))
    check(lambda t: t.mean(**kwargs))


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("which", ["max", "min"])
def test_max_min_along_a_dim_give_values_and_indices(dim, keepdim, which):
    check(lambda t: getattr(t, which)(dim=dim, keepdim=keepdim).values)
    ours, theirs = pair()
    np.testing.assert_array_equal(
        getattr(ours, which)(dim, keepdim).indices.data,
        getattr(theirs, which)(dim, keepdim).indices.numpy(),
    )


def test_max_of_everything_shares_the_gradient_among_ties():
    ours = mr.tensor(np.array([1.0, 3.0, 3.0, 2.0]), requires_grad=True)
    theirs = torch.tensor([1.0, 3.0, 3.0, 2.0], dtype=torch.float64, requires_grad=True)
    ours.max().backward()
    theirs.max().backward()
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy())  # [0, 0.5, 0.5, 0]
    check(lambda t: t.min())


@pytest.mark.parametrize("dim", [None, 0, 2, -1])
@pytest.mark.parametrize("keepdim", [False, True])
def test_argmax(dim, keepdim):
    ours, theirs = pair()
    got = ours.argmax(dim=dim, keepdim=keepdim)
    want = theirs.argmax(dim=dim, keepdim=keepdim).numpy()
    assert got.dtype == np.int64 and not got.requires_grad
    np.testing.assert_array_equal(got.data, want)


def test_shape_methods():
    check(lambda t: t.permute(2, 0, 1))
    check(lambda t: t.permute((1, 2, 0)))
    check(lambda t: t.transpose(0, 2))
    check(lambda t: t.transpose(-1, 1))
    check(lambda t: t.view(6, 4))
    check(lambda t: t.view(-1))
    check(lambda t: t.reshape(4, -1))
    check(lambda t: t.reshape((3, 8)))
    check(lambda t: t.flatten())
    check(lambda t: t.flatten(1))
    check(lambda t: t.flatten(0, 1))
    check(lambda t: t.unsqueeze(0))
    check(lambda t: t.unsqueeze(-1))
    check(lambda t: t.unsqueeze(1).squeeze(1))
    check(lambda t: t.reshape(2, 1, 3, 1, 4).squeeze())
    check(lambda t: t.reshape(2, 1, 3, 1, 4).squeeze(3))
    check(lambda t: t.T if t.ndim == 2 else t.reshape(6, 4).T)


def test_size_numel_dim():
    ours, theirs = pair()
    assert ours.size() == tuple(theirs.size())
    assert ours.size(1) == theirs.size(1) and ours.size(-1) == theirs.size(-1)
    assert ours.numel() == theirs.numel() == 24
    assert ours.dim() == theirs.dim() == 3


def test_view_refuses_what_needs_a_copy_as_torch_does():
    ours, theirs = pair()
    with pytest.raises(RuntimeError):
        theirs.transpose(0, 2).view(-1)
    with pytest.raises(RuntimeError, match=r"view: cannot view a tensor of shape \(4, 3, 2\)"):
        ours.transpose(0, 2).view(-1)
    check(lambda t: t.transpose(0, 2).reshape(-1))  # reshape copies instead


def test_backward_takes_torch_keywords():
    ours, theirs = pair()
    y = (ours * 2.0).sum(dim=0)
    y.backward(gradient=np.ones(y.shape), retain_graph=True)
    y.backward(gradient=np.ones(y.shape))
    np.testing.assert_allclose(ours.grad, np.full(X.shape, 4.0))
    fresh, _ = pair()
    (fresh * fresh).sum().backward(create_graph=True)  # grad 2x, itself differentiable
    assert isinstance(fresh.grad, mr.Tensor) and fresh.grad.requires_grad


def test_bad_dims_name_the_op():
    ours, _ = pair()
    with pytest.raises(ValueError, match=r"sum: dim 3 is out of range for a 3-d tensor"):
        ours.sum(dim=3)
    with pytest.raises(ValueError, match=r"permute: \(0, 0, 1\) is not an ordering"):
        ours.permute(0, 0, 1)
    with pytest.raises(ValueError, match=r"flatten: start_dim 2 comes after end_dim 1"):
        ours.flatten(2, 1)


def test_max_along_a_dim_sends_the_gradient_to_the_index_it_returns():
    values = [[3.0, 3.0, 1.0], [0.0, 2.0, 2.0]]  # ties: the first one is returned
    ours = mr.tensor(np.array(values), requires_grad=True)
    theirs = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    ours.max(dim=1).values.sum().backward()
    theirs.max(dim=1).values.sum().backward()
    np.testing.assert_array_equal(ours.grad, theirs.grad.numpy())
