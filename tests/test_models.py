"""Tests for minires.models: torchvision's layout and parameter counts (ResNets,
ResNeXts, wide ResNets), the CIFAR nets of He et al. 2016 (counts, shapes,
shortcuts A/B, plain, pre-activation, wide), state_dict round trips, float64
gradient checks of every block and of a whole small net, depth without
recursion, and the exact identity of a zeroed pre-activation block.
test_models_vs_torch.py compares the same models with PyTorch.

Runtime: about 15 s on 2 cores. The nine ImageNet nets (470M parameters in
all) are built with ``skip_init`` for their counts and shapes, in well under
a second; drawing their weights would take about 10 s.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minires as mr
import minires.functional as F
from minires import nn
from minires.models import (
    BasicBlock,
    Bottleneck,
    CifarBasicBlock,
    CifarResNet,
    PreActBlock,
    ResNet,
    ShortcutA,
    cifar_resnet,
    count_parameters,
    get_model,
    list_models,
    shortcut_a,
)
from minires.models.blocks import SubsamplePadFunction, conv1x1
from minires.nn.init import skip_init


def rand(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------
# torchvision's layout, re-stated independently of minires.models
# --------------------------------------------------------------------------


def torchvision_state(
    kind: str,
    layers: list[int],
    num_classes: int = 1000,
    groups: int = 1,
    width_per_group: int = 64,
):
    """(key, shape) in torchvision's state_dict order, from its naming rules:

    conv1, bn1, then layer{1..4}.{j}.conv1/bn1/conv2/bn2[/conv3/bn3] with a
    downsample.0 (1x1 conv) / downsample.1 (BN) in block 0 when the stride or
    the width changes, then fc. A BN holds weight, bias, running_mean,
    running_var, num_batches_tracked (a 0-d int64). A Bottleneck's inner
    width is int(planes * width_per_group / 64) * groups, and its 3x3 conv
    sees width / groups input channels per output channel.
    """
    state = []

    def conv(name, c_out, c_in, k):
        state.append((f"{name}.weight", (c_out, c_in, k, k)))

    def bn(name, c):
        for field in ("weight", "bias", "running_mean", "running_var"):
            state.append((f"{name}.{field}", (c,)))
        state.append((f"{name}.num_batches_tracked", ()))

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    expansion = 1 if kind == "basic" else 4
    inplanes = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            stride = 2 if i > 0 and j == 0 else 1
            if kind == "basic":
                conv(f"{p}.conv1", planes, inplanes, 3)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
            else:
                width = planes * width_per_group // 64 * groups
                conv(f"{p}.conv1", width, inplanes, 1)
                bn(f"{p}.bn1", width)
                conv(f"{p}.conv2", width, width // groups, 3)
                bn(f"{p}.bn2", width)
                conv(f"{p}.conv3", planes * 4, width, 1)
                bn(f"{p}.bn3", planes * 4)
            out = planes * expansion
            if stride != 1 or inplanes != out:
                conv(f"{p}.downsample.0", out, inplanes, 1)
                bn(f"{p}.downsample.1", out)
            inplanes = out
    state.append(("fc.weight", (num_classes, 512 * expansion)))
    state.append(("fc.bias", (num_classes,)))
    return state


IMAGENET = {
    # name: (block kind, layers, groups, width_per_group, torchvision's
    # parameter count, state_dict size)
    "resnet18": ("basic", [2, 2, 2, 2], 1, 64, 11_689_512, 122),
    "resnet34": ("basic", [3, 4, 6, 3], 1, 64, 21_797_672, 218),
    "resnet50": ("bottleneck", [3, 4, 6, 3], 1, 64, 25_557_032, 320),
    "resnet101": ("bottleneck", [3, 4, 23, 3], 1, 64, 44_549_160, 626),
    "resnet152": ("bottleneck", [3, 8, 36, 3], 1, 64, 60_192_808, 932),
    "resnext50_32x4d": ("bottleneck", [3, 4, 6, 3], 32, 4, 25_028_904, 320),
    "resnext101_32x8d": ("bottleneck", [3, 4, 23, 3], 32, 8, 88_791_336, 626),
    "wide_resnet50_2": ("bottleneck", [3, 4, 6, 3], 1, 128, 68_883_240, 320),
    "wide_resnet101_2": ("bottleneck", [3, 4, 23, 3], 1, 128, 126_886_696, 626),
}


@pytest.mark.parametrize("name", list(IMAGENET))
def test_imagenet_counts_keys_shapes_and_order_match_torchvision(name):
    kind, layers, groups, width, n_params, n_keys = IMAGENET[name]
    with skip_init():  # shapes only (see the next test): seconds faster
        model = get_model(name)
    assert count_parameters(model) == n_params
    state = model.state_dict()
    assert len(state) == n_keys
    got = [(k, tuple(np.shape(v))) for k, v in state.items()]
    assert got == torchvision_state(kind, layers, groups=groups, width_per_group=width)
    assert state["bn1.num_batches_tracked"].dtype == np.int64
    assert all(v.dtype == np.float32 for k, v in state.items() if "num_batches" not in k)


def test_skip_init_builds_the_same_model_and_draws_nothing():
    built = mr.models.resnext50_32x4d(num_classes=10)
    with skip_init():
        skipped = mr.models.resnext50_32x4d(num_classes=10)
    assert count_parameters(skipped) == count_parameters(built) == 23_000_394
    a, b = built.state_dict(), skipped.state_dict()
    assert [(k, v.shape, v.dtype) for k, v in a.items()] == [
        (k, v.shape, v.dtype) for k, v in b.items()
    ]
    # Nothing drawn inside the block, and initialisation is back on after it.
    mr.manual_seed(40)
    want = mr.models.resnet20().layer3[2].conv2.weight.data
    mr.manual_seed(40)
    with skip_init():
        mr.models.resnet20()
    got = mr.models.resnet20().layer3[2].conv2.weight.data
    np.testing.assert_array_equal(got, want)
    assert abs(want.std() / np.sqrt(2 / (64 * 9)) - 1) < 0.05  # drawn, N(0, 2 / fan_out)
    with pytest.raises(RuntimeError), skip_init():
        raise RuntimeError  # an error inside the block still turns skipping off
    assert mr.nn.init._skip is False


@pytest.fixture(scope="module")
def resnet18_model():
    mr.manual_seed(0)
    return mr.models.resnet18(num_classes=7)


def test_resnet18_keys_spelled_out(resnet18_model):
    keys = list(resnet18_model.state_dict())
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert keys[:6] == ["conv1.weight"] + [f"bn1.{f}" for f in bn]
    assert keys[6:12] == ["layer1.0.conv1.weight"] + [f"layer1.0.bn1.{f}" for f in bn]
    i = keys.index("layer2.0.bn2.num_batches_tracked")
    assert keys[i + 1 : i + 7] == ["layer2.0.downsample.0.weight"] + [
        f"layer2.0.downsample.1.{f}" for f in bn
    ]
    assert "layer1.0.downsample.0.weight" not in keys  # 64 -> 64, stride 1
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    assert resnet18_model.state_dict()["fc.weight"].shape == (7, 512)


def test_resnet18_output_and_block_output_shapes(resnet18_model):
    x = mr.tensor(rand((2, 3, 32, 32), dtype=np.float32))
    logits, outs = resnet18_model(x, return_block_outputs=True)
    assert logits.shape == (2, 7) and logits.dtype == np.float32
    assert [o.shape[1:] for o in outs] == [(64, 8, 8)] * 3 + [(128, 4, 4)] * 2 + [
        (256, 2, 2)
    ] * 2 + [(512, 1, 1)] * 2
    assert len(list(resnet18_model.blocks())) == 8
    with mr.no_grad():
        resnet18_model.eval()
        y = resnet18_model(mr.tensor(rand((1, 3, 64, 64), dtype=np.float32)))
        resnet18_model.train()
    assert y.shape == (1, 7)


def test_imagenet_init_is_torchvisions():
    mr.manual_seed(1)
    model = mr.models.resnet18(num_classes=10)
    w = model.layer4[1].conv2.weight.data  # (512, 512, 3, 3): fan_out 4608
    assert abs(w.std() / np.sqrt(2 / 4608) - 1) < 0.01
    assert abs(w.mean()) < 1e-3
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert np.all(m.weight.data == 1) and np.all(m.bias.data == 0)
    bound = 1 / np.sqrt(512)
    assert np.abs(model.fc.weight.data).max() <= bound
    assert np.abs(model.fc.weight.data).max() > 0.9 * bound  # uniform, not normal


def test_zero_init_residual_makes_every_block_relu_of_its_shortcut():
    mr.manual_seed(2)
    model = mr.models.resnet50(num_classes=10, zero_init_residual=True)
    blocks = list(model.blocks())
    assert len(blocks) == 16 and all(isinstance(b, Bottleneck) for b in blocks)
    assert all(np.all(b.bn3.weight.data == 0) for b in blocks)
    assert np.all(blocks[0].bn2.weight.data == 1)
    x = mr.tensor(rand((2, 256, 4, 4), dtype=np.float32))
    block = blocks[1]  # identity shortcut
    np.testing.assert_array_equal(block(x).data, np.maximum(x.data, 0))
    mr.manual_seed(2)
    plain = mr.models.resnet18(zero_init_residual=True)
    assert all(np.all(b.bn2.weight.data == 0) for b in plain.blocks())


# --------------------------------------------------------------------------
# CIFAR nets: the paper's parameter counts
# --------------------------------------------------------------------------

CIFAR_COUNTS = {
    # name: (exact count with option A, He et al. 2016 Table 6, in millions)
    "resnet20": (269_722, 0.27),
    "resnet32": (464_154, 0.46),
    "resnet44": (658_586, 0.66),
    "resnet56": (853_018, 0.85),
    "resnet110": (1_727_962, 1.7),
}


@pytest.mark.parametrize("name", list(CIFAR_COUNTS))
def test_cifar_counts_match_the_paper(name):
    exact, paper = CIFAR_COUNTS[name]
    depth = int(name[len("resnet") :])
    model = get_model(name)
    n = count_parameters(model)
    assert n == exact
    digits = 1 if paper >= 1 else 2
    assert round(n / 1e6, digits) == paper
    # The plain net is the same net without shortcuts, and option A has no
    # parameters, so the counts are equal; option B adds 1x1 convs + BN.
    assert count_parameters(get_model(f"plain{depth}")) == exact
    proj = 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    assert count_parameters(cifar_resnet(depth, shortcut="B")) == exact + proj
    assert count_parameters(cifar_resnet(depth, preact=True)) == exact


def test_cifar_counts_layers_and_shortcuts():
    model = mr.models.resnet20()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 20  # depth counts weighted layers
    blocks = list(model.blocks())
    assert len(blocks) == 9
    kinds = [type(b.shortcut).__name__ for b in blocks]
    assert (
        kinds
        == ["Identity"] * 3 + ["ShortcutA"] + ["Identity"] * 2 + ["ShortcutA"] + ["Identity"] * 2
    )
    assert [b.conv1.stride for b in blocks[::3]] == [(1, 1), (2, 2), (2, 2)]
    assert all(b.shortcut is None for b in mr.models.plain20().blocks())
    keys = mr.models.resnet20(shortcut="B").state_dict()
    assert keys["layer2.0.shortcut.0.weight"].shape == (32, 16, 1, 1)
    assert keys["layer3.0.shortcut.1.running_var"].shape == (64,)
    assert "layer1.0.shortcut.0.weight" not in keys
    assert not any("shortcut" in k for k in mr.models.resnet20().state_dict())


@pytest.fixture(scope="module")
def resnet1202_model():
    mr.manual_seed(3)
    return mr.models.resnet1202()


def test_resnet1202_count(resnet1202_model):
    n = count_parameters(resnet1202_model)
    assert n == 19_421_274
    assert round(n / 1e6, 1) == 19.4
    assert len(list(resnet1202_model.blocks())) == 600


def test_resnet1202_forward_backward_at_the_default_recursion_limit(resnet1202_model):
    model = resnet1202_model
    x = mr.tensor(rand((1, 3, 8, 8), dtype=np.float32), requires_grad=True)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # Python's default: the graph walk must not recurse
    try:
        loss = F.cross_entropy(model(x), np.array([3]))
        loss.backward()
    finally:
        sys.setrecursionlimit(old)
    assert np.isfinite(loss.item())
    assert x.grad.shape == x.shape and x.grad.dtype == np.float32
    assert np.all(np.isfinite(x.grad)) and np.abs(x.grad).sum() > 0
    first, last = model.layer1[0].conv1.weight, model.layer3[199].conv2.weight
    assert first.grad is not None and np.abs(first.grad).sum() > 0
    assert last.grad is not None and last.grad.dtype == np.float32
    model.zero_grad()


# --------------------------------------------------------------------------
# CIFAR nets: shapes and block outputs
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"shortcut": "B"},
        {"residual": False},
        {"preact": True},
        {"preact": True, "shortcut": "B", "num_classes": 100},
        {"width": 3},
        {"width": 2, "preact": True, "shortcut": "B"},
    ],
)
def test_cifar_output_and_block_output_shapes(kwargs):
    mr.manual_seed(4)
    model = cifar_resnet(20, **kwargs)
    x = mr.tensor(rand((2, 3, 32, 32), dtype=np.float32))
    logits, outs = model(x, return_block_outputs=True)
    assert logits.shape == (2, kwargs.get("num_classes", 10))
    assert logits.dtype == np.float32
    shapes = [o.shape for o in outs]
    k = kwargs.get("width", 1)
    assert (
        shapes
        == [(2, 16, 32, 32)]
        + [(2, 16 * k, 32, 32)] * 3
        + [(2, 32 * k, 16, 16)] * 3
        + [(2, 64 * k, 8, 8)] * 3
    )
    np.testing.assert_array_equal(model(x).data, logits.data)  # BN in training mode


def test_block_outputs_are_graph_nodes_for_per_block_gradients():
    mr.manual_seed(5)
    model = cifar_resnet(14, preact=True).to(np.float64)
    x = mr.tensor(rand((2, 3, 8, 8)))
    logits, outs = model(x, return_block_outputs=True)
    for o in outs:
        o.retain_grad()
    F.cross_entropy(logits, np.array([1, 2])).backward()
    norms = [float(np.linalg.norm(o.grad)) for o in outs]
    assert len(norms) == 7 and all(n > 0 for n in norms)
    # Block 2 (identity shortcut, pre-activation): the gradient reaching its
    # input is its output's gradient plus the residual branch's share.
    assert outs[1].grad.shape == outs[2].grad.shape
    assert not np.allclose(outs[1].grad, outs[2].grad)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 2),
    c_in=st.integers(1, 3),
    extra=st.integers(0, 3),
    h=st.integers(2, 7),
    w=st.integers(2, 7),
    stride=st.integers(1, 2),
    kind=st.sampled_from(["post-A", "post-B", "pre-A", "pre-B", "plain"]),
)
def test_cifar_blocks_shapes_on_odd_sizes(n, c_in, extra, h, w, stride, kind):
    """The residual branch and the shortcut agree in shape for every size."""
    c_out = c_in + extra
    shortcut = kind[-1] if kind != "plain" else "A"
    cls = PreActBlock if kind.startswith("pre") else CifarBasicBlock
    block = cls(c_in, c_out, stride, shortcut, residual=kind != "plain")
    # BN needs 2 values per channel in training mode
    assume(n * -(-h // stride) * -(-w // stride) >= 2)
    x = mr.tensor(rand((n, c_in, h, w), dtype=np.float32))
    y = block(x)
    assert y.shape == (n, c_out, -(-h // stride), -(-w // stride))
    assert y.dtype == np.float32


# --------------------------------------------------------------------------
# Option A shortcut
# --------------------------------------------------------------------------


def test_shortcut_a_values():
    x = mr.tensor(np.arange(2 * 3 * 5 * 4, dtype=np.float64).reshape(2, 3, 5, 4))
    y = shortcut_a(x, 5, 2)
    assert y.shape == (2, 5, 3, 2)
    np.testing.assert_array_equal(y.data[:, :3], x.data[:, :, ::2, ::2])
    np.testing.assert_array_equal(y.data[:, 3:], 0)  # new channels appended, zero
    assert ShortcutA(3, 5, 2)(x).shape == (2, 5, 3, 2)
    assert ShortcutA(3, 5, 2).state_dict() == {}


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 2),
    c=st.integers(1, 3),
    extra=st.integers(0, 2),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    stride=st.integers(1, 3),
)
def test_shortcut_a_gradcheck(n, c, extra, h, w, stride):
    x = mr.tensor(rand((n, c, h, w), seed=h * 7 + w), requires_grad=True)
    assert mr.gradcheck(lambda t: shortcut_a(t, c + extra, stride), [x], mode="jacobian")


def test_shortcut_a_rejects_bad_arguments():
    x = mr.tensor(rand((1, 4, 4, 4)))
    with pytest.raises(ValueError, match=r"shortcut_a: out_channels .* >= the input's 4"):
        shortcut_a(x, 3, 2)
    with pytest.raises(ValueError, match="shortcut_a: stride must be a positive int, got 0"):
        shortcut_a(x, 4, 0)
    with pytest.raises(ValueError, match=r"shortcut_a: x must be a 4-D .* got shape \(4, 4\)"):
        shortcut_a(mr.tensor(rand((4, 4))), 4, 2)


# --------------------------------------------------------------------------
# Gradient checks in float64, BN in training mode (batch statistics)
# --------------------------------------------------------------------------


def check_module(module, x_shape, seed=0, **kwargs):
    module.to(np.float64).train()
    x = mr.tensor(rand(x_shape, seed), requires_grad=True)
    params = list(module.parameters())
    return mr.gradcheck(lambda t: module(t), [x], params=params, **kwargs)


def test_gradcheck_basic_block_stride2_with_downsample():
    mr.manual_seed(10)
    down = nn.Sequential(conv1x1(3, 6, 2), nn.BatchNorm2d(6))
    # every entry of the input and of all 688 parameter values, one by one
    assert check_module(BasicBlock(3, 6, 2, down), (2, 3, 5, 5), mode="elementwise")


def test_gradcheck_bottleneck_stride2_with_downsample():
    mr.manual_seed(11)
    down = nn.Sequential(conv1x1(4, 8, 2), nn.BatchNorm2d(8))
    assert check_module(Bottleneck(4, 2, 2, down), (2, 4, 5, 5), mode="elementwise")


def test_gradcheck_grouped_bottleneck_stride2_with_downsample():
    """The ResNeXt block: width int(2 * 96 / 64) * 2 = 6, a 3x3 conv in 2 groups."""
    mr.manual_seed(11)
    down = nn.Sequential(conv1x1(4, 8, 2), nn.BatchNorm2d(8))
    block = Bottleneck(4, 2, 2, down, groups=2, base_width=96)
    assert block.conv2.weight.shape == (6, 3, 3, 3) and block.conv2.groups == 2
    assert check_module(block, (2, 4, 5, 5), mode="elementwise")


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_gradcheck_preact_block(shortcut):
    mr.manual_seed(12)
    assert check_module(PreActBlock(3, 5, 2, shortcut), (2, 3, 5, 5), mode="elementwise")


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_gradcheck_cifar_block(shortcut):
    mr.manual_seed(13)
    assert check_module(CifarBasicBlock(3, 5, 2, shortcut), (2, 3, 5, 5), mode="elementwise")


# Whole depth-8 nets, every parameter and the input at once, along random
# directions. Measured errors are ~1e-9 on directional derivatives of ~0.1
# (float64, eps 1e-6: rounding ~1e-16 / 1e-6 per forward); the tolerance
# atol 1e-7 + rtol 1e-6 leaves a margin of ~100 and still catches a wrong
# gradient in a single parameter tensor (see the next test). The input is
# perturbed by ~1e-6 / sqrt(75,000) per entry, far too little to cross a
# ReLU kink, which is why a whole net can be checked at all.
NET_TOL = {"eps": 1e-6, "atol": 1e-7, "rtol": 1e-6, "mode": "directional", "n_directions": 4}


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"shortcut": "B"},
        {"preact": True},
        {"preact": True, "shortcut": "B"},
        {"width": 2},  # option A widens layer1 at stride 1: zero channels, no subsampling
    ],
    ids=["A", "B", "preact-A", "preact-B", "wide-A"],
)
def test_gradcheck_whole_depth8_net(kwargs):
    mr.manual_seed(14)
    model = cifar_resnet(8, **kwargs)
    assert check_module(model, (2, 3, 8, 8), **NET_TOL)


def test_whole_net_check_catches_a_wrong_shortcut_gradient(monkeypatch):
    mr.manual_seed(14)
    model = cifar_resnet(8)
    right = SubsamplePadFunction.backward
    monkeypatch.setattr(SubsamplePadFunction, "backward", lambda self, gy: 0.5 * right(self, gy))
    with pytest.raises(mr.GradcheckError, match="directional"):
        check_module(model, (2, 3, 8, 8), **NET_TOL)


# --------------------------------------------------------------------------
# The pre-activation identity
# --------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_preact_block_with_zero_last_bn_is_exactly_the_identity(training):
    mr.manual_seed(15)
    block = PreActBlock(6, 6).to(np.float64)
    block.train(training)
    block.bn2.weight.data[...] = 0
    x = mr.tensor(rand((2, 6, 5, 5)), requires_grad=True)
    y = block(x)
    np.testing.assert_array_equal(y.data, x.data)  # bit for bit, not approximately
    g = rand((2, 6, 5, 5), seed=1)
    y.backward(g)
    np.testing.assert_array_equal(x.grad, g)  # Jacobian I + 0


def test_postact_block_with_zero_last_bn_is_relu_not_identity():
    """The original block's ReLU after the add breaks the exact identity."""
    mr.manual_seed(16)
    block = CifarBasicBlock(6, 6).to(np.float64)
    block.bn2.weight.data[...] = 0
    x = mr.tensor(rand((2, 6, 5, 5)))
    y = block(x)
    np.testing.assert_array_equal(y.data, np.maximum(x.data, 0))
    assert not np.array_equal(y.data, x.data)


# --------------------------------------------------------------------------
# state_dict round trip and errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"shortcut": "B"}, {"preact": True}])
def test_state_dict_round_trip_gives_identical_outputs(kwargs):
    mr.manual_seed(20)
    a = cifar_resnet(14, **kwargs)
    a(mr.tensor(rand((4, 3, 8, 8), dtype=np.float32)))  # move the running stats
    saved = {k: np.array(v, copy=True) for k, v in a.state_dict().items()}
    mr.manual_seed(21)
    b = cifar_resnet(14, **kwargs)
    x = mr.tensor(rand((2, 3, 8, 8), seed=1, dtype=np.float32))
    a.eval(), b.eval()
    with mr.no_grad():
        assert not np.allclose(a(x).data, b(x).data)
        b.load_state_dict(saved)
        np.testing.assert_array_equal(a(x).data, b(x).data)
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, saved[k])
        assert v.dtype == saved[k].dtype


def test_load_state_dict_names_missing_unexpected_and_misshapen_keys():
    mr.manual_seed(22)
    model = mr.models.resnet20()
    good = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}

    missing = dict(good)
    del missing["layer2.1.bn1.running_var"]
    with pytest.raises(RuntimeError, match=r"missing keys: layer2\.1\.bn1\.running_var"):
        model.load_state_dict(missing)

    unexpected = dict(good, **{"layer2.0.downsample.0.weight": np.zeros((32, 16, 1, 1))})
    with pytest.raises(RuntimeError, match=r"unexpected keys: layer2\.0\.downsample\.0\.weight"):
        model.load_state_dict(unexpected)

    misshapen = dict(good, **{"fc.weight": np.zeros((10, 32), np.float32)})
    with pytest.raises(RuntimeError, match=r"fc\.weight: expected shape \(10, 64\), got \(10, 3"):
        model.load_state_dict(misshapen)

    for k, v in model.state_dict().items():  # nothing was changed by the failures
        np.testing.assert_array_equal(v, good[k])


# --------------------------------------------------------------------------
# dtype discipline, registry, argument errors
# --------------------------------------------------------------------------


def test_float32_net_stays_float32_end_to_end():
    mr.manual_seed(30)
    model = cifar_resnet(8, shortcut="A")
    x = mr.tensor(rand((2, 3, 8, 8), dtype=np.float32), requires_grad=True)
    loss = F.cross_entropy(model(x), np.array([0, 9]))
    assert loss.dtype == np.float32
    loss.backward()
    assert x.grad.dtype == np.float32
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == np.float32, name
    for name, b in model.named_buffers():
        assert b.dtype == (np.int64 if name.endswith("num_batches_tracked") else np.float32)


def test_registry():
    names = list_models()
    assert names[:5] == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    assert names[5:9] == [
        "resnext50_32x4d",
        "resnext101_32x8d",
        "wide_resnet50_2",
        "wide_resnet101_2",
    ]
    assert all(name in mr.models.__all__ for name in names)
    cifar = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202"]
    assert set(cifar) | {"plain20", "plain32", "plain44", "plain56", "plain110"} <= set(names)
    model = get_model("resnet32", num_classes=100, shortcut="B")
    assert isinstance(model, CifarResNet) and model.fc.weight.shape == (100, 64)
    assert isinstance(get_model("plain20"), CifarResNet)
    assert get_model("plain20").residual is False
    with pytest.raises(ValueError, match=r"get_model: unknown model name 'resnet19'.*resnet18"):
        get_model("resnet19")


def test_count_parameters():
    model = mr.models.resnet20(num_classes=7)
    total = count_parameters(model)
    assert total == sum(p.numel() for p in model.parameters())
    model.fc.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - (64 * 7 + 7)
    assert count_parameters(model) == total
    with pytest.raises(TypeError, match="count_parameters: model must be a minires.nn.Module"):
        count_parameters([1, 2])


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: cifar_resnet(21), ValueError, r"cifar_resnet: depth must be 6n \+ 2.*got 21"),
        (lambda: cifar_resnet(2), ValueError, r"cifar_resnet: depth .* got 2"),
        (lambda: cifar_resnet(20, shortcut="C"), ValueError, "shortcut must be 'A' or 'B'"),
        (lambda: cifar_resnet(20, num_classes=0), ValueError, "num_classes must be a positive"),
        (lambda: cifar_resnet(20, width=0), ValueError, "cifar_resnet: width must be a positive"),
        (lambda: mr.models.plain20(residual=True), TypeError, "plain20: residual is always"),
        (lambda: ResNet(BasicBlock, [2, 2, 2]), ValueError, "ResNet: layers must be 4"),
        (lambda: ResNet(nn.Conv2d, [2, 2, 2, 2]), TypeError, "ResNet: block must be"),
        (lambda: BasicBlock(0, 4), ValueError, "BasicBlock: inplanes must be a positive"),
        (lambda: BasicBlock(4, 4, groups=2), ValueError, r"BasicBlock: only groups=1 .*groups=2"),
        (lambda: Bottleneck(4, 4, groups=0), ValueError, "Bottleneck: groups must be a positive"),
        (lambda: Bottleneck(4, 1, base_width=32), ValueError, r"Bottleneck: the inner width"),
        (lambda: ResNet(Bottleneck, [1] * 4, groups=0), ValueError, "ResNet: groups must be"),
        (lambda: ResNet(BasicBlock, [1] * 4, width_per_group=32), ValueError, "BasicBlock: only"),
        (lambda: mr.models.resnext50_32x4d(groups=8), TypeError, "groups"),
        (lambda: PreActBlock(4, 8, 2, "X"), ValueError, "PreActBlock: shortcut must be"),
        (lambda: ShortcutA(8, 4, 2), ValueError, r"ShortcutA: out_channels must be >= "),
    ],
)
def test_bad_arguments_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()
