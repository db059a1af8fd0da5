# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. The residual gradient
#
# **Claim.** For a residual block $y_l = x_l + F(x_l, W_l)$ the chain rule
# gives
#
# $$\frac{\partial L}{\partial x_l} = \frac{\partial L}{\partial y_l}
#   \Big(I + \frac{\partial F}{\partial x_l}\Big),
# \qquad\text{i.e.}\qquad
# \nabla_{x_l} L = g + J_F^\top g,\quad g = \nabla_{y_l} L ,$$
#
# and for a stack of **pre-activation** blocks (nothing after the add)
#
# $$x_L = x_l + \sum_{i=l}^{L-1} F(x_i, W_i), \qquad
# \frac{\partial L}{\partial x_l} = \frac{\partial L}{\partial x_L}
#   \Big(I + \frac{\partial}{\partial x_l}\sum_{i=l}^{L-1} F(x_i, W_i)\Big).$$
#
# The gradient at any block therefore contains $\partial L / \partial x_L$
# *unchanged*, whatever the weights in between. We show each formula three
# ways: minires's autograd, the formula assembled from vector-Jacobian
# products of $F$ alone, and finite differences, on real minires blocks with
# BatchNorm in training mode. Then we show where the usual write-ups are
# loose, and what the formula does to gradient norms in deep nets.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import minires as mr
import minires.functional as F
from minires.models import CifarBasicBlock, PreActBlock

QUICK = os.environ.get("MINIRES_QUICK") == "1"
np.set_printoptions(precision=3, suppress=True, linewidth=120)
rng = np.random.default_rng(0)
mr.manual_seed(0)

# %% [markdown]
# ## 5.0 The residual branch $F$
#
# minires's blocks compute the whole $y$. To apply the formula we need $F$ on
# its own: the block's layers without the shortcut. `branch` below composes
# the block's *own* layers (nothing is re-implemented), and the assert checks
# that it is the block's branch: a pre-activation block is exactly
# $x + F(x)$; the original block is $\text{relu}(x + F(x))$.


# %%
def branch(block, x):
    """F(x): the residual branch of a minires block, from its own layers."""
    if isinstance(block, PreActBlock):  # BN -> ReLU -> conv -> BN -> ReLU -> conv
        return block.conv2(block.relu(block.bn2(block.conv1(block.relu(block.bn1(x))))))
    if isinstance(block, CifarBasicBlock):  # conv -> BN -> ReLU -> conv -> BN
        return block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
    raise TypeError(type(block).__name__)


def randomize_bn(model):
    """Generic gamma and beta (the initial 1 and 0 would hide nothing here, but
    a formula should be shown on a generic point)."""
    for m in model.modules():
        if isinstance(m, mr.nn.BatchNorm2d):
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.weight.shape)
            m.bias.data[...] = rng.uniform(-0.5, 0.5, m.bias.shape)
    return model


N, C, H = 4, 4, 5  # a batch of 4 images: BatchNorm in training mode uses its statistics
pre = randomize_bn(PreActBlock(C, C).to(np.float64))  # identity shortcut, no ReLU after the add
post = randomize_bn(CifarBasicBlock(C, C).to(np.float64))  # the original block
x_np = rng.standard_normal((N, C, H, H))
xt = mr.tensor(x_np)
assert np.allclose(pre(xt).data, xt.data + branch(pre, xt).data, rtol=0, atol=1e-13)
assert np.allclose(
    post(xt).data, np.maximum(xt.data + branch(post, xt).data, 0), rtol=0, atol=1e-13
)
print("pre.training =", pre.training, "| the branch reproduces both blocks")

# %% [markdown]
# ## 5.1 One block: autograd vs $g + J_F^\top g$ vs finite differences
#
# Take a random upstream gradient $g = \partial L/\partial y$ (as if $L =
# \langle g, y\rangle$). Three computations of $\partial L / \partial x$:
#
# 1. **autograd** through the block: `pre(x).backward(g)`;
# 2. **the formula**: $g$ (the shortcut) plus $J_F^\top g$, computed by
#    backpropagating $g$ through the branch $F$ alone;
# 3. **central differences** of $\langle g, y(x)\rangle$, one input entry at
#    a time, in float64.


# %%
def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def autograd_grad(fn, x, g):
    x = mr.tensor(x.copy(), requires_grad=True)
    fn(x).backward(g)
    return x.grad


def fd_grad(fn, x, g, eps=1e-6):
    """d<g, fn(x)>/dx by central differences, entry by entry (no graph recorded)."""
    out = np.zeros_like(x)
    with mr.no_grad():
        for i in np.ndindex(x.shape):
            xp, xm = x.copy(), x.copy()
            xp[i] += eps
            xm[i] -= eps
            out[i] = (np.vdot(g, fn(mr.tensor(xp)).data) - np.vdot(g, fn(mr.tensor(xm)).data)) / (
                2 * eps
            )
    return out


g = rng.standard_normal((N, C, H, H))
grad_autograd = autograd_grad(pre, x_np, g)
grad_formula = g + autograd_grad(lambda t: branch(pre, t), x_np, g)  # g + J_F^T g
grad_fd = fd_grad(pre, x_np, g)

print(f"|autograd - formula| / |formula| = {rel(grad_autograd, grad_formula):.1e}")
print(
    f"|autograd - FD|      / |FD|      = {rel(grad_autograd, grad_fd):.1e}   (FD's own precision)"
)
print(f"|g| = {np.linalg.norm(g):.3f}, |J_F^T g| = {np.linalg.norm(grad_formula - g):.3f}")
assert rel(grad_autograd, grad_formula) < 1e-8
assert rel(grad_autograd, grad_fd) < 1e-6
assert mr.gradcheck(pre, [mr.tensor(x_np.copy(), requires_grad=True)])

# %% [markdown]
# The original (post-activation) block puts a ReLU after the add:
# $y = \text{relu}(x + F(x))$. With $D = \text{diag}(\mathbb{1}[x + F(x) >
# 0])$ the gradient becomes $D g + J_F^\top D g$: the shortcut still carries
# the gradient straight through, but only where the sum was positive.

# %%
with mr.no_grad():
    D = (xt.data + branch(post, xt).data > 0).astype(np.float64)
grad_post = autograd_grad(post, x_np, g)
grad_post_formula = D * g + autograd_grad(lambda t: branch(post, t), x_np, D * g)
err = rel(grad_post, grad_post_formula)
print(f"post-activation: |autograd - (Dg + J_F^T Dg)| / |.| = {err:.1e}", end="; ")
print(f"the ReLU blocks {100 * (1 - D.mean()):.0f}% of the shortcut's entries")
assert rel(grad_post, grad_post_formula) < 1e-8
assert rel(grad_post, fd_grad(post, x_np, g)) < 1e-6

# %% [markdown]
# ## 5.2 "1 +" is an identity matrix plus a Jacobian
#
# Write-ups often say: *the gradient is $1 + \partial F/\partial x$, so it
# cannot vanish*. For a tensor $x$, $\partial F/\partial x$ is a matrix, the
# Jacobian $J_F$, and the "1" is the identity matrix $I$. With BatchNorm in
# training mode $J_F$ is **dense**: every output depends on every input of
# the same channel, across the whole batch. So the gradient reaching $x_j$ is
# $g_j$ *plus contributions from every* $g_i$, not "$g_j$ times (1 + a small
# number)".
#
# A block small enough to print its Jacobian: one channel, a batch of two 2×2
# images, so $x$ has 8 entries and $J$ is 8×8. Each row $i$ of $J$ is one
# backward pass with the one-hot upstream $e_i$. (The BNs' shifts $\beta$ are
# set to 1 so that the ReLUs let most values through: with $\beta = 0$ they
# cut about half, and with them whole rows of $J_F$.)

# %%
tiny = randomize_bn(PreActBlock(1, 1).to(np.float64))
tiny.bn1.bias.data[...] = tiny.bn2.bias.data[...] = 1.0  # let most values through the ReLUs
x_tiny = rng.standard_normal((2, 1, 2, 2))


def jacobian(fn, x):
    n = x.size
    rows = []
    for i in range(n):
        e = np.zeros(n)
        e[i] = 1.0
        rows.append(autograd_grad(fn, x, e.reshape(x.shape)).ravel())
    return np.array(rows)  # J[i, j] = d out_i / d x_j


J_y = jacobian(tiny, x_tiny)
J_F = jacobian(lambda t: branch(tiny, t), x_tiny)
J_fd = np.array(
    [fd_grad(tiny, x_tiny, np.eye(8)[i].reshape(x_tiny.shape)).ravel() for i in range(8)]
)
print("J_F (the branch's Jacobian; dense):\n", J_F)
print("\nJ_y - J_F (= I):\n", J_y - J_F)
print("\nmax |J_y - (I + J_F)| =", np.abs(J_y - np.eye(8) - J_F).max(),
      "| max |J_y - finite differences| =", np.abs(J_y - J_fd).max())  # fmt: skip
assert np.abs(J_y - np.eye(8) - J_F).max() < 1e-12
assert np.abs(J_y - J_fd).max() < 1e-6
assert (np.abs(J_F) > 1e-6).mean() > 0.5  # dense: most entries are non-zero

# %% [markdown]
# Note also what "cannot vanish" really means: $I + J_F$ is singular whenever
# $J_F$ has an eigenvalue $-1$, and the product $(I + J_{F_1})(I+J_{F_2})\cdots$
# can shrink or grow. What the identity does guarantee is the **direct term**
# of §5.3: $\partial L/\partial x_L$ arrives at every earlier block
# unchanged, *added* to whatever the branches contribute.
#
# ## 5.3 Many blocks: $x_L = x_l + \sum F(x_i)$, and where it breaks
#
# For pre-activation blocks with identity shortcuts,
# $x_{i+1} = x_i + F(x_i)$ telescopes to
# $x_L = x_l + \sum_{i=l}^{L-1} F(x_i)$. For the original blocks,
# $x_{i+1} = \text{relu}(x_i + F(x_i))$ and the sum is broken at every block
# by the ReLU. We measure both on the first stage of a 56-layer CIFAR net
# (9 blocks with identity shortcuts; the first block of the next stages
# changes the shape through shortcut A), BN in training mode, a batch of 4
# images.


# %%
def stage1(model):
    blocks = list(model.blocks())
    n = len(blocks) // 3
    return blocks[:n]


def sum_residual(model, images):
    """|x_L - (x_l + sum_i F(x_i))| / |x_L| over the first stage."""
    with mr.no_grad():
        _, outs = model(images, return_block_outputs=True)
        blocks = stage1(model)
        total = outs[0].data + sum(branch(b, outs[i]).data for i, b in enumerate(blocks))
        x_L = outs[len(blocks)].data
    return np.linalg.norm(x_L - total) / np.linalg.norm(x_L)


images = mr.tensor(rng.standard_normal((4, 3, 16, 16)))
net_pre = randomize_bn(mr.models.cifar_resnet(56, preact=True).to(np.float64))
net_post = randomize_bn(mr.models.cifar_resnet(56).to(np.float64))
err_pre, err_post = sum_residual(net_pre, images), sum_residual(net_post, images)
print(f"pre-activation : |x_L - (x_l + sum F)| / |x_L| = {err_pre:.1e}")
print(f"post-activation: |x_L - (x_l + sum F)| / |x_L| = {err_post:.2f}")
assert err_pre < 1e-12 and err_post > 0.1

# %% [markdown]
# The ReLU after the add is not a rounding error: for the original ResNet the
# "sum of residuals" view misses by a large fraction of $x_L$ itself. This is
# what He et al.'s second paper (*Identity Mappings in Deep Residual
# Networks*) fixed by moving BN and ReLU into the branch.
#
# The gradient form of the same statement: $\partial L/\partial x_l =
# \partial L/\partial x_L\,(I + \partial S/\partial x_l)$ with $S(x_l) =
# \sum_i F(x_i)$, each $x_i$ computed from $x_l$ through the blocks. We take
# $L$ = cross-entropy of the whole pre-activation net, read $\partial L /
# \partial x_l$ and $\partial L/\partial x_L$ from autograd (`retain_grad` on
# the block outputs), and rebuild the first from the second with one backward
# pass through $S$:

# %%
labels = rng.integers(0, 10, 4)
logits, outs = net_pre(images, return_block_outputs=True)
blocks = stage1(net_pre)
L_idx = len(blocks)
outs[0].retain_grad()
outs[L_idx].retain_grad()
F.cross_entropy(logits, labels).backward()
g_l, g_L = outs[0].grad, outs[L_idx].grad


def S(x_l):
    """sum_i F(x_i), with x_i run forward from x_l through the stage's blocks."""
    total, h = None, x_l
    for b in blocks:
        f = branch(b, h)
        total = f if total is None else total + f
        h = b(h)
    return total


rebuilt = g_L + autograd_grad(S, outs[0].data, g_L)
print(f"|dL/dx_l - (g_L + J_S^T g_L)| / |dL/dx_l| = {rel(g_l, rebuilt):.1e}")
print(f"|dL/dx_L| = {np.linalg.norm(g_L):.3g}  |dL/dx_l| = {np.linalg.norm(g_l):.3g}")
assert rel(g_l, rebuilt) < 1e-8

# %% [markdown]
# ## 5.4 Gradient norms through deep plain and residual nets
#
# Now the consequence. For CIFAR nets of depth 20, 56 and 110, plain
# (`residual=False`) and residual (option A), at initialisation, with BN in
# training mode on a batch of random images and random labels, we record
# $\lVert \partial L/\partial x_l \rVert$ at the input of every block
# ($l = 0$ is the stem's output, the last is the final block's output).

# %%
depths = [20, 56, 110]
n_img, size = (4, 16) if QUICK else (16, 32)
imgs = mr.tensor(rng.standard_normal((n_img, 3, size, size)).astype(np.float32))
lab = rng.integers(0, 10, n_img)


def block_grad_norms(model):
    logits, outs = model(imgs, return_block_outputs=True)
    for o in outs:
        o.retain_grad()
    F.cross_entropy(logits, lab).backward()
    return np.array([np.linalg.norm(o.grad) for o in outs])


norms = {}
for depth in depths:
    for residual in (False, True):
        mr.manual_seed(depth)
        norms[depth, residual] = block_grad_norms(mr.models.cifar_resnet(depth, residual=residual))

fig, axes = plt.subplots(1, len(depths), figsize=(4 * len(depths), 3.2), sharey=True)
for ax, depth in zip(axes, depths):
    for residual, style in ((False, "o-"), (True, "s-")):
        ax.semilogy(norms[depth, residual], style, ms=3, label="residual" if residual else "plain")
    ax.set_title(f"depth {depth}")
    ax.set_xlabel("block l (0 = stem output)")
axes[0].set_ylabel("||dL/dx_l||")
axes[0].legend()
plt.tight_layout()
plt.show()

print(f"{'depth':>5s} {'plain max/min':>14s} {'residual max/min':>17s}")
spread = {}
for depth in depths:
    sp = [np.log10(norms[depth, r].max() / norms[depth, r].min()) for r in (False, True)]
    spread[depth] = sp
    print(f"{depth:5d} {10 ** sp[0]:14.3g} {10 ** sp[1]:17.3g}")

for depth in depths:
    assert spread[depth][0] > spread[depth][1]  # plain always varies more
for depth in depths[1:]:
    assert spread[depth][0] - spread[depth][1] > 2  # ... by orders of magnitude from depth 56

# %% [markdown]
# Read the plot from right (the loss) to left (the input). In the plain nets
# the gradient norm changes by a roughly constant factor per block, so the
# spread grows *exponentially* with depth: about $10^{1}$ at depth 20,
# $10^{4}$ at 56, $10^{7}$ at 110. With BatchNorm it **grows** toward the
# input rather than vanishing (deep BN nets at initialisation have exploding
# gradients; Yang et al. 2019), which is no better for training with one
# learning rate for all layers. In the residual nets every block adds
# $J_F^\top g$ to a $g$ that is passed on unchanged, so the norm grows
# slowly, roughly in proportion to depth: a spread of one to two orders of
# magnitude at any depth here.
#
# ## Summary
#
# * One block: $\nabla_x L = g + J_F^\top g$; autograd, the formula and
#   finite differences agree (to $10^{-15}$ and to FD's own $10^{-9}$).
# * The "1" is $I$, and $J_F$ is a dense matrix; the gradient reaching $x_j$
#   gathers contributions from every output the BN couples it to.
# * $x_L = x_l + \sum F(x_i)$ holds to rounding for pre-activation blocks and
#   fails by a large fraction of $x_L$ with the original block's ReLU after
#   the add.
# * Plain nets' per-block gradient norms spread exponentially with depth;
#   residual nets' stay within about two orders of magnitude.
#
# **Exercise.** Set every block's last BN weight to 0 in a pre-activation
# net (`block.bn2.weight.data[...] = 0`): what is $J_F$ now, and what do the
# gradient norms of §5.4 look like? (The idea behind `zero_init_residual`.)
#
# Previous: [04_residual_block](04_residual_block.ipynb) ·
# Next: [06_degradation](06_degradation.ipynb), what this means for training.
