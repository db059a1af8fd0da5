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
# for ResNet-18 / 34 / 50 / 101 / 152. The two shortcuts shape the gradient
# differently (option B's BN resets the activations' scale at every stage,
# and the gradient spreads several times more), but train alike at this
# scale; the pre-activation block trains a 110-layer net that the original
# block, at the same learning rate, cannot yet.
#
# *Runtime* (measured on a shared 2-core CPU): about 4 minutes in full
# mode (most of it the training of §4.8 and §4.9), 30 s with
# `MINIRES_QUICK=1`. Numbers quoted in the text are those of a full-mode
# run; quick mode trains smaller nets for fewer steps and prints its own.

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
# ### Exercise 4.A: a residual block's forward pass
#
# Write the forward passes of minires's two CIFAR blocks from their layers,
# without calling the block itself (`block(x)` or `block.forward(x)`):
#
# * `basic_block_forward(block, x)` for a `CifarBasicBlock`: conv1 → bn1 →
#   relu → conv2 → bn2, plus `block.shortcut(x)` (`None` in a plain net's
#   block: then nothing is added), then a ReLU;
# * `preact_block_forward(block, x)` for a `PreActBlock`: bn1 → relu →
#   conv1 → bn2 → relu → conv2, plus the shortcut, and nothing after the
#   add. Careful: a projection shortcut (option B, an `mr.nn.Sequential`)
#   reads the pre-activated input $\text{relu}(\text{bn1}(x))$, the
#   identity and option A read $x$ itself.
#
# The residual add is a plain `+`. The next cell compares your output and
# its gradient with the blocks' own, for every kind of shortcut, and runs
# `mr.gradcheck` (finite differences) on your function. (The solution is in
# `solutions/04_residual_block.py`.)


# %%
# EXERCISE 4.A: replace the bodies of these two functions.
def basic_block_forward(block, x):
    """y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), from block's layers."""
    raise NotImplementedError("basic_block_forward is still a stub")


def preact_block_forward(block, x):
    """y = conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut(x or relu(bn1(x)))."""
    raise NotImplementedError("preact_block_forward is still a stub")


# %%
from solutions import exercise, fill_in  # tutorials/solutions/: the checks' helpers

fill_in("04_residual_block", globals())  # only with MINIRES_SOLUTIONS=1
with exercise("4.A"):
    rng_ex = np.random.default_rng(41)  # its own generator: the cells below draw the same
    cases = [
        (basic_block_forward, CifarBasicBlock(4, 4)),
        (basic_block_forward, CifarBasicBlock(4, 8, stride=2, shortcut="A")),
        (basic_block_forward, CifarBasicBlock(4, 8, stride=2, shortcut="B")),
        (basic_block_forward, CifarBasicBlock(4, 4, residual=False)),
        (preact_block_forward, PreActBlock(4, 4)),
        (preact_block_forward, PreActBlock(4, 8, stride=2, shortcut="A")),
        (preact_block_forward, PreActBlock(4, 8, stride=2, shortcut="B")),
    ]
    for mine, blk_ex in cases:
        blk_ex = blk_ex.to(np.float64)
        for m in blk_ex.modules():  # generic BN parameters: gamma = 1, beta = 0 hide mistakes
            if isinstance(m, mr.nn.BatchNorm2d):
                m.weight.data[...] = rng_ex.uniform(0.5, 1.5, m.weight.shape)
                m.bias.data[...] = rng_ex.uniform(-0.5, 0.5, m.bias.shape)
        x_ex = rng_ex.standard_normal((2, 4, 5, 5))
        g_ex = rng_ex.standard_normal(blk_ex(mr.tensor(x_ex)).shape)
        grads_ex = []
        for fn in (blk_ex, lambda t, b=blk_ex, f=mine: f(b, t)):
            t = mr.tensor(x_ex.copy(), requires_grad=True)
            out = fn(t)
            out.backward(g_ex)
            grads_ex.append((out.data, t.grad))
        (y_ref, gx_ref), (y_mine, gx_mine) = grads_ex
        kind = type(blk_ex.shortcut).__name__ if blk_ex.shortcut is not None else "none"
        err_y, err_g = np.abs(y_mine - y_ref).max(), np.abs(gx_mine - gx_ref).max()
        print(f"{type(blk_ex).__name__:15s} shortcut {kind:10s}", end=" ")
        print(f"max|y - block(x)| {err_y:.1e}  max|dx - block's dx| {err_g:.1e}")
        assert y_mine.shape == y_ref.shape and err_y < 1e-12 and err_g < 1e-12
        x_small = mr.tensor(rng_ex.standard_normal((2, 4, 4, 4)), requires_grad=True)
        assert mr.gradcheck(lambda t, b=blk_ex, f=mine: f(b, t), [x_small])

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
# The same walk drawn to scale: one box per recorded child or block, its
# height the side of its output map, its width the number of channels (on a
# log scale), with an arc over every block for its shortcut: solid for the
# identity, dashed where the shape changes and the shortcut is torchvision's
# 1×1 convolution + BN (`downsample`).

# %% tags=["figure-04-resnet18-stages"]
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, Rectangle

fig, ax = plt.subplots(figsize=(12, 3.6))
stage_colour = {"layer1": "C0", "layer2": "C1", "layer3": "C2", "layer4": "C3"}
left = 0.0
for name, _, s_out in [("input", None, walk[0][1]), *walk]:
    if len(s_out) == 1:  # avgpool's flattened output and fc: a thin bar
        side, width = 3.0, 0.25
    else:
        side, width = s_out[1] ** 0.5, 0.25 * np.log2(s_out[0])  # sqrt of the side: 7 .. 112
    colour = stage_colour.get(name.split(".")[0], "0.6")
    ax.add_patch(Rectangle((left, -side / 2), width, side, color=colour, alpha=0.8))
    label = "x".join(map(str, s_out))
    ax.text(
        left + width / 2, -side / 2 - 0.6, f"{name}\n{label}", ha="center", va="top", fontsize=7
    )
    if name.startswith("layer"):
        block_of = dict(r18.named_modules())[name]
        dashed = block_of.downsample is not None
        ax.add_patch(
            FancyArrowPatch(
                (left - 0.35, side / 2 + 0.2), (left + width + 0.05, side / 2 + 0.2),
                connectionstyle="arc3,rad=-0.5", arrowstyle="-|>", mutation_scale=8,
                ls="--" if dashed else "-", color="k", lw=0.8,
            )
        )  # fmt: skip
    left += width + 0.45
ax.set_xlim(-0.5, left + 0.3)
ax.set_ylim(-10.5, 8)
ax.axis("off")
ax.set_title("ResNet-18 on a 224x224 image: box height ~ sqrt(map side), width ~ log2(channels);"
             " arcs: shortcuts (dashed: 1x1 conv + BN)", fontsize=9)  # fmt: skip
plt.tight_layout()
plt.show()
downsampled = [n for n, m in r18.named_modules() if getattr(m, "downsample", None) is not None]
print("blocks whose shortcut is a projection:", downsampled)
assert downsampled == ["layer2.0", "layer3.0", "layer4.0"]

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
# A Bottleneck drawn the same way, with the shape changing (stride 2, 4 → 8
# channels) and torchvision's projection shortcut (`downsample`: a 1×1
# convolution and BN). Its input $x$ is again one node with two consumers,
# both convolutions now: the branch's 1×1 reduction and the projection.

# %%
down_b = mr.nn.Sequential(mr.nn.Conv2d(4, 8, 1, stride=2, bias=False), mr.nn.BatchNorm2d(8))
bneck = Bottleneck(4, 2, stride=2, downsample=down_b).to(np.float64)
x_bn = mr.tensor(rng.standard_normal((2, 4, 6, 6)), requires_grad=True)
y_bn = bneck(x_bn)
names_bn = {p: n for n, p in bneck.named_parameters()} | {x_bn: "x", y_bn: "y"}
dot_bn = mr.viz.to_dot(y_bn, names=names_bn)
if mr.viz.can_render():
    with tempfile.TemporaryDirectory() as tmp:
        svg = mr.viz.render(y_bn, Path(tmp) / "bottleneck.svg", names=names_bn)
        display(SVG(filename=str(svg)))
else:
    print(dot_bn)
x_id = re.search(r'^  (t\d+) \[.*label="x\\n', dot_bn, re.M).group(1)
x_consumers = re.findall(rf"^  {x_id} -> (f\d+)", dot_bn, re.M)
kinds_bn = sorted(
    re.search(rf'^  {f} \[.*label="(\w+)"', dot_bn, re.M).group(1) for f in x_consumers
)
n_convs = len(re.findall(r'label="Conv2dFunction"', dot_bn))
print("x goes to", kinds_bn, f"| {n_convs} convolutions in all (3 in the branch, 1 projection)")
assert kinds_bn == ["Conv2dFunction", "Conv2dFunction"] and n_convs == 4

# %% [markdown]
# The "+ x" of the forward pass is a fork in the graph and a "+" in the
# backward pass: whatever $F$ does to the gradient, the shortcut edge
# delivers $\partial L/\partial s$ to $x$ untouched. Tutorial 5 follows that
# through a stack of blocks.
#
# ## 4.8 Option A or option B: the gradient, and a short training run
#
# The two shortcuts differ in more than 2,752 parameters. We record
# $\lVert\partial L/\partial x_l\rVert$ at every block input, as in
# tutorial 5 §5.4 (BN in training mode, random images and labels, the same
# seed for both), and the variance of $x_l$.

# %%
import matplotlib.pyplot as plt

n_img, size = (4, 16) if QUICK else (16, 32)
imgs = mr.tensor(rng.standard_normal((n_img, 3, size, size)).astype(np.float32))
lab = rng.integers(0, 10, n_img)


def block_profile(model):
    """||dL/dx_l|| and Var(x_l) at every block input (l = 0: the stem's output)."""
    logits, outs = model(imgs, return_block_outputs=True)
    for o in outs:
        o.retain_grad()
    mr.functional.cross_entropy(logits, lab).backward()
    return np.array([np.linalg.norm(o.grad) for o in outs]), np.array([o.data.var() for o in outs])


profile = {}
for depth in (20, 56, 110):
    for option in "AB":
        mr.manual_seed(depth)
        profile[depth, option] = block_profile(mr.models.cifar_resnet(depth, shortcut=option))

fig, axes = plt.subplots(1, 2, figsize=(11, 3.3))
for option, style in (("A", "s-"), ("B", "o-")):
    g_norms, var = profile[110, option]
    axes[0].semilogy(g_norms, style, ms=3, label=f"option {option}")
    axes[1].plot(var, style, ms=3, label=f"option {option}")
axes[0].set_title("ResNet-110: ||dL/dx_l||")
axes[1].set_title("ResNet-110: Var(x_l)")
for ax in axes:
    ax.set_xlabel("block l (0 = stem output)")
    for stage_start in (18, 36):
        ax.axvline(stage_start, color="gray", lw=0.8, ls=":")
axes[0].legend()
plt.tight_layout()
plt.show()

print(f"{'depth':>5s} {'spread A':>9s} {'spread B':>9s}", end="  ")
print("Var(x_l) after stage 2's and 3's first block, A | B")
for depth in (20, 56, 110):
    n = (depth - 2) // 6
    sp = {o: profile[depth, o][0].max() / profile[depth, o][0].min() for o in "AB"}
    firsts = {o: profile[depth, o][1][[n + 1, 2 * n + 1]] for o in "AB"}
    print(
        f"{depth:5d} {sp['A']:9.1f} {sp['B']:9.1f}  {firsts['A'].round(2)} | {firsts['B'].round(2)}"
    )
    if depth > 20:
        assert sp["B"] > 2 * sp["A"]
        assert firsts["B"].max() < 1.5 < firsts["A"].min()

# %% [markdown]
# With option B the gradient norm spreads several times more (in full mode
# about 80 for A against about 470 for B at depth 110). The right panel
# shows why. Along a residual stage the variance of $x_l$ grows, block by
# block, because each block adds a BN-normalised branch. Option A carries
# that variance into the next stage (its zero channels only dilute it);
# option B's projection ends in a BN, which resets it to about 1 at every
# stage's first block. Tutorial 5 (§5.6) measures what a small $x_l$ means
# for the gradient: the branch's gain is $\propto 1/\mathrm{std}(x_l)$, so
# the first blocks of a stage amplify the gradient the most, and option B
# gives ResNet-110 three such starts instead of one.
#
# Does it matter for training? A short run on the digits shipped with
# minires (8×8 images repeated over 3 channels, as in tutorial 6; SGD with
# momentum 0.9, weight decay $10^{-4}$, learning rate 0.1 after a linear
# warm-up), two seeds for each option, training loss and test error.

# %%
from minires.data import DataLoader, load_digits

x_train, y_train = load_digits("train")
x_test, y_test = load_digits("test")
mean, std = x_train.mean(), x_train.std()
x_train, x_test = (
    np.repeat((a - mean) / std, 3, axis=1).astype(np.float32) for a in (x_train, x_test)
)


def train(model, steps, batch, seed, warmup):
    """SGD on the digits; returns the loss of every step and the final test error."""
    opt = mr.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    schedule = mr.optim.LinearWarmup(opt, warmup_epochs=warmup)  # stepped once per step
    loader = DataLoader(x_train, y_train, batch_size=batch, shuffle=True, drop_last=True, seed=seed)
    losses = []
    while len(losses) < steps:
        for xb, yb in loader:
            loss = mr.functional.cross_entropy(model(mr.tensor(xb)), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    model.eval()
    with mr.no_grad():
        test_error = float((model(mr.tensor(x_test)).data.argmax(axis=1) != y_test).mean())
    model.train()
    return np.array(losses), test_error


AB_DEPTH, AB_STEPS, AB_BATCH = (20, 60, 32) if QUICK else (56, 150, 64)
ab = {}
for option in "AB":
    for seed in (0, 1):
        mr.manual_seed(seed)
        model = mr.models.cifar_resnet(AB_DEPTH, shortcut=option)
        ab[option, seed] = train(model, AB_STEPS, AB_BATCH, seed, warmup=AB_STEPS // 5)
print(f"ResNet-{AB_DEPTH}, {AB_STEPS} steps of {AB_BATCH} images")
print(f"{'option':>6s} {'seed':>4s} {'train loss (last 10)':>21s} {'test error':>11s}")
for (option, seed), (losses, test_error) in ab.items():
    print(f"{option:>6s} {seed:4d} {losses[-10:].mean():21.3f} {100 * test_error:10.1f}%")
test_err = {o: np.array([ab[o, s][1] for s in (0, 1)]) for o in "AB"}
gap = abs(test_err["A"].mean() - test_err["B"].mean())
seed_spread = max(np.ptp(test_err["A"]), np.ptp(test_err["B"]))
print(f"A vs B: {100 * gap:.1f} points apart on average; seeds of one option: up to "
      f"{100 * seed_spread:.1f} points apart")  # fmt: skip
assert all(losses[-10:].mean() < 1.0 for losses, _ in ab.values())  # every net learned
assert gap <= seed_spread + 0.02  # the option matters no more than the seed here (2 points slack)

# %% [markdown]
# At this scale the option does not show: the two seeds of one option
# differ by more than the two options do. He et al. found the same on
# ImageNet, in a bigger experiment: B beat A by about half a point of top-1
# error at 34 layers, which they attributed to the zero-padded channels of
# A learning no residual; they kept A for the CIFAR nets, parameter-free.
#
# ## 4.9 The original block or the pre-activation block, at depth 110
#
# *Identity Mappings in Deep Residual Networks* (He et al. 2016b) moved BN
# and ReLU into the branch, so that nothing follows the add (§4.1, and
# tutorial 5 §5.3 for what it does to $x_L = x_l + \sum F$), and reported
# that the deepest nets train more easily that way. We train
# `cifar_resnet(110)` and `cifar_resnet(110, preact=True)` with the same
# recipe as above, the same seeds and the same batches, and plot the
# training loss step by step.

# %% tags=["figure-04-preactivation-depth-110"]
PA_STEPS, PA_BATCH, PA_WARMUP, PA_SEEDS = (30, 32, 10, (0,)) if QUICK else (100, 64, 30, (0, 1))
pa = {}
for preact in (False, True):
    for seed in PA_SEEDS:
        mr.manual_seed(seed)
        pa[preact, seed] = train(
            mr.models.cifar_resnet(110, preact=preact), PA_STEPS, PA_BATCH, seed, PA_WARMUP
        )

fig, ax = plt.subplots(figsize=(7, 3.3))
for (preact, seed), (losses, _) in pa.items():
    label = f"{'pre-activation' if preact else 'original'}, seed {seed}"
    ax.semilogy(losses, "-" if preact else "--", color="C1" if preact else "C0", lw=1, label=label)
ax.set_xlabel("step")
ax.set_ylabel("training loss (one batch)")
ax.set_title(f"ResNet-110 on the digits, {PA_BATCH} images a step")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

print(
    f"{'block':>14s} {'seed':>4s} {'highest loss':>13s} {'loss (last 10)':>15s} {'test error':>11s}"
)
for (preact, seed), (losses, test_error) in pa.items():
    name = "pre-activation" if preact else "original"
    print(f"{name:>14s} {seed:4d} {losses.max():13.2f} {losses[-10:].mean():15.3f} "
          f"{100 * test_error:10.1f}%")  # fmt: skip
for seed in PA_SEEDS:
    orig, pre_ = pa[False, seed][0], pa[True, seed][0]
    assert pre_[-10:].mean() < 0.5 * orig[-10:].mean()  # pre-activation trains further
    assert pre_.max() < orig.max()  # and without the original's early blow-up

# %% [markdown]
# The original net's loss blows up in its first steps (the highest loss in
# the table: 12 and 41 for the two seeds in full mode, against 2.4 for the
# pre-activation net, whose first loss is about $\ln 10 = 2.3$) and spends
# the rest of the budget recovering: after 100 steps its training loss is
# still 1.2 to 1.7 and its test error 44% to 58%, while the pre-activation
# net is at 0.03 to 0.04 and 1.7% to 3.1%. He et al. met the same trouble in their
# first paper: for ResNet-110 "the initial learning rate of 0.1 is slightly
# too large to start converging", and they warmed up at 0.01. With nothing
# after the add, the pre-activation net trains from the first step at the
# same rate. (Quick mode trains for 30 steps only, and its test errors, from
# BatchNorm's running statistics after so few steps, mean little; the
# training losses show the same difference.)
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
# * Option B's projection (with its BN) resets $x_l$'s variance at each
#   stage, and the per-block gradient norms spread several times more than
#   with option A; a short training run does not tell them apart.
# * At depth 110 the pre-activation block trains at learning rate 0.1 from
#   the start; the original block's loss blows up first.
#
# **Exercise.** `count_macs(model, size=32)` for the CIFAR nets needs a
# different stem (no max-pool, 3×3 conv). Adapt it and check that ResNet-56
# is about 0.125 GFLOPs (125M multiply-adds).
#
# Previous: [03_batchnorm_relu](03_batchnorm_relu.ipynb) ·
# Next: [05_residual_gradient](05_residual_gradient.ipynb), the gradient
# through these blocks.
