"""The ImageNet ResNets, ResNeXts and wide ResNets against a torchvision-layout
ResNet written here in plain PyTorch (torchvision itself may be missing).

The reference below is torchvision's ``resnet.py`` re-typed: the same
attribute names in the same order, the same width formula
int(planes * width_per_group / 64) * groups, the stride on the 3x3. Against
it: every named model's parameter count, state_dict keys and shapes (the
torch nets built on the "meta" device, which allocates nothing), and the
logits and gradients of minires after copying torch's weights in.

Also a wide CIFAR ResNet against Zagoruyko & Komodakis' WRN, re-typed.

Runtime: about 6 s on 2 cores.
"""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
import minires.functional as F
from minires.models import Bottleneck, ResNet, count_parameters, get_model
from minires.nn.init import skip_init

torch = pytest.importorskip("torch")
tnn = torch.nn


# --------------------------------------------------------------------------- #
# torchvision's ResNet, re-typed
# --------------------------------------------------------------------------- #


class TorchBasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        assert groups == 1 and base_width == 64
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU(inplace=True)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TorchBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = tnn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(width)
        self.conv2 = tnn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = tnn.BatchNorm2d(width)
        self.conv3 = tnn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class TorchResNet(tnn.Module):
    def __init__(self, block, layers, num_classes=1000, groups=1, width_per_group=64):
        super().__init__()
        self.inplanes, self.groups, self.base_width = 64, groups, width_per_group
        self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.relu = tnn.ReLU(inplace=True)
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, n, stride=1):
        out = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = tnn.Sequential(
                tnn.Conv2d(self.inplanes, out, 1, stride, bias=False), tnn.BatchNorm2d(out)
            )
        widths = {"groups": self.groups, "base_width": self.base_width}
        blocks = [block(self.inplanes, planes, stride, downsample, **widths)]
        self.inplanes = out
        blocks += [block(out, planes, **widths) for _ in range(1, n)]
        return tnn.Sequential(*blocks)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# name: (block, layers, groups, width_per_group, torchvision's parameter count)
TORCHVISION = {
    "resnet18": (TorchBasicBlock, [2, 2, 2, 2], 1, 64, 11_689_512),
    "resnet34": (TorchBasicBlock, [3, 4, 6, 3], 1, 64, 21_797_672),
    "resnet50": (TorchBottleneck, [3, 4, 6, 3], 1, 64, 25_557_032),
    "resnet101": (TorchBottleneck, [3, 4, 23, 3], 1, 64, 44_549_160),
    "resnet152": (TorchBottleneck, [3, 8, 36, 3], 1, 64, 60_192_808),
    "resnext50_32x4d": (TorchBottleneck, [3, 4, 6, 3], 32, 4, 25_028_904),
    "resnext101_32x8d": (TorchBottleneck, [3, 4, 23, 3], 32, 8, 88_791_336),
    "wide_resnet50_2": (TorchBottleneck, [3, 4, 6, 3], 1, 128, 68_883_240),
    "wide_resnet101_2": (TorchBottleneck, [3, 4, 23, 3], 1, 128, 126_886_696),
}


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_count_keys_and_shapes_equal_torchvisions(name):
    block, layers, groups, width, count = TORCHVISION[name]
    with torch.device("meta"):  # shapes only: nothing is allocated or drawn
        ref = TorchResNet(block, layers, groups=groups, width_per_group=width)
    assert sum(p.numel() for p in ref.parameters()) == count
    with skip_init():  # the same model with uninitialised weights, in a blink
        model = get_model(name)
    assert count_parameters(model) == count
    got = [(k, tuple(np.shape(v))) for k, v in model.state_dict().items()]
    assert got == [(k, tuple(v.shape)) for k, v in ref.state_dict().items()]


# --------------------------------------------------------------------------- #
# The same numbers: logits and gradients after copying torch's weights
# --------------------------------------------------------------------------- #


def _randomise(net):
    """Weights as torch draws them; BatchNorm statistics and affine terms
    away from 1 and 0, so that an ignored term shows in the logits."""
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var") or (t.dim() == 1 and name.endswith("weight")):
                t.uniform_(0.5, 1.5)
            elif name.endswith(("running_mean", "bias")):
                t.normal_(0, 0.1)
    return net


def _pair(layers, groups, width, num_classes=10):
    """A torch net and the minires net holding the same float64 weights."""
    torch.manual_seed(0)
    ref = _randomise(TorchResNet(TorchBottleneck, layers, num_classes, groups, width).double())
    model = ResNet(Bottleneck, layers, num_classes, groups=groups, width_per_group=width)
    model = model.to(np.float64)
    model.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    return ref, model


# The blocks of the four models, (groups, width_per_group), one block per
# stage (wide_resnet101_2's blocks are wide_resnet50_2's).
SMALL = {
    "resnext50_32x4d": (32, 4),
    "resnext101_32x8d": (32, 8),
    "wide_resnet50_2": (1, 128),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_one_block_per_stage_logits_equal_torchs(name):
    groups, width = SMALL[name]
    ref, model = _pair([1, 1, 1, 1], groups, width)
    ref.eval(), model.eval()
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    with mr.no_grad():
        got = model(mr.tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    assert np.abs(want).max() > 0.1  # real numbers were compared


def test_resnext50_32x4d_whole_logits_equal_torchs():
    """The full 25M-parameter net, every block, at 32x32 (1x1 after layer4)."""
    ref, model = _pair([3, 4, 6, 3], 32, 4, num_classes=1000)
    assert count_parameters(model) == 25_028_904
    ref.eval(), model.eval()
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32))
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    with mr.no_grad():
        got = model(mr.tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    assert np.abs(want).max() > 0.1


def test_resnext_training_step_gradients_equal_torchs():
    """BatchNorm in training mode (batch statistics), cross-entropy, backward:
    the gradient of the input and of every parameter, grouped convs included."""
    ref, model = _pair([2, 1, 1, 1], 8, 4)
    x = np.random.default_rng(3).standard_normal((4, 3, 32, 32))
    labels = np.array([0, 3, 9, 3])
    tx = torch.from_numpy(x).requires_grad_(True)
    torch.nn.functional.cross_entropy(ref(tx), torch.from_numpy(labels)).backward()
    mx = mr.tensor(x, requires_grad=True)
    F.cross_entropy(model(mx), labels).backward()
    np.testing.assert_allclose(mx.grad, tx.grad.numpy(), rtol=1e-8, atol=1e-12)
    torch_grads = {k: p.grad.numpy() for k, p in ref.named_parameters()}
    grads = {k: p.grad for k, p in model.named_parameters()}
    assert list(grads) == list(torch_grads)
    for k, g in grads.items():
        np.testing.assert_allclose(g, torch_grads[k], rtol=1e-8, atol=1e-12, err_msg=k)
    assert np.abs(grads["layer1.0.conv2.weight"]).max() > 1e-4
    # the running statistics moved as torch's did
    for k, v in ref.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[k], v.numpy(), rtol=1e-10, err_msg=k)


# --------------------------------------------------------------------------- #
# Wide CIFAR ResNets: Zagoruyko & Komodakis' WRN, re-typed
# --------------------------------------------------------------------------- #


class TorchWideBlock(tnn.Module):
    """WRN's pre-activation block; a projection reads relu(bn1(x)), as in WRN's
    code. ``shortcut_bn`` adds the BatchNorm that minires's option B has."""

    def __init__(self, cin, cout, stride, shortcut_bn):
        super().__init__()
        self.bn1 = tnn.BatchNorm2d(cin)
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            projection = [tnn.Conv2d(cin, cout, 1, stride, bias=False)]
            if shortcut_bn:
                projection.append(tnn.BatchNorm2d(cout))
            self.shortcut = tnn.Sequential(*projection)

    def forward(self, x):
        pre = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class TorchWideResNet(tnn.Module):
    """WRN-d-k: n = (d - 4) / 6 blocks per stage, 16k / 32k / 64k channels."""

    def __init__(self, d, k, num_classes=10, shortcut_bn=False):
        super().__init__()
        n = (d - 4) // 6
        self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
        cin = 16
        for i, (cout, stride) in enumerate(((16 * k, 1), (32 * k, 2), (64 * k, 2)), start=1):
            blocks = [TorchWideBlock(cin, cout, stride, shortcut_bn)]
            blocks += [TorchWideBlock(cout, cout, 1, shortcut_bn) for _ in range(n - 1)]
            setattr(self, f"layer{i}", tnn.Sequential(*blocks))
            cin = cout
        self.final_bn = tnn.BatchNorm2d(cin)
        self.fc = tnn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(torch.relu(self.final_bn(x)).mean((2, 3)))


@pytest.mark.parametrize(("d", "k", "wrn_count"), [(28, 10, 36_479_194), (16, 8, 10_961_370)])
def test_wide_cifar_count_is_wrns_plus_the_projection_batchnorms(d, k, wrn_count):
    with torch.device("meta"):
        wrn = TorchWideResNet(d, k)
        ours_in_torch = TorchWideResNet(d, k, shortcut_bn=True)
    assert sum(p.numel() for p in wrn.parameters()) == wrn_count
    with skip_init():
        model = mr.models.cifar_resnet(d - 2, width=k, preact=True, shortcut="B")
    assert count_parameters(model) == wrn_count + 2 * (16 + 32 + 64) * k
    got = [(key, tuple(np.shape(v))) for key, v in model.state_dict().items()]
    assert got == [(key, tuple(v.shape)) for key, v in ours_in_torch.state_dict().items()]


def test_wide_cifar_logits_equal_torchs():
    torch.manual_seed(0)
    ref = _randomise(TorchWideResNet(10, 2, shortcut_bn=True).double()).eval()
    model = mr.models.cifar_resnet(8, width=2, preact=True, shortcut="B").to(np.float64)
    model.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    model.eval()
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8))
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    with mr.no_grad():
        got = model(mr.tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    assert np.abs(want).max() > 0.1
