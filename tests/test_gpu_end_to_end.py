"""The whole framework on a GPU: Tensor ops, gradchecks and a resnet training step.

The backend functions are compared one by one in test_cuda_backend_gpu.py;
here the same public API runs on CuPy arrays and must agree with the NumPy
path. Skipped, with the reason, where no GPU is usable. One test runs
everywhere: asking for "cuda" without a usable GPU is a clear error.
"""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
import minires.functional as F
from minires.backends import cuda_backend

gpu_only = pytest.mark.skipif(
    not cuda_backend.gpu_available(), reason=cuda_backend.gpu_unavailable_reason()
)


def test_cuda_request_without_gpu_is_a_clear_error() -> None:
    if cuda_backend.gpu_available():
        pytest.skip("a GPU is usable here")
    with pytest.raises(RuntimeError, match="(?i)cupy|gpu|cuda|nvrtc"):
        mr.tensor(np.ones(3)).to("cuda")
    with pytest.raises(RuntimeError, match="(?i)cupy|gpu|cuda|nvrtc"):
        mr.nn.Linear(2, 2).to("cuda")


def _cuda_leaf(t: mr.Tensor) -> mr.Tensor:
    leaf = t.to("cuda").detach()
    leaf.requires_grad = True
    return leaf


OPS = {
    "conv_s1": lambda x, w: F.conv2d(x, w, padding=1),
    "conv_s2": lambda x, w: F.conv2d(x, w, stride=2, padding=1),
    "bn_relu_add": lambda x, w: (
        F.relu(F.batch_norm(F.conv2d(x, w, padding=1), None, None, training=True)) + x
    ),
    "pools": lambda x, w: F.max_pool2d(x, 3, 2, 1) + F.avg_pool2d(x, 3, 2, 1),
    "head": lambda x, w: F.cross_entropy(
        F.linear(F.flatten(F.adaptive_avg_pool2d(x, 1), 1), w.reshape(4, -1)[:, :4]),
        np.array([0, 3, 1]),
    ),
    "conv_dilated_groups": lambda x, w: F.conv2d(x, w[:, :2], padding="same", dilation=2, groups=2),
    "conv_depthwise": lambda x, w: F.conv2d(x, w[:, :1], stride=2, padding=1, groups=4),
    "pools_ceil": lambda x, w: (
        w.sum()
        * (
            F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
            + F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
        )
    ),
    "head_weighted": lambda x, w: F.cross_entropy(
        F.linear(F.flatten(F.adaptive_avg_pool2d(x, 1), 1), w.reshape(4, -1)[:, :4]),
        np.array([0, 3, -100]),
        np.linspace(0.5, 2.0, 4).astype(x.dtype),
        reduction="none",
        label_smoothing=0.1,
    ),
}


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algorithm", ["auto", "shifted"])
@pytest.mark.gpu
@gpu_only
def test_forward_and_backward_match_numpy(name, dtype, algorithm) -> None:
    import cupy

    op = OPS[name]
    rng = np.random.default_rng(0)
    x = mr.tensor(rng.standard_normal((3, 4, 9, 7)).astype(dtype), requires_grad=True)
    w = mr.tensor(0.3 * rng.standard_normal((4, 4, 3, 3)).astype(dtype), requires_grad=True)
    xg, wg = _cuda_leaf(x), _cuda_leaf(w)
    previous = F.set_conv_algorithm(algorithm)
    try:
        y = op(x, w)
        yg = op(xg, wg)
        upstream = rng.standard_normal(y.shape).astype(dtype)
        y.backward(upstream)
        yg.backward(cupy.asarray(upstream))
    finally:
        F.set_conv_algorithm(previous)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    assert yg.device == "cuda" and xg.grad.dtype == dtype
    np.testing.assert_allclose(yg.numpy(), y.numpy(), **tol)
    # Every op uses x; all but 'pools' use w (a leaf an op does not use gets no gradient).
    assert x.grad is not None and (w.grad is None) == (name == "pools")
    for label, cpu, cuda in (("x", x, xg), ("w", w, wg)):
        assert (cuda.grad is None) == (cpu.grad is None), label
        if cpu.grad is not None:
            np.testing.assert_allclose(cupy.asnumpy(cuda.grad), cpu.grad, **tol, err_msg=label)


@pytest.mark.gpu
@gpu_only
def test_gradcheck_in_float64_on_the_gpu() -> None:
    rng = np.random.default_rng(1)
    x = _cuda_leaf(mr.tensor(rng.standard_normal((2, 3, 6, 5))))
    w = _cuda_leaf(mr.tensor(rng.standard_normal((4, 3, 3, 3))))
    g = _cuda_leaf(mr.tensor(rng.uniform(0.5, 1.5, 4)))
    b = _cuda_leaf(mr.tensor(rng.standard_normal(4)))

    def block(x, w, g, b):
        h = F.batch_norm(F.conv2d(x, w, stride=2, padding=1), None, None, g, b, training=True)
        return F.avg_pool2d(h, 2, 1)

    assert mr.gradcheck(block, [x, w, g, b])
    logits = _cuda_leaf(mr.tensor(rng.standard_normal((5, 7))))
    assert mr.gradcheck(lambda z: F.cross_entropy(z, np.array([0, 6, 3, 2, 2])), [logits])


@pytest.mark.gpu
@gpu_only
def test_resnet20_training_step_matches_the_cpu() -> None:
    """Three SGD steps with momentum, Nesterov and weight decay, in float64 so
    that the comparison can be tight: the loss, every gradient (compared
    directly, before each step) and every parameter and buffer after it."""
    import cupy

    rng = np.random.default_rng(0)
    models, opts = [], []
    for device in ("cpu", "cuda"):
        mr.manual_seed(0)
        model = mr.models.resnet20().to(np.float64).to(device)
        models.append(model)
        opts.append(
            mr.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
        )
    for step in range(3):
        images = rng.standard_normal((8, 3, 32, 32))
        labels = rng.integers(0, 10, 8)
        losses = []
        for model, opt, device in zip(models, opts, ("cpu", "cuda")):
            x = mr.tensor(images).to(device)
            y = labels if device == "cpu" else cupy.asarray(labels)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-10), f"step {step}"
        for (name, p_cpu), p_gpu in zip(models[0].named_parameters(), models[1].parameters()):
            scale = max(1.0, float(np.abs(p_cpu.grad).max()))
            np.testing.assert_allclose(
                cupy.asnumpy(p_gpu.grad), p_cpu.grad, rtol=1e-8, atol=1e-10 * scale,
                err_msg=f"step {step}: gradient of {name}",
            )  # fmt: skip
        for opt in opts:
            opt.step()
        for key, value in models[0].state_dict().items():
            np.testing.assert_allclose(
                cupy.asnumpy(models[1].state_dict()[key]), value, rtol=1e-8, atol=1e-10,
                err_msg=f"step {step}: {key}",
            )  # fmt: skip


@pytest.mark.gpu
@gpu_only
def test_module_round_trip_between_devices() -> None:
    mr.manual_seed(3)
    model = mr.models.cifar_resnet(8)
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    model.to("cuda")
    assert all(not isinstance(v, np.ndarray) for v in model.state_dict().values())
    model.to("cpu")
    for key, value in model.state_dict().items():
        assert isinstance(value, np.ndarray)
        np.testing.assert_array_equal(value, before[key], err_msg=key)
