"""Higher-order gradients: backward(create_graph=True) and mr.autograd.grad.

A Hessian-vector product H v = d/dw <grad_w L, v> is checked two ways: against
central differences of the gradient, (g(w + eps v) - g(w - eps v)) / 2 eps,
and against PyTorch's double backward on the same net and numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
import minires.functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional


def hvp(loss_fn, params, vs):
    """minires's H v for loss_fn(*params), through create_graph."""
    grads = mr.autograd.grad(loss_fn(*params), params, create_graph=True)
    dot = sum((g * mr.tensor(v)).sum() for g, v in zip(grads, vs))
    return [h.data for h in mr.autograd.grad(dot, params)]


def hvp_by_differences(loss_fn, params, vs, eps=1e-5):
    """The same product from central differences of first-order gradients."""

    def grads_at(sign):
        shifted = [
            mr.tensor(p.data + sign * eps * v, requires_grad=True) for p, v in zip(params, vs)
        ]
        return [g.data for g in mr.autograd.grad(loss_fn(*shifted), shifted)]

    plus, minus = grads_at(1.0), grads_at(-1.0)
    return [(a - b) / (2 * eps) for a, b in zip(plus, minus)]


def hvp_torch(loss_fn, arrays, vs):
    params = [torch.tensor(a, requires_grad=True) for a in arrays]
    grads = torch.autograd.grad(loss_fn(*params), params, create_graph=True)
    dot = sum((g * torch.tensor(v)).sum() for g, v in zip(grads, vs))
    return [h.numpy() for h in torch.autograd.grad(dot, params)]


def both(rng, shapes):
    arrays = [rng.standard_normal(s) * 0.5 for s in shapes]
    return (
        [mr.tensor(a.copy(), requires_grad=True) for a in arrays],
        arrays,
        [rng.standard_normal(s) for s in shapes],
    )


def compare(ours_fn, torch_fn, rng, shapes, rtol=1e-6):
    params, arrays, vs = both(rng, shapes)
    ours = hvp(ours_fn, params, vs)
    numeric = hvp_by_differences(ours_fn, params, vs)
    theirs = hvp_torch(torch_fn, arrays, vs)
    for a, n, t in zip(ours, numeric, theirs):
        np.testing.assert_allclose(a, t, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(a, n, rtol=rtol, atol=1e-6)


def test_arithmetic_and_matmul(rng):
    x = rng.standard_normal((5, 4))

    def ours(w, b):
        h = (mr.tensor(x) @ w).exp() * 0.5 + (mr.tensor(x) @ w) ** 2 / (2.0 + b)
        return (h.log() - h.mean(dim=0) + h.max(dim=1).values.sum()).sum()

    def theirs(w, b):
        h = (torch.tensor(x) @ w).exp() * 0.5 + (torch.tensor(x) @ w) ** 2 / (2.0 + b)
        return (h.log() - h.mean(dim=0) + h.max(dim=1).values.sum()).sum()

    compare(ours, theirs, rng, [(4, 3), (3,)])


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 1), (1, 0)])
def test_conv_bn_relu_residual_block_and_loss(rng, stride, padding):
    x = rng.standard_normal((4, 3, 6, 6))
    labels = rng.integers(0, 5, 4)

    def ours(w1, gamma, beta, fc):
        h = F.conv2d(mr.tensor(x), w1, stride=stride, padding=padding)
        h = F.relu(F.batch_norm(h, None, None, gamma, beta, training=True))
        if stride == 1 and padding == 1:
            h = h + mr.tensor(x)  # the residual add
        h = F.max_pool2d(h, 2) if padding == 1 else h
        logits = F.linear(F.flatten(F.adaptive_avg_pool2d(h, 1), 1), fc)
        return F.cross_entropy(logits, labels)

    def theirs(w1, gamma, beta, fc):
        h = TF.conv2d(torch.tensor(x), w1, stride=stride, padding=padding)
        h = TF.relu(TF.batch_norm(h, None, None, gamma, beta, training=True))
        if stride == 1 and padding == 1:
            h = h + torch.tensor(x)
        h = TF.max_pool2d(h, 2) if padding == 1 else h
        logits = TF.linear(torch.flatten(TF.adaptive_avg_pool2d(h, 1), 1), fc)
        return TF.cross_entropy(logits, torch.tensor(labels))

    compare(ours, theirs, rng, [(3, 3, 3, 3), (3,), (3,), (5, 3)], rtol=1e-5)


@pytest.mark.parametrize(
    "groups, dilation, padding, kernel",
    [(2, 1, 1, 3), (1, 2, 2, 3), (3, 2, "same", 2), (6, 1, "valid", 3)],
)
def test_grouped_dilated_conv_and_weighted_smoothed_loss(rng, groups, dilation, padding, kernel):
    """Second derivatives through the input and the weight of a grouped,
    dilated or 'same'-padded convolution (an even kernel pads one side more)
    and through cross_entropy with class weights, ignore_index and smoothing."""
    labels = np.array([0, 4, 1, 2])
    weight = rng.uniform(0.5, 2.0, 5)

    def ours(x, w, fc):
        h = F.conv2d(x, w, stride=1, padding=padding, dilation=dilation, groups=groups)
        logits = F.linear(F.flatten(F.adaptive_avg_pool2d(F.relu(h) * h, 1), 1), fc)
        return F.cross_entropy(
            logits, labels, weight=mr.tensor(weight), ignore_index=2, label_smoothing=0.1
        )

    def theirs(x, w, fc):
        h = TF.conv2d(x, w, stride=1, padding=padding, dilation=dilation, groups=groups)
        logits = TF.linear(torch.flatten(TF.adaptive_avg_pool2d(TF.relu(h) * h, 1), 1), fc)
        return TF.cross_entropy(
            logits,
            torch.tensor(labels),
            weight=torch.tensor(weight),
            ignore_index=2,
            label_smoothing=0.1,
        )

    shapes = [(4, 6, 7, 7), (6, 6 // groups, kernel, kernel), (5, 6)]
    compare(ours, theirs, rng, shapes, rtol=1e-5)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_cross_entropy_reductions(rng, reduction):
    x, labels, scale = rng.standard_normal((6, 4)), np.array([0, 2, 1, 2, 3, 1]), np.arange(6.0)

    def ours(w):
        loss = F.cross_entropy(mr.tensor(x) @ w, labels, ignore_index=1, reduction=reduction)
        return (loss * mr.tensor(scale)).sum() if reduction == "none" else loss

    def theirs(w):
        loss = TF.cross_entropy(
            torch.tensor(x) @ w, torch.tensor(labels), ignore_index=1, reduction=reduction
        )
        return (loss * torch.tensor(scale)).sum() if reduction == "none" else loss

    compare(ours, theirs, rng, [(4, 5)])


def test_batch_norm_in_eval_mode_and_a_conv_bias(rng):
    x = rng.standard_normal((3, 2, 5, 5))
    mean, var = rng.standard_normal(2), rng.uniform(0.5, 2.0, 2)

    def ours(w, b, gamma):
        h = F.conv2d(mr.tensor(x), w, b, padding=1)
        h = F.batch_norm(h, mean.copy(), var.copy(), gamma, None, training=False)
        return (h * h * h).sum()

    def theirs(w, b, gamma):
        h = TF.conv2d(torch.tensor(x), w, b, padding=1)
        h = TF.batch_norm(h, torch.tensor(mean), torch.tensor(var), gamma, None, training=False)
        return (h * h * h).sum()

    compare(ours, theirs, rng, [(2, 2, 3, 3), (2,), (2,)])


def test_a_small_resnet_against_finite_differences(rng):
    """H v through a whole CIFAR ResNet-8 (conv, BN, ReLU, residual adds, the
    option-A shortcut, global pooling, linear, cross-entropy)."""
    model = mr.models.cifar_resnet(8, num_classes=3).to(np.float64)
    images = mr.tensor(rng.standard_normal((2, 3, 8, 8)))
    labels = rng.integers(0, 3, 2)
    params = list(model.parameters())
    vs = [rng.standard_normal(p.shape) for p in params]
    start = [p.data.copy() for p in params]

    def gradients_at(step: float) -> list[np.ndarray]:
        for p, w, v in zip(params, start, vs):
            p.data = w + step * v
        grads = mr.autograd.grad(F.cross_entropy(model(images), labels), params)
        return [g.data for g in grads]

    # A small step: ReLU's kinks make the gradient piecewise smooth, and a
    # step of 1e-5 already moves some activations across one here.
    eps = 1e-7
    plus, minus = gradients_at(eps), gradients_at(-eps)
    gradients_at(0.0)
    grads = mr.autograd.grad(F.cross_entropy(model(images), labels), params, create_graph=True)
    dot = sum((g * mr.tensor(v)).sum() for g, v in zip(grads, vs))
    ours = mr.autograd.grad(dot, params)
    for h, a, b in zip(ours, plus, minus):
        np.testing.assert_allclose(h.data, (a - b) / (2 * eps), rtol=1e-4, atol=1e-5)


def test_backward_with_create_graph_leaves_differentiable_grads(rng):
    w = mr.tensor(rng.standard_normal(3), requires_grad=True)
    (w * w * w).sum().backward(create_graph=True)  # grad = 3 w^2, a Tensor with a graph
    assert isinstance(w.grad, mr.Tensor) and w.grad.requires_grad
    (second,) = mr.autograd.grad(w.grad.sum(), w)
    np.testing.assert_allclose(second.data, 6 * w.data)


def test_grad_leaves_dot_grad_alone_and_reports_unused_inputs(rng):
    a = mr.tensor(rng.standard_normal(3), requires_grad=True)
    b = mr.tensor(rng.standard_normal(3), requires_grad=True)
    (ga,) = mr.autograd.grad((a * 2.0).sum(), a)
    np.testing.assert_allclose(ga.data, np.full(3, 2.0))
    assert a.grad is None and b.grad is None
    with pytest.raises(RuntimeError, match=r"grad\(\): input 1 .* was not used"):
        mr.autograd.grad((a * 2.0).sum(), [a, b])
    assert mr.autograd.grad((a * 2.0).sum(), [a, b], allow_unused=True)[1] is None


def test_an_op_without_a_differentiable_backward_says_so(rng):
    x = mr.tensor(rng.standard_normal((1, 1, 4, 4)), requires_grad=True)
    y = F.avg_pool2d(x, 2).sum()
    with pytest.raises(NotImplementedError, match=r"AvgPool2dFunction has no differentiable"):
        mr.autograd.grad(y, x, create_graph=True)
