# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. Residual blocks and the ResNet family
#
# **Claim.** A residual block computes $y = \text{shortcut}(x) + F(x)$, with
# $F$ two 3×3 convolutions (BasicBlock) or 1×1 → 3×3 → 1×1 (Bottleneck), and
# the shortcut is the identity unless the shape changes, where it is either
# zero-padding (option A, no parameters) or a 1×1 convolution (option B).
# Stacking them as He et al. did gives networks whose shapes, parameter counts
# and multiply-add counts we can compute from minires's own models and compare
# with the paper's Table 1 and torchvision: 11.7M / 21.8M / 25.6M / 44.5M /
# 60.2M parameters and 1.8 / 3.6 / 3.8 / 7.6 / 11.3 GFLOPs (multiply-adds)
# for ResNet-18 / 34 / 50 / 101 / 152.

# %%
import os

import numpy as np

import minires as mr
from minires.backends.numpy_backend import out_size
from minires.models import BasicBlock, Bottleneck, CifarBasicBlock, PreActBlock

QUICK = os.environ.get("MINIRES_QUICK") == "1"
np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)
mr.manual_seed(0)

# %% [markdown]
# ## 4.1 BasicBlock
#
# `conv3x3 → BN → ReLU → conv3x3 → BN`, plus the shortcut, then a ReLU. The
# residual add is a plain, out-of-place `+` (d2l's PyTorch code writes
# `Y += X`; minires never mutates a tensor that backward may need).
# A shape check on a toy batch, first with the shape kept (identity
# shortcut), then with stride 2 and twice the channels, where torchvision
# uses a 1×1 convolution + BN as `downsample`:

# %%
block = BasicBlock(64, 64)
print(block)
x = mr.tensor(rng.standard_normal((4, 64, 8, 8)).astype(np.float32))
print("identity shortcut:", x.shape, "->", block(x).shape)

down = mr.nn.Sequential(mr.nn.Conv2d(64, 128, 1, stride=2, bias=False), mr.nn.BatchNorm2d(128))
block2 = BasicBlock(64, 128, stride=2, downsample=down)
print("stride 2, 1x1 downsample:", x.shape, "->", block2(x).shape)
assert block(x).shape == (4, 64, 8, 8) and block2(x).shape == (4, 128, 4, 4)

# %% [markdown]
# *Why a block can easily be the identity* (d2l's "nested function classes"
# argument, and the reason for `zero_init_residual`): if the last BN's scale
# $\gamma$ is 0, $F(x) = 0$ exactly and the block returns $\text{relu}(x)$.
# For the pre-activation block, which has no ReLU after the add, it returns
# $x$ itself. A plain stack of layers has no such easy setting.

# %%
block.bn2.weight.data[...] = 0
x_pos_neg = mr.tensor(rng.standard_normal((2, 64, 6, 6)).astype(np.float32))
y = block(x_pos_neg)
print("BasicBlock with bn2.weight = 0:  max |y - relu(x)| =",
      np.abs(y.data - np.maximum(x_pos_neg.data, 0)).max())  # fmt: skip
pre = PreActBlock(64, 64)
pre.bn2.weight.data[...] = 0
y_pre = pre(x_pos_neg)
print(
    "PreActBlock with bn2.weight = 0: max |y - x|       =",
    np.abs(y_pre.data - x_pos_neg.data).max(),
)
assert np.array_equal(y.data, np.maximum(x_pos_neg.data, 0))
assert np.array_equal(y_pre.data, x_pos_neg.data)

# %% [markdown]
# ## 4.2 Bottleneck: 1×1 → 3×3 → 1×1
#
# ResNet-50 and deeper replace the two 3×3 convolutions with a 1×1 that
# *reduces* the channels by 4, a 3×3 on the reduced channels, and a 1×1 that
# *expands* them back (`expansion = 4`). On 256 channels that costs about what
# a BasicBlock costs on 64, while the block's input and output carry 4× more
# channels. (minires, like torchvision since "v1.5", puts the stride on the
# 3×3; the paper put it on the first 1×1. §4.6 shows what that changes.)

# %%
bott = Bottleneck(256, 64)
print(bott)
xb = mr.tensor(rng.standard_normal((2, 256, 8, 8)).astype(np.float32))
h = xb
for name in ["conv1", "conv2", "conv3"]:
    conv = getattr(bott, name)
    h_next = conv(h)
    print(f"{name}: {h.shape[1]:3d} -> {h_next.shape[1]:3d} channels, kernel {conv.kernel_size}")
    h = h_next
n_bott = mr.models.count_parameters(bott)
n_basic64 = mr.models.count_parameters(BasicBlock(64, 64))
n_basic256 = mr.models.count_parameters(BasicBlock(256, 256))
print(f"parameters: Bottleneck(256) {n_bott:,}  BasicBlock(64) {n_basic64:,}", end="  ")
print(f"BasicBlock(256) {n_basic256:,}")
assert bott(xb).shape == (2, 256, 8, 8)
assert abs(n_bott / n_basic64 - 1) < 0.1 and n_basic256 > 15 * n_bott

# %% [markdown]
# ## 4.3 Shortcuts where the shape changes: option A and option B
#
# When a block halves the map and doubles the channels, $x$ cannot be added
# to $F(x)$ as is. He et al. give two answers:
#
# * **A**: subsample $x$ by the stride and append zero channels. No
#   parameters; the CIFAR nets use it.
# * **B**: a 1×1 convolution with the stride, and BN (a projection). The
#   ImageNet nets use it.

# %%
xa = mr.tensor(rng.standard_normal((2, 16, 8, 8)))
blk_a = CifarBasicBlock(16, 32, stride=2, shortcut="A").to(np.float64)
blk_b = CifarBasicBlock(16, 32, stride=2, shortcut="B").to(np.float64)
sa = blk_a.shortcut(xa)
print(
    "A:", blk_a.shortcut, "| params", mr.models.count_parameters(blk_a.shortcut), "| out", sa.shape
)
print("B:", blk_b.shortcut, "| params", mr.models.count_parameters(blk_b.shortcut))
print(
    "A keeps every other pixel of the 16 channels:",
    np.array_equal(sa.data[:, :16], xa.data[:, :, ::2, ::2]),
)
print("A's 16 new channels are zero:", not sa.data[:, 16:].any())
assert np.array_equal(sa.data[:, :16], xa.data[:, :, ::2, ::2]) and not sa.data[:, 16:].any()
assert mr.models.count_parameters(blk_a.shortcut) == 0
assert mr.models.count_parameters(blk_b.shortcut) == 16 * 32 + 2 * 32

# its backward is its adjoint (gradient back on the kept pixels), checked:
xg = mr.tensor(rng.standard_normal((2, 3, 5, 5)), requires_grad=True)
assert mr.gradcheck(lambda t: mr.models.shortcut_a(t, 5, 2), [xg])

n_a = mr.models.count_parameters(mr.models.resnet20(shortcut="A"))
n_b = mr.models.count_parameters(mr.models.resnet20(shortcut="B"))
print(f"resnet20: option A {n_a:,} parameters, option B {n_b:,}")
assert (n_a, n_b) == (269_722, 272_474)

# %% [markdown]
# ## 4.4 ResNet-18, layer by layer, on a 224×224 image
#
# We run minires's `resnet18` itself on one image and record the output shape
# of each of its top-level children and of each block (`layer1.0`,
# `layer1.1`, ...), with forward hooks: `module.register_forward_hook(hook)`
# calls `hook(module, inputs, output)` after every forward of that module, as
# in PyTorch, and returns a handle whose `remove()` takes the hook off again.
# (The stages `layer1`..`layer4` are `Sequential` containers of blocks; we
# hook the blocks inside them.) The walk should read
# 3×224×224 → 64×112×112 → 64×56×56 → 128×28×28 → 256×14×14 → 512×7×7 →
# 512 → 1000. (A NumPy forward at 224×224 takes a fraction of a second to a
# few seconds; `no_grad` keeps no graph.)

# %%
r18 = mr.models.resnet18().eval()
walk = []  # (name, input shape, output shape), in the order the forwards finish
handles = []


def record(name):
    def hook(module, inputs, output):
        walk.append((name, tuple(inputs[0].shape[1:]), tuple(output.shape[1:])))

    return hook


for name, module in r18.named_modules():
    top_level = name and "." not in name and not name.startswith("layer")
    a_block = name.startswith("layer") and name.count(".") == 1
    if top_level or a_block:
        handles.append(module.register_forward_hook(record(name)))

conv_inputs = []  # every convolution's (module, input height), for §4.6


def record_conv(module, inputs, output):
    conv_inputs.append((module, inputs[0].shape[2]))


for m in r18.modules():
    if isinstance(m, mr.nn.Conv2d):
        handles.append(m.register_forward_hook(record_conv))

image = mr.tensor(rng.standard_normal((1, 3, 224, 224)).astype(np.float32))
with mr.no_grad():
    logits = r18(image)
for handle in handles:
    handle.remove()  # r18 is an ordinary model again
print(f"{'child':8s} {'input':>14s} -> output")
for name, s_in, s_out in walk:
    print(f"{name:8s} {'x'.join(map(str, s_in)):>14s} -> {'x'.join(map(str, s_out))}")
shapes = dict((n, s) for n, _, s in walk)
assert shapes["conv1"] == (64, 112, 112) and shapes["maxpool"] == (64, 56, 56)
assert shapes["layer1.1"] == (64, 56, 56) and shapes["layer2.1"] == (128, 28, 28)
assert shapes["layer3.1"] == (256, 14, 14) and shapes["layer4.1"] == (512, 7, 7)
assert dict((n, s) for n, s, _ in walk)["fc"] == (512,) and logits.shape == (1, 1000)
n_recorded = len(walk)
with mr.no_grad():
    r18(image)  # the hooks were removed: nothing more is recorded
assert len(walk) == n_recorded

# %% [markdown]
# ## 4.5 Parameter counts
#
# minires's ImageNet ResNets have torchvision's layout (same `state_dict`
# keys and shapes), so their counts must equal torchvision's to the unit; the
# paper's Table 1 does not list counts, but the rounded figures everyone
# quotes come from these.

# %%
paper_params = {
    "resnet18": 11.7,
    "resnet34": 21.8,
    "resnet50": 25.6,
    "resnet101": 44.5,
    "resnet152": 60.2,
}
torchvision_params = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
}  # fmt: skip
models = {name: getattr(mr.models, name)() for name in paper_params}
print(f"{'model':10s} {'minires':>12s} {'torchvision':>12s} {'quoted':>7s}")
for name, model in models.items():
    n = mr.models.count_parameters(model)
    print(f"{name:10s} {n:12,d} {torchvision_params[name]:12,d} {paper_params[name]:6.1f}M")
    assert n == torchvision_params[name] and round(n / 1e6, 1) == paper_params[name]

# %% [markdown]
# The CIFAR nets of §4.2 of the paper (Table 6): 0.27M, 0.46M, 0.66M, 0.85M,
# 1.7M parameters for depths 20, 32, 44, 56, 110.

# %%
for depth, quoted in [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)]:
    n = mr.models.count_parameters(mr.models.cifar_resnet(depth))
    print(f"resnet{depth:<4d} {n:10,d}  ({quoted}M in the paper)")
    assert round(n / 1e6, 2 if quoted < 1 else 1) == quoted

# %% [markdown]
# ## 4.6 Multiply-adds
#
# The paper's "FLOPs" are multiply-adds. A convolution producing an
# $F \times O_H \times O_W$ map from $C$ channels with a $k_h\times k_w$ kernel
# does $F\, O_H O_W\, C\, k_h k_w$ of them; the fully connected layer
# $512 \cdot e \cdot 1000$. BN, ReLU, pooling and the residual adds are
# a few percent and are not counted. We walk each model's blocks with the
# sizes from §4.4's formula, once with the stride where minires (and
# torchvision) put it, on the Bottleneck's 3×3, and once where the paper put it,
# on its first 1×1.


# %%
def count_macs(model, size=224, paper_layout=False):
    """Multiply-adds of the convolutions and the fc layer for one size x size image."""
    macs = 0

    def conv(m, h, stride=None):
        nonlocal macs
        s = m.stride[0] if stride is None else stride
        oh = out_size(h, m.kernel_size[0], s, m.padding[0])
        macs += m.out_channels * oh * oh * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        return oh

    h = conv(model.conv1, size)
    h = out_size(h, 3, 2, 1)  # the 3x3/2 max-pool: no multiply-adds
    for block in model.blocks():
        h_in = h
        if paper_layout and isinstance(block, Bottleneck):
            h = conv(block.conv1, h, stride=block.stride)
            h = conv(block.conv2, h, stride=1)
        else:
            h = conv(block.conv1, h)
            h = conv(block.conv2, h)
        if isinstance(block, Bottleneck):
            h = conv(block.conv3, h)
        if block.downsample is not None:
            conv(block.downsample[0], h_in)
    return macs + model.fc.in_features * model.fc.out_features


# Cross-check on ResNet-18: the same count from the input sizes recorded in §4.4's real forward.
from_forward = sum(
    m.out_channels * out_size(h, m.kernel_size[0], m.stride[0], m.padding[0]) ** 2
    * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
    for m, h in conv_inputs
) + 512 * 1000  # fmt: skip
assert from_forward == count_macs(r18)

paper_gflops = {
    "resnet18": 1.8,
    "resnet34": 3.6,
    "resnet50": 3.8,
    "resnet101": 7.6,
    "resnet152": 11.3,
}
torchvision_gflops = {
    "resnet18": 1.81,
    "resnet34": 3.66,
    "resnet50": 4.09,
    "resnet101": 7.80,
    "resnet152": 11.51,
}
print(f"{'model':10s} {'minires':>8s} {'torchvision':>11s} {'paper layout':>13s} {'paper':>6s}")
for name, model in models.items():
    ours, paper_way = count_macs(model) / 1e9, count_macs(model, paper_layout=True) / 1e9
    tv, pp = torchvision_gflops[name], paper_gflops[name]
    print(f"{name:10s} {ours:7.2f}G {tv:10.2f}G {paper_way:12.2f}G {pp:5.1f}G")
    assert round(ours, 2) == torchvision_gflops[name]
    assert abs(paper_way / paper_gflops[name] - 1) < 0.02

# %% [markdown]
# With the stride on the 3×3 (what minires builds), our counts equal the
# GFLOPS torchvision publishes for its weights to two decimals. With the
# stride on the first 1×1, as in the paper, they match Table 1 within 2%:
# 3.66G and 3.86G appear there as "3.6" and "3.8", so the paper rounded some
# figures down. Moving the stride costs ResNet-50 0.23G multiply-adds (6%)
# and, by NVIDIA's measurements, buys about half a point of ImageNet top-1
# accuracy: a 1×1 convolution with stride 2 throws away three quarters of its
# input without looking at it.

# %% [markdown]
# ## 4.7 The graph of a block: one fork, two gradients summed
#
# Autograd records every Function the forward pass calls, and
# `mr.viz.to_dot(t)` writes down what it recorded behind `t`, as Graphviz dot
# text: a box per tensor (its name, shape and dtype), an ellipse per Function,
# edges input → Function → output. In a BasicBlock the input $x$ is read
# twice, by `conv1` and by the residual add: in the graph it is **one** node
# with **two** outgoing edges (drawn red), a fork. Backward runs along the
# edges the other way, so each edge brings a gradient back to $x$, and
# autograd adds them. With $s = F(x) + x$ the sum before the last ReLU:
#
# $$\frac{\partial L}{\partial x} =
#   \underbrace{\frac{\partial L}{\partial s}}_{\text{shortcut edge, into Add}}
#   + \underbrace{\Big(\frac{\partial F}{\partial x}\Big)^{\!\top}
#     \frac{\partial L}{\partial s}}_{\text{branch edge, into conv1}}$$
#
# With `show_grad=True` each box that has a `.grad` shows its norm, and each
# edge out of a fork the norm of what it carries (norms of a sum don't add
# up; the vectors do, and we check that below). The graph must still be there:
# `backward()` frees it as it goes unless called with `retain_graph=True`,
# and `to_dot` raises on a freed graph. `mr.viz.render` draws the picture
# when Graphviz is installed (the Python package `graphviz` and the `dot`
# program, see the README); otherwise we print the dot text, which any
# Graphviz viewer draws.

# %%
import re
import tempfile
from pathlib import Path

from IPython.display import SVG, display

blk = BasicBlock(2, 2).to(np.float64)  # 2 channels: a readable picture
xv = mr.tensor(rng.standard_normal((2, 2, 5, 5)), requires_grad=True)
loss = blk(xv).sum()
loss.backward(retain_graph=True)  # keep the graph, to draw it
names = {p: n for n, p in blk.named_parameters()} | {xv: "x", loss: "loss"}
dot = mr.viz.to_dot(loss, show_grad=True, names=names)
if mr.viz.can_render():
    with tempfile.TemporaryDirectory() as tmp:
        svg = mr.viz.render(loss, Path(tmp) / "block.svg", show_grad=True, names=names)
        display(SVG(filename=str(svg)))
else:
    print("Graphviz is not installed here; the dot text:\n")
    print(dot)

# %% [markdown]
# The fork, read off the dot text: the node labelled `x` and the Functions
# its edges go to, with the gradient norm on each edge.

# %%
x_node = re.search(r'^  (t\d+) \[.*label="x\\n', dot, re.M).group(1)
fork = re.findall(rf'^  {x_node} -> (f\d+) \[color=red, label="\|g\| = (\S+)"\]', dot, re.M)
carried = {re.search(rf'^  {f} \[.*label="(\w+)"', dot, re.M).group(1): float(g) for f, g in fork}
print("x is one node; its edges go to", carried)
assert sorted(carried) == ["Add", "Conv2dFunction"]  # two consumers: the fork

# %% [markdown]
# Now the two parts themselves. For $L = \sum \text{relu}(s)$,
# $\partial L/\partial s$ is 1 where $s > 0$ and 0 elsewhere: that is what
# the shortcut edge carries, unchanged. The branch edge carries it back
# through $F$; we get that by running the branch alone on a copy of $x$ and
# calling backward with $\partial L/\partial s$ as the upstream gradient.

# %%
x_copy = mr.tensor(xv.data, requires_grad=True)
branch = blk.bn2(blk.conv2(blk.relu(blk.bn1(blk.conv1(x_copy)))))  # F(x), no shortcut
g_shortcut = (branch.data + xv.data > 0).astype(np.float64)  # dL/ds
branch.backward(g_shortcut)
g_branch = x_copy.grad
print(f"|shortcut part| = {np.linalg.norm(g_shortcut):.4g}   (the edge into Add)")
print(f"|branch part|   = {np.linalg.norm(g_branch):.4g}   (the edge into conv1)")
print(f"|x.grad|        = {np.linalg.norm(xv.grad):.4g}   (their sum, not the sum of norms)")
print("x.grad == shortcut part + branch part:", np.allclose(xv.grad, g_shortcut + g_branch))
assert np.allclose(xv.grad, g_shortcut + g_branch, rtol=1e-10, atol=1e-12)
assert carried["Add"] == float(f"{np.linalg.norm(g_shortcut):.4g}")
assert carried["Conv2dFunction"] == float(f"{np.linalg.norm(g_branch):.4g}")

# %% [markdown]
# The "+ x" of the forward pass is a fork in the graph and a "+" in the
# backward pass: whatever $F$ does to the gradient, the shortcut edge
# delivers $\partial L/\partial s$ to $x$ untouched. Tutorial 5 follows that
# through a stack of blocks.
#
# ## Summary
#
# * BasicBlock: 3×3, 3×3; Bottleneck: 1×1 reduce, 3×3, 1×1 expand; both
#   add a shortcut with a plain `+`.
# * Shortcut A pads with zeros (no parameters), B projects with a 1×1 conv.
# * ResNet-18's walk: 3×224×224 → 64×112×112 → 64×56×56 → 128×28×28 →
#   256×14×14 → 512×7×7 → 512 → 1000.
# * Parameter counts equal torchvision's to the unit; multiply-adds match
#   torchvision's (stride on the 3×3) and the paper's (stride on the 1×1).
# * In the recorded graph the block's input is one node with two outgoing
#   edges (`mr.viz.to_dot`), and its gradient is the sum of what comes back
#   along both.
#
# **Exercise.** `count_macs(model, size=32)` for the CIFAR nets needs a
# different stem (no max-pool, 3×3 conv). Adapt it and check that ResNet-56
# is about 0.125 GFLOPs (125M multiply-adds).
#
# Previous: [03_batchnorm_relu](03_batchnorm_relu.ipynb) ·
# Next: [05_residual_gradient](05_residual_gradient.ipynb), the gradient
# through these blocks.
