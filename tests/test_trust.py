"""Trust: no silently wrong gradient, dtype or device, and no crash on an empty batch.

(a) Version counters: an in-place change made through minires (an optimiser
    step, load_state_dict) to a value that a recorded backward reads makes
    that backward raise, naming the Function; a change to a value backward
    does not read raises nothing, and the gradient is right.
(b) detect_anomaly(): catches a direct write into a saved input's or a saved
    output's ``.data``, with no false alarm on NaNs that were there at forward.
(c) Grad mode is a per-thread setting, and its switches nest.
(d) Type promotion of Python numbers and mixed tensors, against PyTorch.
(e) ToDevice inside a recorded graph: forward and backward, with a fake GPU.
(f) Batch size 0: every op, layer and model, forward and backward, on both
    CPU backends, as PyTorch.
"""

from __future__ import annotations

import itertools
import math
import operator
import threading
import warnings

import numpy as np
import pytest

import minires as mr
import minires.functional as F
from minires import nn

# --------------------------------------------------------------------------
# (a) Version counters
# --------------------------------------------------------------------------

STALE_FC_WEIGHT = r"LinearFunction\.backward: its input 1 \(shape \(4, 3\)\)"


class SmallNet(nn.Module):
    """conv -> BN -> ReLU -> global pool -> flatten -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(F.flatten(self.pool(self.relu(self.bn(self.conv(x)))), 1))


def small_net_and_loss(rng, seed: int = 0):
    mr.manual_seed(seed)
    net = SmallNet()
    x = mr.tensor(rng.standard_normal((3, 2, 5, 5)).astype(np.float32))
    loss = F.cross_entropy(net(x), np.array([0, 1, 3]))
    return net, loss


def test_step_between_two_backwards_raises_naming_the_op(rng):
    net, loss = small_net_and_loss(rng)
    loss.backward(retain_graph=True)
    mr.optim.SGD(net.parameters(), lr=0.1).step()
    # The walk meets fc first (it is nearest the loss): LinearFunction reads fc.weight.
    with pytest.raises(RuntimeError, match=STALE_FC_WEIGHT):
        loss.backward()


@pytest.mark.parametrize(
    "param, op",
    [
        ("conv.weight", "Conv2dFunction"),
        ("bn.weight", "BatchNormFunction"),
        ("fc.weight", "LinearFunction"),
    ],
)
def test_each_saved_parameter_is_checked(rng, param, op):
    """Step one parameter alone: the Function that reads it is the one that raises."""
    net, loss = small_net_and_loss(rng)
    loss.backward(retain_graph=True)
    mr.optim.SGD([dict(net.named_parameters())[param]], lr=0.1).step()
    with pytest.raises(RuntimeError, match=rf"^{op}\.backward: its input 1 .*changed in place"):
        loss.backward()


def test_load_state_dict_between_two_backwards_raises(rng):
    net, loss = small_net_and_loss(rng)
    loss.backward(retain_graph=True)
    other, _ = small_net_and_loss(rng, seed=1)
    net.load_state_dict(other.state_dict())
    with pytest.raises(RuntimeError, match=r"LinearFunction\.backward.*load_state_dict"):
        loss.backward()


def test_plain_linear_raises(rng):
    x = mr.tensor(rng.standard_normal((2, 3)), requires_grad=True)
    w = mr.Parameter(rng.standard_normal((4, 3)))
    y = F.linear(x, w).sum()
    y.backward(retain_graph=True)
    mr.optim.SGD([w], lr=0.5).step()
    with pytest.raises(RuntimeError, match=STALE_FC_WEIGHT):
        y.backward()


def _two_backwards(loss, step, leaves):
    """Gradients of the first and of the second backward of a retained graph,
    with ``step()`` (an in-place change) in between."""
    loss.backward(retain_graph=True)
    first = [t.grad.copy() for t in leaves]
    step()
    for t in leaves:
        t.grad = None
    loss.backward()
    return first, [t.grad for t in leaves]


def test_changing_a_conv_bias_does_not_raise_and_the_gradient_is_right(rng):
    """conv2d's backward reads x and w, not the bias: no false positive."""
    x = mr.tensor(rng.standard_normal((2, 2, 5, 5)), requires_grad=True)
    w = mr.Parameter(rng.standard_normal((3, 2, 3, 3)))
    b = mr.Parameter(rng.standard_normal(3))
    c = rng.standard_normal((2, 3, 5, 5))
    loss = (F.conv2d(x, w, b, padding=1) * c).sum()
    b.grad = np.ones(3)
    first, second = _two_backwards(loss, mr.optim.SGD([b], lr=1.0).step, [x, w])
    for g1, g2 in zip(first, second):
        np.testing.assert_array_equal(g1, g2)
    # And it is the gradient at the new bias too (the loss is linear in y):
    x.grad = w.grad = None
    (F.conv2d(x, w, b, padding=1) * c).sum().backward()
    np.testing.assert_allclose(x.grad, second[0], rtol=1e-12)
    np.testing.assert_allclose(w.grad, second[1], rtol=1e-12)


def test_changing_an_add_input_does_not_raise(rng):
    """Add's backward reads neither operand: stepping one is no error."""
    x = mr.tensor(rng.standard_normal((2, 3)), requires_grad=True)
    w = mr.tensor(rng.standard_normal((4, 3)))
    b = mr.Parameter(rng.standard_normal(4))
    loss = ((F.linear(x, w) + b) * np.arange(4.0)).sum()
    b.grad = np.ones(4)
    first, second = _two_backwards(loss, mr.optim.SGD([b], lr=1.0).step, [x, b])
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_allclose(second[0], np.tile(np.arange(4.0) @ w.data, (2, 1)), rtol=1e-12)
    np.testing.assert_array_equal(second[1], 2 * np.arange(4.0))


@pytest.mark.parametrize(
    "use, op",
    [
        (lambda x, w: x @ w.T, "MatMul"),  # a transpose: a view of w
        (lambda x, w: x @ w.reshape(3, 4), "MatMul"),  # a reshape: a view of w
        (lambda x, w: F.linear(x, w[1:]), "LinearFunction"),  # a slice: a view of w
        (lambda x, w: F.linear(x, w.detach()), "LinearFunction"),  # the same memory
        (lambda x, w: F.linear(x, mr.Tensor(w)), "LinearFunction"),  # the same memory
    ],
    ids=["transpose", "reshape", "slice", "detach", "Tensor(w)"],
)
def test_a_view_of_a_stepped_parameter_is_stale_too(rng, use, op):
    """``x @ w.T`` saves w.T, a view of w: stepping w changes what backward would
    read, so it must raise (the view shares w's version counter, as in PyTorch)."""
    x = mr.tensor(rng.standard_normal((2, 3)), requires_grad=True)
    w = mr.Parameter(rng.standard_normal((4, 3)))
    loss = use(x, w).sum()
    loss.backward(retain_graph=True)
    w.grad = np.ones_like(w.data)
    mr.optim.SGD([w], lr=1.0).step()
    with pytest.raises(RuntimeError, match=rf"^{op}\.backward: its input 1 .*changed in place"):
        loss.backward()


def test_a_view_made_under_no_grad_is_stale_too(rng):
    x = mr.tensor(rng.standard_normal((2, 3)), requires_grad=True)
    w = mr.Parameter(rng.standard_normal((4, 3)))
    with mr.no_grad():
        wt = w.T
    loss = (x @ wt).sum()
    loss.backward(retain_graph=True)
    w.grad = np.ones_like(w.data)
    mr.optim.SGD([w], lr=1.0).step()
    with pytest.raises(RuntimeError, match=r"^MatMul\.backward"):
        loss.backward()


def test_a_copy_of_a_stepped_parameter_is_not_stale(rng):
    """Advanced indexing copies: stepping w does not change what backward reads."""
    x = mr.tensor(rng.standard_normal((2, 3)), requires_grad=True)
    w = mr.Parameter(rng.standard_normal((4, 3)))
    picked = w[[0, 2]]  # a copy
    loss = F.linear(x, picked).sum()
    w.grad = np.ones_like(w.data)
    first, second = _two_backwards(loss, mr.optim.SGD([w], lr=1.0).step, [x])
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_allclose(second[0], np.tile(picked.data.sum(axis=0), (2, 1)))


# --------------------------------------------------------------------------
# (b) detect_anomaly
# --------------------------------------------------------------------------


def _linear_graph(rng):
    x = mr.tensor(rng.standard_normal((2, 3)), requires_grad=True)
    w = mr.tensor(rng.standard_normal((4, 3)), requires_grad=True)
    return x, w, F.linear(x, w).sum()


def test_anomaly_catches_a_write_into_a_saved_input(rng):
    with mr.detect_anomaly():
        x, w, loss = _linear_graph(rng)
        w.data[...] = 0  # not seen by the version counter
        with pytest.raises(
            RuntimeError, match=r"LinearFunction\.backward \(detect_anomaly\): its input 1"
        ):
            loss.backward()


def test_without_anomaly_mode_the_same_write_goes_unseen(rng):
    """As in PyTorch: a write into .data is not tracked; the gradient then
    uses the new values. This is what detect_anomaly() is for."""
    x, w, loss = _linear_graph(rng)
    w.data[...] = 0
    loss.backward()
    np.testing.assert_array_equal(x.grad, np.zeros((2, 3)))


def test_anomaly_mode_is_only_inside_the_block(rng):
    with mr.detect_anomaly():
        assert mr.grad_mode.is_anomaly_enabled()
    assert not mr.grad_mode.is_anomaly_enabled()
    x, w, loss = _linear_graph(rng)  # recorded outside: nothing was copied
    w.data[...] = 0
    with mr.detect_anomaly():
        loss.backward()


def test_anomaly_catches_a_write_into_a_saved_output(rng):
    """ReLU's backward reads its output y: overwriting y before backward."""
    with mr.detect_anomaly():
        x = mr.tensor(rng.standard_normal((3, 4)), requires_grad=True)
        y = F.relu(x)
        loss = y.sum()
        y.data[...] = 1.0
        with pytest.raises(
            RuntimeError, match=r"ReLUFunction\.backward \(detect_anomaly\): its output 0"
        ):
            loss.backward()


def test_anomaly_mode_gives_no_false_alarm_on_nans_from_forward(rng):
    a = rng.standard_normal((2, 3))
    a[0, 1] = np.nan
    with mr.detect_anomaly():
        x = mr.tensor(a, requires_grad=True)
        w = mr.tensor(rng.standard_normal((4, 3)), requires_grad=True)
        loss = F.relu(F.linear(x, w)).exp().sum()
        loss.backward()
    assert np.isnan(w.grad).any() and x.grad.shape == (2, 3)


def test_anomaly_mode_gives_no_false_alarm_on_a_normal_step(rng):
    """A whole training step inside detect_anomaly: nothing to report."""
    with mr.detect_anomaly():
        net, loss = small_net_and_loss(rng)
        loss.backward()
        mr.optim.SGD(net.parameters(), lr=0.1).step()
        _, loss = small_net_and_loss(rng)
        loss.backward()


# --------------------------------------------------------------------------
# (c) Grad mode per thread
# --------------------------------------------------------------------------


def test_another_thread_in_no_grad_does_not_stop_this_one_recording(rng):
    """The failure this guards against: with one global switch, a data-loading
    or evaluation thread inside no_grad() silently turns off recording in the
    training thread; loss.backward() then raises or leaves gradients missing."""
    inside, release = threading.Event(), threading.Event()
    seen_in_thread = []

    def evaluator():
        with mr.no_grad():
            seen_in_thread.append(mr.is_grad_enabled())
            inside.set()
            release.wait(timeout=60)
            seen_in_thread.append(mr.is_grad_enabled())

    thread = threading.Thread(target=evaluator)
    thread.start()
    try:
        assert inside.wait(timeout=60)
        mr.manual_seed(0)
        net = SmallNet()
        x = mr.tensor(rng.standard_normal((3, 2, 5, 5)).astype(np.float32))
        for _ in range(50):
            assert mr.is_grad_enabled()
            net.zero_grad()
            loss = F.cross_entropy(net(x), np.array([0, 1, 3]))
            assert loss.requires_grad and loss.creator is not None
            loss.backward()
            for name, p in net.named_parameters():
                assert p.grad is not None and np.isfinite(p.grad).all(), name
    finally:
        release.set()
        thread.join()
    assert seen_in_thread == [False, False]


def test_a_new_thread_records_even_when_the_main_thread_is_in_no_grad():
    result = []
    with mr.no_grad():
        thread = threading.Thread(target=lambda: result.append(mr.is_grad_enabled()))
        thread.start()
        thread.join()
        assert not mr.is_grad_enabled()
    assert result == [True]


def test_grad_mode_switches_nest_and_restore():
    x = mr.tensor([1.0, 2.0], requires_grad=True)
    assert mr.is_grad_enabled()
    with mr.no_grad():
        assert not (x * 2).requires_grad
        with mr.enable_grad():
            assert (x * 2).requires_grad
            with mr.set_grad_enabled(False):
                assert not (x * 2).requires_grad
                with mr.set_grad_enabled(True):
                    assert (x * 2).requires_grad
                assert not mr.is_grad_enabled()
            assert mr.is_grad_enabled()
        assert not mr.is_grad_enabled()
        with pytest.raises(ZeroDivisionError):
            with mr.enable_grad():
                raise ZeroDivisionError
        assert not mr.is_grad_enabled()
    assert mr.is_grad_enabled()


def test_set_grad_enabled_as_a_plain_call_switches_at_once():
    """``torch.set_grad_enabled(False)`` works as a call, not only in a with
    block; a call that silently did nothing would keep recording graphs."""
    try:
        mr.set_grad_enabled(False)
        assert not mr.is_grad_enabled()
        assert not (mr.tensor([1.0], requires_grad=True) * 2).requires_grad
        mr.set_grad_enabled(True)
        assert mr.is_grad_enabled()
    finally:
        mr.set_grad_enabled(True)


def test_grad_mode_decorators():
    @mr.no_grad()
    def inference():
        return mr.is_grad_enabled()

    @mr.set_grad_enabled(False)
    def also_inference():
        return mr.is_grad_enabled()

    assert mr.is_grad_enabled()  # decorating switched nothing
    assert inference() is False and also_inference() is False
    assert mr.is_grad_enabled()


def test_a_decorated_function_in_two_threads_at_once():
    """``@no_grad()`` makes a fresh switch for each call: two threads inside the
    same decorated function at once each get back their own previous mode
    (one saved value shared by the calls would hand one thread's to the other)."""

    @mr.no_grad()
    def inside(action):
        assert not mr.is_grad_enabled()
        action()

    entered, leave, after_in_thread = threading.Event(), threading.Event(), []

    def worker():  # grad mode on before the call
        inside(lambda: (entered.set(), leave.wait(timeout=60)))
        after_in_thread.append(mr.is_grad_enabled())

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert entered.wait(timeout=60)
        with mr.no_grad():  # grad mode off before the call
            # While this thread is inside, the worker leaves.
            inside(lambda: (leave.set(), thread.join(timeout=60)))
            assert not mr.is_grad_enabled()
        assert mr.is_grad_enabled()
    finally:
        leave.set()
        thread.join()
    assert after_in_thread == [True]


def test_anomaly_mode_is_per_thread_too(rng):
    seen = []
    with mr.detect_anomaly():
        thread = threading.Thread(target=lambda: seen.append(mr.grad_mode.is_anomaly_enabled()))
        thread.start()
        thread.join()
    assert seen == [False]


# --------------------------------------------------------------------------
# (d) Type promotion, against PyTorch
# --------------------------------------------------------------------------

DTYPES = ["int32", "int64", "bool", "float32", "float64"]
SCALARS = [3, -2, 0.5, 1.7, True, False]
OPS = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "**": operator.pow,
}
VALUES = {
    "b": [True, False, True, True, False],
    "i": [1, 2, 3, 4, 0],
    "f": [1.5, -2.25, 3.0, 0.1, 0.0],
}


def _deliberate_difference(dtype: str, op: str, scalar, reverse: bool) -> str | None:
    """Where minires deliberately does not do what PyTorch does, and why."""
    if op == "-" and (dtype == "bool" or isinstance(scalar, bool)):
        # PyTorch refuses any subtraction with a bool operand; minires follows
        # NumPy: True is 1 (a bool tensor minus a bool still raises, below).
        return "bool subtraction"
    if op == "**" and reverse and dtype in ("int32", "int64") and not isinstance(scalar, float):
        # An integer to a negative integer power: PyTorch gives 0 (2 ** -2 == 0),
        # minires (NumPy) raises rather than return a truncated number.
        return "negative integer power"
    return None


CASES = [
    (d, o, s, r)
    for d, o, s, r in itertools.product(DTYPES, OPS, SCALARS, [False, True])
    if _deliberate_difference(d, o, s, r) is None
]


def _id(case) -> str:
    d, o, s, r = case
    return f"{s!r}{o}{d}" if r else f"{d}{o}{s!r}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_tensor_and_python_number_as_pytorch(case):
    torch = pytest.importorskip("torch")
    dtype, op, scalar, reverse = case
    a = np.array(VALUES[np.dtype(dtype).kind], dtype=dtype)
    fn = OPS[op]

    def apply(t):
        return fn(scalar, t) if reverse else fn(t, scalar)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NumPy's divide-by-zero warnings
        try:
            expected = apply(torch.tensor(a))
        except RuntimeError:
            with pytest.raises((TypeError, ValueError)):
                apply(mr.tensor(a))
            return
        got = apply(mr.tensor(a))
    assert str(got.dtype) == str(expected.dtype).removeprefix("torch."), "dtype"
    want = expected.numpy()
    if want.dtype.kind == "f":
        # PyTorch's pow and its scalar / tensor (computed as scalar * (1/t))
        # may differ from NumPy's correctly rounded results by an ulp or two.
        rtol = 4 * np.finfo(want.dtype).eps
        np.testing.assert_allclose(got.data, want, rtol=rtol, atol=0, equal_nan=True)
    else:
        np.testing.assert_array_equal(got.data, want)


def test_the_deliberate_differences_from_pytorch():
    t_bool = mr.tensor(np.array([True, False]))
    t_int = mr.tensor(np.array([1, -2], np.int64))
    # bool subtraction: PyTorch refuses all of it; minires counts True as 1 ...
    assert (t_bool - 3).data.tolist() == [-2, -3] and (t_bool - 3).dtype == np.int64
    assert (t_int - True).data.tolist() == [0, -3] and (t_int - True).dtype == np.int64
    assert (mr.tensor([1.5]) - True).data.tolist() == [0.5]
    # ... except bool - bool, which has no arithmetic meaning (NumPy refuses too).
    with pytest.raises(TypeError):
        t_bool - True
    # A negative integer power of an integer raises (PyTorch gives 0).
    with pytest.raises(ValueError, match="negative integer powers"):
        2**t_int
    with pytest.raises(ValueError, match="negative integer powers"):
        t_int**-2
    # Two float dtypes never mix silently (PyTorch promotes to the wider).
    for op in OPS.values():
        if op is operator.pow:
            continue
        with pytest.raises(TypeError, match="same floating dtype"):
            op(mr.tensor(np.ones(2, np.float32)), mr.tensor(np.ones(2, np.float64)))
        with pytest.raises(TypeError, match="same floating dtype"):
            op(mr.tensor(np.ones(2, np.float64)), mr.tensor(np.ones(2, np.float32)))


TENSOR_DTYPES = ["int32", "int64", "bool", "float32", "float64"]


@pytest.mark.parametrize(
    "left, right, op",
    [
        (a, b, o)
        for a, b, o in itertools.product(TENSOR_DTYPES, TENSOR_DTYPES, ["+", "-", "*", "/"])
        if not (a.startswith("float") and b.startswith("float") and a != b)  # raise, above
        and not (o == "-" and "bool" in (a, b))  # bool subtraction, above
    ],
)
def test_two_tensors_as_pytorch(left, right, op):
    """The kind decides, not the size: float32 times an int64 tensor (labels, a
    mask) stays float32 (NumPy would make it float64, silently)."""
    torch = pytest.importorskip("torch")
    a = np.array(VALUES[np.dtype(left).kind], dtype=left)
    b = np.array(VALUES[np.dtype(right).kind][::-1], dtype=right)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = OPS[op](torch.tensor(a), torch.tensor(b))
        got = OPS[op](mr.tensor(a), mr.tensor(b))
    assert str(got.dtype) == str(expected.dtype).removeprefix("torch.")
    np.testing.assert_allclose(got.data, expected.numpy(), rtol=1e-6, equal_nan=True)


def test_python_numbers_with_a_default_int_tensor():
    t = mr.tensor([1, 2, 3])
    assert t.dtype == np.int64
    half = t * 0.5
    assert half.dtype == np.float32 and half.data.tolist() == [0.5, 1.0, 1.5]
    plus = t + 0.7
    assert plus.dtype == np.float32
    np.testing.assert_array_equal(plus.data, np.array([1.7, 2.7, 3.7], np.float32))
    b = mr.tensor([True, False]) + 1
    assert b.dtype == np.int64 and b.data.tolist() == [2, 1]
    assert (mr.tensor([True, False]) ** True).dtype == np.bool_  # NumPy: int8


def test_rpow_gradient(rng):
    x = mr.tensor(rng.standard_normal(5), requires_grad=True)
    assert mr.gradcheck(lambda t: 2.5**t, [x])
    y = 2.0**x
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 2.0**x.data * math.log(2.0), rtol=1e-12)
    x32 = mr.tensor(rng.standard_normal(3).astype(np.float32), requires_grad=True)
    (3**x32).sum().backward()
    assert (3**x32).dtype == np.float32 and x32.grad.dtype == np.float32


def test_an_int_tensor_does_not_promote_a_float32_graph(rng):
    x = mr.tensor(rng.standard_normal((2, 3)).astype(np.float32), requires_grad=True)
    mask = mr.tensor(np.array([[1, 0, 1], [0, 1, 1]]))  # int64
    y = (x * mask + np.arange(3)).sum()
    assert y.dtype == np.float32
    y.backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, mask.data.astype(np.float32))


# --------------------------------------------------------------------------
# (e) ToDevice inside a recorded graph, with a fake GPU
# --------------------------------------------------------------------------


class FakeGPUArray(np.ndarray):
    """A NumPy array that the patched device helpers call "cuda". NumPy's
    ufuncs keep the subclass, so arithmetic on it stays on the fake device."""


@pytest.fixture
def fake_gpu(monkeypatch):
    """Patch the device helpers as minires.autograd imported them. Returns the
    list of (from, to) moves made by to_device, in order."""
    import minires.autograd as autograd

    moves: list[tuple[str, str]] = []

    def device_of(x):
        x = x.data if isinstance(x, mr.Tensor) else x
        return "cuda" if isinstance(x, FakeGPUArray) else "cpu"

    def to_device(x, device):
        moves.append((device_of(x), device))
        copy = np.array(x)  # a plain ndarray copy: "copied to the host"
        return copy.view(FakeGPUArray) if device == "cuda" else copy

    monkeypatch.setattr(autograd, "device_of", device_of)
    monkeypatch.setattr(autograd, "to_device", to_device)
    return moves


def on_fake_gpu(a) -> np.ndarray:
    return np.array(a).view(FakeGPUArray)


def test_to_cuda_in_a_graph_brings_the_gradient_back_to_the_cpu(fake_gpu, rng):
    x = mr.tensor(rng.standard_normal((2, 3)), requires_grad=True)
    w = mr.tensor(on_fake_gpu(rng.standard_normal((2, 3))))
    assert (x.device, w.device) == ("cpu", "cuda")
    xc = x.to("cuda")
    assert xc.device == "cuda" and type(xc.creator).__name__ == "ToDevice"
    loss = (xc * w).sum()
    assert fake_gpu == [("cpu", "cuda")]
    loss.backward()
    # The gradient reached ToDevice on the GPU and went back to the host ...
    assert fake_gpu == [("cpu", "cuda"), ("cuda", "cpu")]
    assert type(x.grad) is np.ndarray
    # ... with the right values: d(sum(x * w))/dx = w.
    np.testing.assert_array_equal(x.grad, np.asarray(w.data))


def test_to_cpu_in_a_graph_sends_the_gradient_back_to_the_gpu(fake_gpu, rng):
    xg = mr.Tensor(on_fake_gpu(rng.standard_normal((2, 3))), requires_grad=True)
    c = rng.standard_normal((2, 3))
    y = xg.cpu()
    assert y.device == "cpu" and type(y.data) is np.ndarray
    (y * c).sum().backward()
    assert fake_gpu == [("cuda", "cpu"), ("cpu", "cuda")]
    assert isinstance(xg.grad, FakeGPUArray) and xg.grad.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(xg.grad), c)


def test_to_the_same_device_records_nothing(fake_gpu, rng):
    x = mr.tensor(rng.standard_normal(3), requires_grad=True)
    assert x.to("cpu") is x
    xc = x.cuda()
    assert xc.cuda() is xc and fake_gpu == [("cpu", "cuda")]
    with mr.no_grad():
        assert x.to("cuda").creator is None


# --------------------------------------------------------------------------
# (f) Batch size 0: every op, layer and model, forward and backward, as PyTorch
# --------------------------------------------------------------------------


@pytest.fixture(params=["reference", "fast"])
def cpu_backend(request):
    previous = mr.backends.set_cpu_backend(request.param)
    yield request.param
    mr.backends.set_cpu_backend(previous)


@pytest.fixture
def no_numpy_warnings():
    """An empty batch is no reason for a 'Mean of empty slice' or a
    divide-by-zero warning (PyTorch gives none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def _empty_case(rng, x_shape, param_shapes):
    """An empty input (requires grad) and parameters, float32."""
    x = np.zeros(x_shape, np.float32)
    params = [rng.standard_normal(s).astype(np.float32) for s in param_shapes]
    return x, params


def _run_both(op_mr, op_torch, x, params, loss="sum"):
    """Forward and backward in minires and in PyTorch; returns both results as
    (output, gradients) with the outputs and gradients as NumPy arrays."""
    torch = pytest.importorskip("torch")
    xs = [mr.tensor(x, requires_grad=True)] + [mr.tensor(p, requires_grad=True) for p in params]
    ts = [torch.tensor(x, requires_grad=True)] + [
        torch.tensor(p, requires_grad=True) for p in params
    ]
    y = op_mr(*xs)
    ty = op_torch(*ts)
    (y.sum() if loss == "sum" else y).backward()
    (ty.sum() if loss == "sum" else ty).backward()
    return (y.data, [t.grad for t in xs]), (ty.detach().numpy(), [t.grad.numpy() for t in ts])


def _assert_same(got, want):
    (y, grads), (ty, tgrads) = got, want
    assert y.shape == ty.shape and y.dtype == ty.dtype
    np.testing.assert_array_equal(y, ty)  # empty, or a NaN/0 loss
    for g, tg in zip(grads, tgrads):
        assert g is not None and g.shape == tg.shape and g.dtype == tg.dtype
        np.testing.assert_array_equal(g, tg)  # zeros for every parameter


CONV_CASES = [  # (kernel, stride, padding): shifted GEMMs, strided im2col, 1x1 GEMMs
    (3, 1, 1),
    (3, 1, 0),
    (3, 2, 1),
    (1, 1, 0),
    (1, 2, 0),
    (7, 2, 3),
]


@pytest.mark.parametrize("kernel, stride, padding", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_on_an_empty_batch(
    rng, cpu_backend, no_numpy_warnings, kernel, stride, padding, bias
):
    tf = pytest.importorskip("torch").nn.functional
    shapes = [(4, 3, kernel, kernel)] + ([(4,)] if bias else [])
    x, params = _empty_case(rng, (0, 3, 9, 9), shapes)
    _assert_same(
        *_run_both(
            lambda x, *p: F.conv2d(x, *p, stride=stride, padding=padding),
            lambda x, *p: tf.conv2d(x, *p, stride=stride, padding=padding),
            x,
            params,
        )
    )


@pytest.mark.parametrize("need", ["x", "w"])
def test_conv2d_on_an_empty_batch_one_gradient(rng, cpu_backend, no_numpy_warnings, need):
    x = mr.tensor(np.zeros((0, 3, 8, 8), np.float32), requires_grad=need == "x")
    w = mr.tensor(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), requires_grad=need == "w")
    F.conv2d(x, w, padding=1).sum().backward()
    grad = x.grad if need == "x" else w.grad
    assert grad.shape == (x.shape if need == "x" else w.shape) and not grad.any()


@pytest.mark.parametrize("training", [False, True])
def test_batch_norm_on_an_empty_batch(rng, cpu_backend, no_numpy_warnings, training):
    """PyTorch: the output is empty, gamma and beta get zero gradients and, in
    training, the running statistics are left as they were (no NaN)."""
    torch = pytest.importorskip("torch")
    x, (gamma, beta) = _empty_case(rng, (0, 3, 4, 4), [(3,), (3,)])
    mean, var = rng.standard_normal(3).astype(np.float32), rng.uniform(1, 2, 3).astype(np.float32)
    rm, rv = mean.copy(), var.copy()
    trm, trv = torch.tensor(mean), torch.tensor(var)
    _assert_same(
        *_run_both(
            lambda x, g, b: F.batch_norm(x, rm, rv, g, b, training=training),
            lambda x, g, b: torch.nn.functional.batch_norm(x, trm, trv, g, b, training=training),
            x,
            [gamma, beta],
        )
    )
    np.testing.assert_array_equal(rm, trm.numpy())
    np.testing.assert_array_equal(rv, trv.numpy())
    np.testing.assert_array_equal(rm, mean)


def test_batch_norm_still_refuses_one_value_per_channel():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(mr.tensor(np.zeros((1, 3, 1, 1), np.float32)), None, None, training=True)


UNARY_OPS = {
    "relu": (F.relu, lambda tf: tf.relu),
    "max_pool2d 2": (lambda x: F.max_pool2d(x, 2), lambda tf: lambda x: tf.max_pool2d(x, 2)),
    "max_pool2d 3/2/1": (
        lambda x: F.max_pool2d(x, 3, 2, 1),
        lambda tf: lambda x: tf.max_pool2d(x, 3, 2, 1),
    ),
    "avg_pool2d 2": (lambda x: F.avg_pool2d(x, 2), lambda tf: lambda x: tf.avg_pool2d(x, 2)),
    "avg_pool2d 3/2/1": (
        lambda x: F.avg_pool2d(x, 3, 2, 1),
        lambda tf: lambda x: tf.avg_pool2d(x, 3, 2, 1),
    ),
    "adaptive 1": (
        lambda x: F.adaptive_avg_pool2d(x, 1),
        lambda tf: lambda x: tf.adaptive_avg_pool2d(x, 1),
    ),
    "adaptive 2": (
        lambda x: F.adaptive_avg_pool2d(x, 2),
        lambda tf: lambda x: tf.adaptive_avg_pool2d(x, 2),
    ),
    "flatten 1": (lambda x: F.flatten(x, 1), lambda tf: lambda x: x.flatten(1)),
    "flatten 0": (lambda x: F.flatten(x, 0), lambda tf: lambda x: x.flatten(0)),
}


@pytest.mark.parametrize("name", list(UNARY_OPS))
def test_unary_ops_on_an_empty_batch(rng, cpu_backend, no_numpy_warnings, name):
    tf = pytest.importorskip("torch").nn.functional
    op, torch_op = UNARY_OPS[name]
    x, _ = _empty_case(rng, (0, 3, 6, 6), [])
    _assert_same(*_run_both(op, torch_op(tf), x, []))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_on_an_empty_batch(rng, cpu_backend, no_numpy_warnings, bias):
    tf = pytest.importorskip("torch").nn.functional
    x, params = _empty_case(rng, (0, 5), [(3, 5)] + ([(3,)] if bias else []))
    _assert_same(*_run_both(F.linear, tf.linear, x, params))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_on_an_empty_batch(rng, cpu_backend, no_numpy_warnings, reduction):
    """PyTorch: the mean over no samples is NaN, the sum is 0; the gradient is empty."""
    torch = pytest.importorskip("torch")
    x, _ = _empty_case(rng, (0, 5), [])
    labels = np.zeros(0, np.int64)
    got, want = _run_both(
        lambda z: F.cross_entropy(z, labels, reduction=reduction),
        lambda z: torch.nn.functional.cross_entropy(z, torch.tensor(labels), reduction=reduction),
        x,
        [],
        loss="self",
    )
    _assert_same(got, want)
    assert np.isnan(got[0]) if reduction == "mean" else got[0] == 0


@pytest.mark.parametrize("depth", ["resnet20", "resnet18"])
@pytest.mark.parametrize("train", [False, True])
def test_models_on_an_empty_batch(cpu_backend, no_numpy_warnings, depth, train):
    """Eval: forward gives (0, classes). Train (PyTorch allows it): forward and
    backward, every parameter gets a zero gradient of its shape, the running
    statistics stay finite and unchanged."""
    mr.manual_seed(0)
    model = getattr(mr.models, depth)()
    model.train(train)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    x = mr.tensor(np.zeros((0, 3, 32, 32), np.float32))
    y = model(x)
    assert y.shape == (0, 10 if depth == "resnet20" else 1000) and y.dtype == np.float32
    if train:
        F.cross_entropy(y, np.zeros(0, np.int64), reduction="sum").backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.shape == p.shape, name
            assert p.grad.dtype == np.float32 and not p.grad.any(), name
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            assert int(value) == int(before[key]) + train  # counted, as PyTorch
        else:
            np.testing.assert_array_equal(value, before[key], err_msg=key)
