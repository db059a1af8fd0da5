"""The checker is tested too: deliberately broken backwards must fail it.

A gradient check that passes everything proves nothing. Each bug below is a
mistake that real frameworks shipped or that students make (ANCHORS.md §1,
§3, §8.5): a BatchNorm backward that returns zeros, a ReLU that forgets its
mask, a conv weight gradient with its kernel axes swapped, a gradient off by
a factor 2, a linear layer that never produces its bias gradient. Each must
make mr.gradcheck raise GradcheckError in every mode, the error must name the
worst entry, and the correct op must pass the very same check (the control).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import kink_free

import minires as mr
import minires.functional as F
from minires import Function
from minires.backends import numpy_backend


def T(a) -> mr.Tensor:
    return mr.Tensor(np.array(a, dtype=np.float64), requires_grad=True)


@pytest.fixture(autouse=True)
def reference_backend():
    """The bugs below are planted in the reference NumPy backend: run on it."""
    previous = mr.backends.set_cpu_backend("reference")
    yield
    mr.backends.set_cpu_backend(previous)


# --------------------------------------------------------------------------
# The bugs. Each has inputs, the correct function, and a way to break it
# (patching the NumPy backend for this test only, or a broken Function).
# --------------------------------------------------------------------------


class BrokenConv(F.Conv2dFunction):
    """Weight gradient with the kernel's row and column axes swapped."""

    def backward(self, gy):
        gx, gw, gb = super().backward(gy)
        return gx, gw.transpose(0, 1, 3, 2), gb


class BrokenLinear(F.LinearFunction):
    """Forgets the bias: returns None for it, as if it needed no gradient."""

    def backward(self, gy):
        gx, gw, _ = super().backward(gy)
        return gx, gw, None


class Square(Function):
    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, gy):
        return 2 * gy * self.x


class BrokenSquare(Square):
    """d(x^2)/dx written as x instead of 2x: off by a factor 2."""

    def backward(self, gy):
        return gy * self.x


@dataclass
class Bug:
    name: str
    inputs: Callable[[np.random.Generator], tuple[mr.Tensor, ...]]
    correct: Callable[..., mr.Tensor]
    # Called with pytest's monkeypatch; returns the broken function.
    install: Callable[[pytest.MonkeyPatch], Callable[..., mr.Tensor]]


def _bn_inputs(rng):
    x = T(5 * rng.standard_normal((3, 2, 2, 3)) + 12)
    return x, T(rng.uniform(0.5, 2.0, 2) * [1, -1]), T(rng.standard_normal(2))


def _bn(x, gamma, beta):
    return F.batch_norm(x, None, None, gamma, beta, training=True)


def _zero_bn_backward(monkeypatch):
    real = numpy_backend.batch_norm_backward

    def zeroed(gy, xhat, gamma, inv_std):
        gx, ggamma, gbeta = real(gy, xhat, gamma, inv_std)
        return np.zeros_like(gx), np.zeros_like(ggamma), gbeta

    monkeypatch.setattr(numpy_backend, "batch_norm_backward", zeroed)
    return _bn


def _unmask_relu(monkeypatch):
    monkeypatch.setattr(numpy_backend, "relu_backward", lambda gy, y: gy)
    return F.relu


def _conv(x, w, b):
    return F.conv2d(x, w, b, stride=1, padding=1)


def _broken_conv(x, w, b):
    return BrokenConv((1, 1), (1, 1))(x, w, b)


def _linear(x, w, b):
    return F.linear(x, w, b)


BUGS = [
    Bug("batchnorm backward zeroed", _bn_inputs, _bn, _zero_bn_backward),
    Bug(
        "relu backward unmasked",
        lambda rng: (T(kink_free(rng, (2, 3, 2))),),
        F.relu,
        _unmask_relu,
    ),
    Bug(
        "conv weight gradient transposed",
        lambda rng: (
            T(rng.standard_normal((2, 2, 4, 4))),
            T(rng.standard_normal((2, 2, 3, 3))),
            T(rng.standard_normal(2)),
        ),
        _conv,
        lambda mp: _broken_conv,
    ),
    Bug(
        "gradient off by a factor 2",
        lambda rng: (T(rng.standard_normal((2, 3))),),
        lambda x: Square()(x),
        lambda mp: lambda x: BrokenSquare()(x),
    ),
    Bug(
        "linear backward misses the bias gradient",
        lambda rng: (
            T(rng.standard_normal((3, 4))),
            T(rng.standard_normal((2, 4))),
            T(rng.standard_normal(2)),
        ),
        _linear,
        lambda mp: lambda x, w, b: BrokenLinear()(x, w, b),
    ),
]
bug_params = pytest.mark.parametrize("bug", BUGS, ids=[b.name for b in BUGS])
MODES = ["elementwise", "directional", "jacobian"]


# --------------------------------------------------------------------------
# Control, then the bugs
# --------------------------------------------------------------------------


@bug_params
@pytest.mark.parametrize("mode", MODES)
def test_correct_op_passes(bug, mode, rng):
    assert mr.gradcheck(bug.correct, bug.inputs(rng), mode=mode) is True


@bug_params
@pytest.mark.parametrize("mode", MODES)
def test_broken_op_fails(bug, mode, rng, monkeypatch):
    inputs = bug.inputs(rng)
    broken = bug.install(monkeypatch)
    with pytest.raises(mr.GradcheckError, match=f"gradcheck failed \\({mode}\\)"):
        mr.gradcheck(broken, inputs, mode=mode)
    assert mr.gradcheck(broken, inputs, mode=mode, raise_exception=False) is False


@bug_params
def test_broken_op_fails_for_every_seed(bug, rng, monkeypatch):
    # Not a lucky draw: other upstream gradients and directions catch it too.
    inputs = bug.inputs(rng)
    broken = bug.install(monkeypatch)
    for seed in range(1, 6):
        for mode in ("elementwise", "directional"):
            assert not mr.gradcheck(broken, inputs, mode=mode, seed=seed, raise_exception=False)


ENTRY = re.compile(
    r"^  input (\d+)\[([\d, ]*)\]: analytic ([^,]+), numeric ([^,]+), abs error ([^,]+),"
)


def _grads(fn, inputs):
    for t in inputs:
        t.grad = None
    fn(*inputs).backward()
    return [np.zeros(t.shape) if t.grad is None else t.grad.copy() for t in inputs]


@bug_params
def test_failure_names_the_worst_entry(bug, rng, monkeypatch):
    # Reduce the output to a scalar with fixed random weights R. gradcheck's
    # upstream is then one random number u, and every analytic (numeric)
    # value it reports is u times the broken (true) gradient entry, so the
    # worst entry is where the broken and the true gradient differ most.
    inputs = bug.inputs(rng)
    R = mr.Tensor(rng.standard_normal(bug.correct(*inputs).shape))

    def scalar(f):
        return lambda *xs: (f(*xs) * R).sum()

    true = _grads(scalar(bug.correct), inputs)
    broken_fn = scalar(bug.install(monkeypatch))
    broken = _grads(broken_fn, inputs)
    diffs = [np.abs(b - t) for b, t in zip(broken, true)]
    worst_input = int(np.argmax([d.max() for d in diffs]))
    worst_index = np.unravel_index(np.argmax(diffs[worst_input]), inputs[worst_input].shape)

    with pytest.raises(mr.GradcheckError) as info:
        mr.gradcheck(broken_fn, inputs, mode="elementwise")
    message = str(info.value)
    lines = message.splitlines()
    assert re.match(r"gradcheck failed \(elementwise\): \d+ of \d+ checked values differ", lines[0])
    first = ENTRY.match(lines[1])
    assert first, message
    named_input = int(first.group(1))
    named_index = tuple(int(i) for i in first.group(2).split(","))
    analytic, numeric, error = (float(first.group(k)) for k in (3, 4, 5))
    assert (named_input, named_index) == (worst_input, tuple(map(int, worst_index))), message
    assert error == pytest.approx(abs(analytic - numeric), rel=5e-3)  # printed to 3 digits
    # The reported values are u * broken and u * true at that entry.
    b, t = broken[named_input][named_index], true[named_input][named_index]
    u = analytic / b if b != 0 else numeric / t
    assert analytic == pytest.approx(u * b, rel=1e-6, abs=1e-9)
    assert numeric == pytest.approx(u * t, rel=1e-4, abs=1e-6)
    # Entries are listed worst first.
    errors = [float(m.group(5)) for m in map(ENTRY.match, lines[1:]) if m]
    assert errors == sorted(errors, reverse=True)


# --------------------------------------------------------------------------
# Why the upstream must be random: a summed BatchNorm checks nothing
# --------------------------------------------------------------------------


def test_sum_of_batchnorm_output_does_not_depend_on_x_or_gamma(rng):
    x, gamma, beta = _bn_inputs(rng)
    _bn(x, gamma, beta).sum().backward()
    # sum(gamma * xhat + beta) = gamma * sum(xhat) + M * beta, and sum(xhat) = 0.
    assert np.abs(x.grad).max() < 1e-10
    assert np.abs(gamma.grad).max() < 1e-10
    np.testing.assert_allclose(beta.grad, 3 * 2 * 3)


def test_sum_of_outputs_check_is_vacuous_but_random_upstream_catches(rng, monkeypatch):
    x, gamma, beta = _bn_inputs(rng)
    broken = _zero_bn_backward(monkeypatch)
    # The DeZero-style check, d sum(f) / dx: passes with the zeroed backward...
    assert mr.gradcheck(lambda *a: broken(*a).sum(), (x, gamma, beta), mode="elementwise")
    # ...while weighting the outputs by a random upstream exposes it.
    with pytest.raises(mr.GradcheckError, match=r"input [01]\["):
        mr.gradcheck(broken, (x, gamma, beta), mode="elementwise")
    with pytest.raises(mr.GradcheckError):
        mr.gradcheck(broken, (x, gamma, beta), mode="directional")


def test_gamma_of_one_hides_a_bug_that_random_gamma_exposes(rng, monkeypatch):
    # Knet.jl#288: a BatchNorm backward that forgets gamma in gx passed tests
    # that used gamma = 1. With a random gamma the checker sees it.
    real = numpy_backend.batch_norm_backward

    def forgets_gamma(gy, xhat, gamma, inv_std):
        return real(gy, xhat, np.ones_like(gamma), inv_std)

    monkeypatch.setattr(numpy_backend, "batch_norm_backward", forgets_gamma)
    x, gamma, beta = _bn_inputs(rng)
    ones = T(np.ones(2))
    assert mr.gradcheck(_bn, (x, ones, beta), mode="elementwise")
    with pytest.raises(mr.GradcheckError, match=r"input 0\["):
        mr.gradcheck(_bn, (x, gamma, beta), mode="elementwise")


# --------------------------------------------------------------------------
# The checker's other guards
# --------------------------------------------------------------------------


class NoisyBackward(Square):
    """A backward that is not repeatable (uses fresh randomness every call)."""

    def backward(self, gy):
        return 2 * gy * self.x + np.random.default_rng().standard_normal(self.x.shape)


class WrongDtypeBackward(Square):
    def backward(self, gy):
        return (2 * gy * self.x).astype(np.float32)


def test_non_repeatable_backward_is_reported(rng):
    x = T(rng.standard_normal(4))
    with pytest.raises(mr.GradcheckError, match="not repeatable for input 0"):
        mr.gradcheck(lambda x: NoisyBackward()(x), x)


def test_gradient_of_wrong_dtype_is_reported(rng):
    x = T(rng.standard_normal(4))
    with pytest.raises(mr.GradcheckError, match=r"gradient of input 0 .* dtype float32"):
        mr.gradcheck(lambda x: WrongDtypeBackward()(x), x)


def test_params_are_checked_too(rng, monkeypatch):
    # A bug in a parameter's gradient is caught when the parameter is passed
    # through params=, even though fn does not take it as an argument.
    x = mr.Tensor(rng.standard_normal((3, 4)))
    w, b = T(rng.standard_normal((2, 4))), T(rng.standard_normal(2))
    assert mr.gradcheck(lambda x: _linear(x, w, b), x, params=[w, b])
    with pytest.raises(mr.GradcheckError, match=r"param 1\[\d\]: analytic 0,"):
        mr.gradcheck(lambda x: BrokenLinear()(x, w, b), x, params=[w, b])
    named = [("fc.weight", w), ("fc.bias", b)]  # as model.named_parameters() gives
    with pytest.raises(mr.GradcheckError, match=r"fc\.bias\[\d\]: analytic 0,"):
        mr.gradcheck(lambda x: BrokenLinear()(x, w, b), x, params=named)


def test_a_small_error_within_tolerance_passes_and_beyond_fails(rng):
    class Slightly(Square):
        def backward(self, gy):
            return 2 * gy * self.x * (1 + self.scale)

    x = T(rng.uniform(1, 2, 5))

    def run(scale, **tol):
        Slightly.scale = scale
        return mr.gradcheck(lambda x: Slightly()(x), x, raise_exception=False, **tol)

    assert run(1e-5)  # well inside rtol=1e-3
    assert not run(1e-2)  # 10x beyond it
    assert not run(1e-5, atol=0, rtol=1e-7)


# --------------------------------------------------------------------------
# Backward must be linear in its upstream gradient; inputs must not alias.
# --------------------------------------------------------------------------


class _AddsAConstant(mr.Function):
    """y = 2x, whose backward wrongly adds 1 whatever the upstream gradient."""

    def forward(self, x):
        return 2 * x

    def backward(self, gy):
        return 2 * gy + 1


def test_backward_that_ignores_a_zero_upstream_is_caught() -> None:
    x = mr.tensor(np.random.default_rng(0).standard_normal(5), requires_grad=True)
    with pytest.raises(mr.GradcheckError, match="zero upstream"):
        mr.gradcheck(lambda x: _AddsAConstant()(x), [x])


def test_broadcast_input_is_refused() -> None:
    x = mr.tensor(np.broadcast_to(np.arange(3.0), (4, 3)), requires_grad=True)
    with pytest.raises(ValueError, match="stride-0"):
        mr.gradcheck(lambda x: x * 2.0, [x])
