"""nn.Module and the layers: registration, names, state, modes, dtype, containers."""

from __future__ import annotations

import math
from collections import OrderedDict

import naive
import numpy as np
import pytest

import minires as mr
import minires.functional as F
from minires import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.act = nn.ReLU()
        self.scale = 2.0  # a plain attribute: not a parameter
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        h = self.act(self.bn(self.conv(x)))
        return self.fc(F.flatten(F.adaptive_avg_pool2d(h, 1), 1)) * self.scale


def block(seed=0):
    mr.manual_seed(seed)
    return Block()


def x_batch(seed=0, shape=(4, 2, 5, 5)):
    return mr.Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


# --------------------------------------------------------------------------
# Registration and names
# --------------------------------------------------------------------------


def test_named_parameters_order_and_names():
    names = [n for n, _ in block().named_parameters()]
    assert names == ["conv.weight", "bn.weight", "bn.bias", "fc.weight", "fc.bias"]
    shapes = [p.shape for p in block().parameters()]
    assert shapes == [(3, 2, 3, 3), (3,), (3,), (4, 3), (4,)]


def test_nested_names_and_children():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.BatchNorm2d(2), nn.ReLU()))
    assert [n for n, _ in net.named_parameters()] == [
        "0.weight",
        "0.bias",
        "1.0.weight",
        "1.0.bias",
    ]
    assert [n for n, _ in net.named_modules()] == ["", "0", "1", "1.0", "1.1"]
    assert [type(m).__name__ for m in net.children()] == ["Conv2d", "Sequential"]
    assert [n for n, _ in net.named_buffers()] == [
        "1.0.running_mean",
        "1.0.running_var",
        "1.0.num_batches_tracked",
    ]


def test_registration_follows_assignment():
    m = block()
    assert "scale" not in dict(m.named_parameters()) and m.scale == 2.0
    m.extra = mr.Parameter(np.zeros(2, np.float32))
    assert list(dict(m.named_parameters()))[0] == "extra"  # own parameters first (as torch)
    m.extra = None  # replacing a parameter by a plain value unregisters it
    assert "extra" not in dict(m.named_parameters()) and m.extra is None
    m.fc = nn.Identity()
    assert not any(n.startswith("fc.") for n, _ in m.named_parameters())
    del m.bn
    assert not hasattr(m, "bn")
    assert [n for n, _ in m.named_parameters()] == ["conv.weight"]


def test_a_shared_parameter_is_listed_once():
    lin = nn.Linear(3, 3)
    net = nn.Sequential(lin, nn.ReLU(), lin)
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias"]
    assert mr.models.count_parameters(net) == 12


def test_setting_attributes_before_init_is_an_error():
    class Bad(nn.Module):
        def __init__(self):
            self.w = 1
            super().__init__()

    with pytest.raises(AttributeError, match=r"Bad: call super\(\).__init__\(\)"):
        Bad()


def test_missing_attribute_error_names_the_module():
    with pytest.raises(AttributeError, match=r"'Block' object has no attribute 'nope'"):
        block().nope  # noqa: B018


def test_call_runs_forward_and_builds_the_graph():
    m = block()
    y = m(x_batch())
    assert y.shape == (4, 4) and y.dtype == np.float32
    y.sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name


def test_zero_grad():
    m = block()
    m(x_batch()).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_requires_grad_false_freezes_parameters():
    m = block().requires_grad_(False)
    x = mr.Tensor(x_batch().data, requires_grad=True)
    m(x).sum().backward()
    assert all(p.grad is None for p in m.parameters())
    assert x.grad is not None


def test_manual_seed_makes_initialisation_reproducible():
    a, b, c = block(1), block(1), block(2)
    for (n, p), (_, q), (_, r) in zip(
        a.named_parameters(), b.named_parameters(), c.named_parameters()
    ):
        np.testing.assert_array_equal(p.data, q.data, err_msg=n)
        if n.endswith("weight") and not n.startswith("bn"):
            assert not np.array_equal(p.data, r.data), n


def test_default_initialisation_matches_pytorch_bounds():
    mr.manual_seed(0)
    conv, lin = nn.Conv2d(4, 8, 3), nn.Linear(20, 5)
    bound = 1 / math.sqrt(4 * 9)
    assert np.abs(conv.weight.data).max() <= bound and np.abs(conv.bias.data).max() <= bound
    assert np.abs(conv.weight.data).max() > 0.8 * bound  # uniform, not a tiny normal
    assert np.abs(lin.weight.data).max() <= 1 / math.sqrt(20)
    bn = nn.BatchNorm2d(3)
    np.testing.assert_array_equal(bn.weight.data, 1)
    np.testing.assert_array_equal(bn.bias.data, 0)
    np.testing.assert_array_equal(bn.running_mean, 0)
    np.testing.assert_array_equal(bn.running_var, 1)


# --------------------------------------------------------------------------
# state_dict
# --------------------------------------------------------------------------


def test_state_dict_keys_include_buffers_in_torch_order():
    keys = list(block().state_dict())
    assert keys == [
        "conv.weight",
        "bn.weight",
        "bn.bias",
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
        "fc.weight",
        "fc.bias",
    ]
    state = block().state_dict()
    assert state["bn.num_batches_tracked"].dtype == np.int64
    assert state["bn.num_batches_tracked"].shape == ()


def test_state_dict_round_trip_reproduces_the_model():
    src = block(0)
    src(x_batch(1))  # one training step moves the running statistics
    src(x_batch(2))
    src.eval()
    state = {k: np.array(v, copy=True) for k, v in src.state_dict().items()}
    dst = block(99).eval()
    params_before = [id(p) for p in dst.parameters()]
    dst.load_state_dict(state)
    assert [id(p) for p in dst.parameters()] == params_before  # loaded in place
    for k, v in dst.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    assert int(dst.bn.num_batches_tracked) == 2
    x = x_batch(3)
    np.testing.assert_array_equal(dst(x).data, src(x).data)


def test_load_state_dict_copies_values_and_keeps_dtypes():
    m = block()
    state = {
        k: np.full(np.shape(v), 0.5 if v.dtype.kind == "f" else 3.0, dtype=np.float64)
        for k, v in m.state_dict().items()
    }
    state["fc.bias"] = mr.Tensor(np.arange(4.0))  # Tensors are accepted too
    m.load_state_dict(state)
    assert m.fc.weight.dtype == np.float32
    np.testing.assert_array_equal(m.fc.bias.data, [0, 1, 2, 3])
    assert m.bn.num_batches_tracked.dtype == np.int64 and int(m.bn.num_batches_tracked) == 3
    state["fc.weight"][...] = 7.0  # the module holds copies, not the given arrays
    assert m.fc.weight.data[0, 0] == 0.5


def test_load_state_dict_non_strict_ignores_extra_and_missing():
    m = block()
    before = m.fc.weight.data.copy()
    result = m.load_state_dict(
        {"bn.running_mean": np.ones(3), "other.thing": np.zeros(2)}, strict=False
    )
    np.testing.assert_array_equal(m.bn.running_mean, 1)
    np.testing.assert_array_equal(m.fc.weight.data, before)
    assert result.missing_keys == [
        "conv.weight",
        "bn.weight",
        "bn.bias",
        "bn.running_var",
        "fc.weight",
        "fc.bias",
    ]  # not bn.num_batches_tracked: tolerated, as in PyTorch
    assert result.unexpected_keys == ["other.thing"]
    missing, unexpected = result  # a named tuple, as PyTorch's _IncompatibleKeys
    assert (missing, unexpected) == (result.missing_keys, result.unexpected_keys)
    assert repr(m.load_state_dict(m.state_dict())) == "<All keys matched successfully>"


def test_load_state_dict_strict_errors():
    m = block()
    state = dict(m.state_dict())
    state.pop("fc.bias")
    with pytest.raises(RuntimeError, match=r"missing keys: fc\.bias"):
        m.load_state_dict(state)
    state["fc.bias"] = np.zeros(4)
    state["bn.extra"] = np.zeros(1)
    with pytest.raises(RuntimeError, match=r"unexpected keys: bn\.extra"):
        m.load_state_dict(state)
    del state["bn.extra"]
    state["bn.running_var"] = np.ones(4)
    with pytest.raises(RuntimeError, match=r"bn\.running_var: expected shape \(3,\), got \(4,\)"):
        m.load_state_dict(state)
    # A shape mismatch is an error even with strict=False, as in PyTorch.
    with pytest.raises(RuntimeError, match=r"bn\.running_var: expected shape"):
        m.load_state_dict(state, strict=False)


def test_load_state_dict_error_is_still_a_key_and_value_error():
    # minires raised KeyError / ValueError before; callers catching those
    # (minires.train.load_model_state among them) keep working.
    m = block()
    for state in ({}, dict(m.state_dict(), **{"fc.bias": np.zeros(5)})):
        for kind in (RuntimeError, KeyError, ValueError):
            with pytest.raises(kind):
                m.load_state_dict(state)
    with pytest.raises(RuntimeError) as info:
        m.load_state_dict({})
    assert str(info.value).startswith("load_state_dict for Block: missing keys: conv.weight")


def _bad_last(state, key, value):
    """``state`` with ``key`` moved to the end and set to ``value``."""
    state = {k: v for k, v in state.items() if k != key}
    state[key] = value
    return state


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("fc.bias", np.zeros(5), r"fc\.bias: expected shape \(4,\), got \(5,\)"),
        ("fc.bias", np.array(["a", "b", "c", "d"]), r"fc\.bias: expected real numbers"),
        ("fc.bias", np.zeros(4, np.complex128), r"fc\.bias: expected real numbers.*complex"),
        ("fc.bias", [[1.0], [2.0], [3.0], [4.0]], r"fc\.bias: expected shape"),
        (
            "bn.num_batches_tracked",
            np.array(2.5),
            r"bn\.num_batches_tracked: expected whole numbers for int64",
        ),
        ("zz.unexpected", np.zeros(1), r"unexpected keys: zz\.unexpected"),
    ],
)
def test_load_state_dict_is_all_or_nothing(key, value, message):
    # Every key is checked before the first copy: a bad LAST key leaves every
    # earlier parameter and buffer as it was (not merely the bad one).
    m = block()
    before = {k: np.array(v, copy=True) for k, v in m.state_dict().items()}
    new = {k: np.asarray(v) + 1 for k, v in before.items()}  # every value differs
    state = _bad_last(new, key, value)
    assert list(state)[-1] == key
    with pytest.raises(RuntimeError, match=message):
        m.load_state_dict(state)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    m.load_state_dict(new)  # the same dict without the bad key loads
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, new[k], err_msg=k)


def test_load_state_dict_names_every_bad_key():
    m = block()
    state = dict(m.state_dict(), **{"conv.weight": np.zeros(1), "fc.bias": np.zeros(1)})
    with pytest.raises(RuntimeError, match=r"conv\.weight: expected shape.*; fc\.bias: expected"):
        m.load_state_dict(state)


def test_load_state_dict_whole_floats_into_an_integer_buffer():
    m = block()
    state = dict(m.state_dict(), **{"bn.num_batches_tracked": np.array(7.0)})
    m.load_state_dict(state)
    assert m.bn.num_batches_tracked.dtype == np.int64 and int(m.bn.num_batches_tracked) == 7


def test_load_state_dict_without_num_batches_tracked_as_torch():
    # Older torchvision checkpoints have no num_batches_tracked. PyTorch's
    # BatchNorm fills a missing one with the module's own value when the dict
    # carries no version metadata (a plain dict of arrays, as here): the key
    # is neither an error nor reported missing, and the counter is unchanged.
    m = mr.models.resnet20()
    m(mr.tensor(np.ones((2, 3, 8, 8), np.float32)))  # counters at 1
    old = {
        k: np.array(v, copy=True) + (k.endswith("running_var") or k.endswith("weight"))
        for k, v in m.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert m.load_state_dict(old) == ([], [])
    for k, v in m.state_dict().items():
        if k.endswith("num_batches_tracked"):
            assert int(v) == 1, k
        else:
            np.testing.assert_array_equal(v, old[k], err_msg=k)

    torch = pytest.importorskip("torch")
    t = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3))
    t[1].num_batches_tracked.fill_(5)
    plain = {k: v.clone() for k, v in t.state_dict().items() if "num_batches" not in k}
    assert tuple(t.load_state_dict(plain)) == ([], [])
    assert int(t[1].num_batches_tracked) == 5
    ours = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
    ours[1].num_batches_tracked[...] = 5
    assert tuple(ours.load_state_dict({k: v.numpy() for k, v in plain.items()})) == ([], [])
    assert int(ours[1].num_batches_tracked) == 5


def test_load_state_dict_reports_and_raises_as_torch():
    # The same dicts given to the same layout in PyTorch and in minires: the
    # same missing and unexpected keys (strict=False), the same exception type
    # (strict=True, or a shape mismatch), the same keys named.
    torch = pytest.importorskip("torch")

    class TorchBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 3, 3, padding=1, bias=False)
            self.bn = torch.nn.BatchNorm2d(3)
            self.act = torch.nn.ReLU()
            self.fc = torch.nn.Linear(3, 4)

    t, m = TorchBlock(), block()
    assert list(t.state_dict()) == list(m.state_dict())
    full = {k: v.numpy().copy() for k, v in t.state_dict().items()}
    cases = [
        {k: v for k, v in full.items() if k not in ("bn.bias", "fc.weight")},
        dict(full, **{"extra.weight": np.zeros(2), "bn.other": np.zeros(3)}),
        {"bn.weight": full["bn.weight"], "nope": np.zeros(1)},
        {k: v for k, v in full.items() if not k.endswith("num_batches_tracked")},
        full,
    ]
    for state in cases:
        theirs = t.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, False)
        ours = m.load_state_dict(state, strict=False)
        assert ours.missing_keys == theirs.missing_keys
        assert ours.unexpected_keys == theirs.unexpected_keys
        assert repr(ours) == repr(theirs).replace("_IncompatibleKeys", "IncompatibleKeys")
        if theirs.missing_keys or theirs.unexpected_keys:
            with pytest.raises(RuntimeError) as torch_error:
                t.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
            with pytest.raises(RuntimeError) as our_error:
                m.load_state_dict(state)
            for key in theirs.missing_keys + theirs.unexpected_keys:
                assert key in str(torch_error.value) and key in str(our_error.value)
    misshapen = dict(full, **{"fc.bias": np.zeros(5, np.float32)})
    with pytest.raises(RuntimeError, match=r"fc\.bias"):
        t.load_state_dict({k: torch.from_numpy(v) for k, v in misshapen.items()}, False)
    with pytest.raises(RuntimeError, match=r"fc\.bias"):
        m.load_state_dict(misshapen, strict=False)


# --------------------------------------------------------------------------
# train / eval and BatchNorm
# --------------------------------------------------------------------------


def test_train_and_eval_propagate_to_every_submodule():
    net = nn.Sequential(block(), nn.Sequential(nn.ReLU(), nn.BatchNorm2d(2)))
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net.train(False)
    assert not any(m.training for m in net.modules())


def test_batchnorm_training_uses_batch_stats_and_updates_buffers():
    mr.manual_seed(0)
    bn = nn.BatchNorm2d(2, momentum=0.2)
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 4)).astype(np.float32) * 3 + 5
    y = bn(mr.Tensor(x))
    expected, rm, rv = naive.batch_norm(
        x, np.ones(2), np.zeros(2), np.zeros(2), np.ones(2), True, 0.2, 1e-5
    )
    np.testing.assert_allclose(y.data, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, rv, rtol=1e-5)
    assert int(bn.num_batches_tracked) == 1
    assert bn.running_mean.dtype == np.float32


def test_batchnorm_eval_uses_running_stats_and_changes_nothing():
    bn = nn.BatchNorm2d(2)
    x = np.random.default_rng(1).standard_normal((3, 2, 4, 4)).astype(np.float32) * 3 + 5
    for _ in range(3):
        bn(mr.Tensor(x))
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    bn.eval()
    y = bn(mr.Tensor(x))
    expected, _, _ = naive.batch_norm(x, np.ones(2), np.zeros(2), rm, rv, training=False)
    np.testing.assert_allclose(y.data, expected, rtol=1e-5, atol=1e-5)
    # Not normalised by the batch: running stats lag the batch after 3 steps.
    assert abs(y.data.mean()) > 0.1
    np.testing.assert_array_equal(bn.running_mean, rm)
    np.testing.assert_array_equal(bn.running_var, rv)
    assert int(bn.num_batches_tracked) == 3  # evaluation does not count
    bn.train()
    bn(mr.Tensor(x))
    assert int(bn.num_batches_tracked) == 4


def test_batchnorm_eval_on_a_single_image():
    bn = nn.BatchNorm2d(3).eval()
    y = bn(mr.Tensor(np.ones((1, 3, 1, 1), np.float32)))
    np.testing.assert_allclose(y.data, 1 / np.sqrt(1 + 1e-5), rtol=1e-6)


def test_batchnorm_momentum_none_is_a_cumulative_average():
    bn = nn.BatchNorm2d(1, momentum=None)
    r = np.random.default_rng(2)
    means = []
    for _ in range(4):
        x = (r.standard_normal((4, 1, 2, 2)) + r.uniform(-3, 3)).astype(np.float32)
        means.append(x.mean())
        bn(mr.Tensor(x))
    np.testing.assert_allclose(bn.running_mean, [np.mean(means)], rtol=1e-5)


def test_batchnorm_without_running_stats_or_affine():
    bn = nn.BatchNorm2d(2, affine=False, track_running_stats=False)
    assert list(bn.named_parameters()) == [] and list(bn.state_dict()) == []
    x = np.random.default_rng(3).standard_normal((2, 2, 3, 3)).astype(np.float32) + 4
    bn.eval()  # no running stats: batch statistics even in eval
    y = bn(mr.Tensor(x))
    expected, _, _ = naive.batch_norm(x, np.ones(2), np.zeros(2), training=True)
    np.testing.assert_allclose(y.data, expected, rtol=1e-4, atol=1e-4)


def test_batchnorm_gradients_in_eval_mode_are_affine():
    bn = nn.BatchNorm2d(2).to(np.float64)
    bn.running_mean[...] = [1.0, -2.0]
    bn.running_var[...] = [4.0, 0.25]
    bn.eval()
    x = mr.Tensor(np.random.default_rng(4).standard_normal((2, 2, 2, 2)), requires_grad=True)
    assert mr.gradcheck(bn, x, params=list(bn.parameters()), mode="elementwise")
    bn(x).sum().backward()
    np.testing.assert_allclose(x.grad[:, 0], 1 / np.sqrt(4 + 1e-5))
    np.testing.assert_allclose(x.grad[:, 1], 1 / np.sqrt(0.25 + 1e-5))


# --------------------------------------------------------------------------
# .to(dtype)
# --------------------------------------------------------------------------


def test_to_float64_converts_params_grads_and_float_buffers_only():
    m = block()
    m(x_batch()).sum().backward()
    assert m.to(np.float64) is m
    for name, p in m.named_parameters():
        assert p.dtype == np.float64 and p.grad.dtype == np.float64, name
    assert m.bn.running_mean.dtype == np.float64
    assert m.bn.running_var.dtype == np.float64
    assert m.bn.num_batches_tracked.dtype == np.int64
    assert int(m.bn.num_batches_tracked) == 1
    state = m.state_dict()
    assert state["bn.running_var"].dtype == np.float64  # the buffer itself was replaced
    y = m(mr.Tensor(x_batch().data.astype(np.float64)))
    assert y.dtype == np.float64
    m.float()
    assert all(p.dtype == np.float32 for p in m.parameters())
    assert m.double().fc.weight.dtype == np.float64


def test_to_float64_keeps_the_values():
    m = block()
    before = {k: np.array(v, copy=True) for k, v in m.state_dict().items()}
    m.to(np.float64)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_to_cpu_is_a_no_op_on_the_cpu():
    m = block()
    w = m.conv.weight
    assert m.to("cpu") is m and m.conv.weight is w


# --------------------------------------------------------------------------
# Containers and small layers
# --------------------------------------------------------------------------


def test_sequential_indexing_len_iteration():
    layers = [nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)]
    seq = nn.Sequential(*layers)
    assert len(seq) == 4
    assert list(seq) == layers
    assert seq[0] is layers[0] and seq[-1] is layers[-1]
    head = seq[:2]
    assert isinstance(head, nn.Sequential) and list(head) == layers[:2]
    assert [n for n, _ in head.named_parameters()] == ["0.weight", "0.bias"]
    with pytest.raises(IndexError):
        seq[4]
    seq.append(nn.Identity())
    assert len(seq) == 5 and [n for n, _ in seq.named_children()][-1] == "4"


def test_sequential_runs_in_order():
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    x = mr.Tensor(np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32))
    h = x
    for layer in seq:
        h = layer(h)
    np.testing.assert_array_equal(seq(x).data, h.data)
    assert seq(x).shape == (2, 3)


def test_sequential_from_ordered_dict_uses_the_names():
    seq = nn.Sequential(OrderedDict([("conv", nn.Conv2d(1, 1, 1)), ("act", nn.ReLU())]))
    assert [n for n, _ in seq.named_parameters()] == ["conv.weight", "conv.bias"]
    assert isinstance(seq[1], nn.ReLU)


def test_small_layers_match_functional():
    x = mr.Tensor(np.random.default_rng(0).standard_normal((2, 3, 6, 6)))
    np.testing.assert_array_equal(nn.ReLU()(x).data, F.relu(x).data)
    np.testing.assert_array_equal(nn.MaxPool2d(2)(x).data, F.max_pool2d(x, 2).data)
    np.testing.assert_array_equal(
        nn.AvgPool2d(3, 1, 1)(x).data, F.avg_pool2d(x, 3, stride=1, padding=1).data
    )
    np.testing.assert_array_equal(
        nn.AdaptiveAvgPool2d(1)(x).data, x.data.mean((2, 3), keepdims=True)
    )
    assert nn.Flatten()(x).shape == (2, 108)
    assert nn.Identity(5, foo=1)(x) is x


def test_conv_and_linear_layers_compute_their_op():
    mr.manual_seed(0)
    conv = nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=1).to(np.float64)
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 4))
    np.testing.assert_allclose(
        conv(mr.Tensor(x)).data,
        naive.conv2d(x, conv.weight.data, conv.bias.data, (2, 1), (1, 1)),
        rtol=1e-12,
        atol=1e-12,
    )
    lin = nn.Linear(4, 2, bias=False).to(np.float64)
    assert lin.bias is None and [n for n, _ in lin.named_parameters()] == ["weight"]
    z = np.random.default_rng(1).standard_normal((3, 4))
    np.testing.assert_allclose(lin(mr.Tensor(z)).data, naive.linear(z, lin.weight.data), rtol=1e-12)


def test_repr_names_the_layers():
    text = repr(block())
    for piece in (
        "Block(",
        "(conv): Conv2d(2, 3, kernel_size=(3, 3)",
        "bias=False",
        "(bn): BatchNorm2d(3",
    ):
        assert piece in text


# --------------------------------------------------------------------------
# Forward hooks (PyTorch's register_forward_hook)
# --------------------------------------------------------------------------


def test_forward_hook_sees_inputs_and_output_and_can_be_removed() -> None:
    layer = nn.Linear(3, 2)
    seen = []
    handle = layer.register_forward_hook(lambda m, inputs, out: seen.append((m, inputs, out)))
    x = mr.tensor(np.ones((4, 3), np.float32))
    y = layer(x)
    assert len(seen) == 1 and seen[0][0] is layer and seen[0][1][0] is x and seen[0][2] is y
    handle.remove()
    layer(x)
    assert len(seen) == 1


def test_forward_hook_can_replace_the_output() -> None:
    layer = nn.ReLU()
    with layer.register_forward_hook(lambda m, inputs, out: out * 2.0):
        y = layer(mr.tensor(np.array([1.0, -1.0], np.float32)))
    np.testing.assert_array_equal(y.numpy(), [2.0, 0.0])
    np.testing.assert_array_equal(layer(mr.tensor(np.array([1.0], np.float32))).numpy(), [1.0])


def test_hooks_on_resnet_stages_fire_with_the_stage_shapes() -> None:
    model = mr.models.resnet20()
    shapes = {}
    for name in ("layer1", "layer2", "layer3"):
        getattr(model, name).register_forward_hook(
            lambda m, inputs, out, name=name: shapes.__setitem__(name, out.shape)
        )
    with mr.no_grad():
        model(mr.tensor(np.zeros((2, 3, 32, 32), np.float32)))
    assert shapes == {"layer1": (2, 16, 32, 32), "layer2": (2, 32, 16, 16), "layer3": (2, 64, 8, 8)}
