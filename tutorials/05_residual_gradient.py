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
# ways, on real minires blocks with BatchNorm in training mode: minires's
# autograd; the formula, with $J_F$ computed from forward passes of $F$
# alone (finite differences, so nothing is shared with autograd); and finite
# differences of the whole block. Then we show where the usual write-ups are
# loose (the "1" is a matrix, and $I + J_F$ can be singular), and what the
# formula does in deep nets: cut the gradient through the shortcuts and it
# vanishes; take the shortcuts away and it explodes; and we measure, block
# by block, why neither happens in a residual net.
#
# *Runtime* (measured on a 2-core CPU): about 10 s in full mode, 6 s with
# `MINIRES_QUICK=1` (up to four times that when other work shares the
# cores). Numbers quoted in the text are those of a
# full-mode run; quick mode uses smaller images and prints its own.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import minires as mr
import minires.functional as F
from minires.gradcheck import numerical_directional, numerical_jacobian, numerical_vjp
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
# 2. **the formula** $g + J_F^\top g$, with the Jacobian $J_F$ of the branch
#    built column by column from forward passes of $F$ alone
#    (`minires.gradcheck.numerical_jacobian`: central differences, no
#    backward), then multiplied by $g$;
# 3. **central differences** of $\langle g, y(x)\rangle$ for the whole
#    block, one input entry at a time (`numerical_vjp`), in float64.
#
# 1 and 2 share no code: one runs the block's backward, the other only the
# branch's forward. (Computing $J_F^\top g$ by a backward pass through the
# branch instead would run the very same backward code as 1, and agree to
# the last bit whether the formula were true or not; we print that
# comparison too, to see what a check that cannot fail looks like.)


# %%
def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def autograd_grad(fn, x, g):
    """d<g, fn(x)>/dx by one backward pass."""
    x = mr.tensor(x.copy(), requires_grad=True)
    fn(x).backward(g)
    return x.grad


g = rng.standard_normal((N, C, H, H))
grad_autograd = autograd_grad(pre, x_np, g)  # 1
J_F = numerical_jacobian(lambda t: branch(pre, t), x_np)  # (400, 400), forward passes only
grad_formula = g + (g.ravel() @ J_F).reshape(g.shape)  # 2: g + J_F^T g
grad_fd = numerical_vjp(pre, x_np, g)  # 3
same_code = g + autograd_grad(lambda t: branch(pre, t), x_np, g)  # the check that cannot fail

print(f"J_F: {J_F.shape[0]}x{J_F.shape[1]}, from {2 * x_np.size} forward passes of the branch")
print(f"|autograd - formula| / |formula| = {rel(grad_autograd, grad_formula):.1e}")
print(f"|autograd - FD|      / |FD|      = {rel(grad_autograd, grad_fd):.1e}")
print(f"|formula  - FD|      / |FD|      = {rel(grad_formula, grad_fd):.1e}")
print(f"without the identity: |autograd - J_F^T g| / |autograd| = "
      f"{rel(grad_formula - g, grad_autograd):.2f}")  # fmt: skip
print(f"(autograd vs a backward through the same branch: {rel(grad_autograd, same_code):.1e})")
print(f"|g| = {np.linalg.norm(g):.3f}, |J_F^T g| = {np.linalg.norm(grad_formula - g):.3f}")
assert rel(grad_autograd, grad_formula) < 1e-7  # finite differences' own precision
assert rel(grad_autograd, grad_fd) < 1e-7
assert rel(grad_formula - g, grad_autograd) > 0.1  # the check can fail: drop the I and it does
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
jtdg = numerical_vjp(lambda t: branch(post, t), x_np, D * g)  # J_F^T (Dg), by differences
grad_post_formula = D * g + jtdg
err = rel(grad_post, grad_post_formula)
print(f"post-activation: |autograd - (Dg + J_F^T Dg)| / |.| = {err:.1e}", end="; ")
print(f"the ReLU blocks {100 * (1 - D.mean()):.0f}% of the shortcut's entries")
assert rel(grad_post, grad_post_formula) < 1e-7
assert rel(grad_post, numerical_vjp(post, x_np, g)) < 1e-7

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
# images, so $x$ has 8 entries and $J$ is 8×8. The block's $J_y$ comes from
# autograd (row $i$ is one backward pass with the one-hot upstream $e_i$);
# the branch's $J_F$ from finite differences of $F$ alone, as in §5.1. (The
# BNs' shifts $\beta$ are set to 1 so that the ReLUs let most values
# through: with $\beta = 0$ they cut about half, and with them whole rows of
# $J_F$.)

# %%
tiny = randomize_bn(PreActBlock(1, 1).to(np.float64))
tiny.bn1.bias.data[...] = tiny.bn2.bias.data[...] = 1.0  # let most values through the ReLUs
x_tiny = rng.standard_normal((2, 1, 2, 2))


def jacobian(fn, x):
    """J[i, j] = d out_i / d x_j, row by row from one-hot backward passes."""
    n = x.size
    rows = []
    for i in range(n):
        e = np.zeros(n)
        e[i] = 1.0
        rows.append(autograd_grad(fn, x, e.reshape(x.shape)).ravel())
    return np.array(rows)


J_y = jacobian(tiny, x_tiny)  # autograd, through the block
J_F_tiny = numerical_jacobian(lambda t: branch(tiny, t), x_tiny)  # differences, the branch alone
print("J_F (the branch's Jacobian; dense):\n", J_F_tiny)
print("\nJ_y - J_F (= I, to finite differences' precision):\n", J_y - J_F_tiny)
print("\nmax |J_y - (I + J_F)| =", f"{np.abs(J_y - np.eye(8) - J_F_tiny).max():.1e}",
      "| max |J_y - finite differences of the block| =",
      f"{np.abs(J_y - numerical_jacobian(tiny, x_tiny)).max():.1e}")  # fmt: skip
assert np.abs(J_y - np.eye(8) - J_F_tiny).max() < 1e-8
assert np.abs(J_y - numerical_jacobian(tiny, x_tiny)).max() < 1e-8
assert (np.abs(J_F_tiny) > 1e-6).mean() > 0.5  # dense: most entries are non-zero

# %% [markdown]
# ### "So it cannot vanish"? $I + J_F$ can be singular
#
# The "1 +" bounds nothing from below. For a vector $g$,
# $\lVert (I + J_F)^\top g \rVert$ can be anything from
# $\sigma_{\min}(I + J_F)\,\lVert g\rVert$ to
# $\sigma_{\max}(I + J_F)\,\lVert g\rVert$, and $\sigma_{\min}$ is 0
# whenever $J_F$ has an eigenvalue $-1$. Even the ordinary block of §5.1,
# at initialisation-like weights, has directions that it shrinks: the
# singular values of its $I + J_F$ (from the finite-difference $J_F$ of
# §5.1):

# %%
sv = np.linalg.svd(np.eye(J_F.shape[0]) + J_F, compute_uv=False)
print(f"the block of 5.1: singular values of I + J_F from {sv.min():.2f} to {sv.max():.2f}")
assert sv.min() < 0.5  # some gradient directions lose more than half their length

# %% [markdown]
# Now a block built so that $J_F$ has the eigenvalue $-1$: the branch is a
# 1×1 convolution (a minires `Conv2d`) whose weight is $-vv^\top$ for a unit
# vector $v$ over the channels, so $F(x) = -vv^\top x$ at every pixel and
# $J_F = -vv^\top$ (per pixel): eigenvalue $-1$ along $v$, 0 across it. The
# block is $y = x + F(x)$, a residual block like any other, and its gradient
# is $(I - vv^\top)g$: the part of $g$ along $v$ is gone, at every pixel,
# "1 +" notwithstanding.

# %%
C5 = 4
v = rng.standard_normal(C5)
v /= np.linalg.norm(v)
proj = mr.nn.Conv2d(C5, C5, 1, bias=False).to(np.float64)
proj.weight.data[...] = -np.outer(v, v)[:, :, None, None]  # F(x) = -v v^T x, pixel by pixel


def killer(t):
    """A residual block y = x + F(x) whose J_F has the eigenvalue -1 (along v)."""
    return t + proj(t)


x5 = rng.standard_normal((2, C5, 3, 3))
g5 = rng.standard_normal(x5.shape)
g_in = autograd_grad(killer, x5, g5)
along_v = lambda a: np.einsum("c,nchw->nhw", v, a)  # noqa: E731  (the component along v, per pixel)
eig = np.linalg.eigvals(numerical_jacobian(lambda t: proj(t), x5))
print(f"eigenvalues of J_F (from differences): min {eig.real.min():.3f}, max {eig.real.max():.3f}")
print(f"|g along v| in: {np.linalg.norm(along_v(g5)):.3f}", end="   ")
print(f"out: {np.linalg.norm(along_v(g_in)):.1e}")
print(f"|g| in: {np.linalg.norm(g5):.3f}   out: {np.linalg.norm(g_in):.3f}")
print(f"autograd vs finite differences: {rel(g_in, numerical_vjp(killer, x5, g5)):.1e}")
assert abs(eig.real.min() + 1) < 1e-8
assert np.linalg.norm(along_v(g_in)) < 1e-12 * np.linalg.norm(along_v(g5))
assert rel(g_in, numerical_vjp(killer, x5, g5)) < 1e-8

# %% [markdown]
# So "the gradient is 1 + something, so it cannot vanish" is false as
# stated. What the identity does guarantee is the **direct term** of §5.3:
# $\partial L/\partial x_L$ arrives at every earlier block unchanged,
# *added* to whatever the branches contribute, and §5.6 measures why, in
# real nets, the branches' contribution does not cancel it.
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
# the block outputs), and check the formula without running any backward
# through $S$: $x_l$ has 16,384 entries, too many for a full Jacobian, so we
# compare both sides along random directions $v$. The formula's side is
# $\langle g_L, v\rangle + \langle J_S^\top g_L, v\rangle$, the second term
# from two forward passes of $S$ (`numerical_directional`):

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


print(f"{'v':>3s} {'<dL/dx_l, v>':>14s} {'<g_L, v> + <J_S^T g_L, v>':>26s}", end=" ")
print(f"{'diff / |dL/dx_l|':>17s}")
for k in range(3):
    v_dir = rng.standard_normal(g_l.shape)
    v_dir /= np.linalg.norm(v_dir)  # a unit vector: the difference is at most |dL/dx_l|
    autograd_side = np.vdot(g_l, v_dir)
    formula_side = np.vdot(g_L, v_dir) + numerical_directional(S, outs[0].data, g_L, v_dir)
    diff = abs(autograd_side - formula_side) / np.linalg.norm(g_l)
    print(f"{k:3d} {autograd_side:14.6e} {formula_side:26.6e} {diff:17.1e}")
    assert diff < 1e-7
print(f"|dL/dx_L| = {np.linalg.norm(g_L):.3g}  |dL/dx_l| = {np.linalg.norm(g_l):.3g}")

# %% [markdown]
# ### Exercise 5.A: the formula, block by block
#
# Backpropagate through a stack of pre-activation blocks (identity
# shortcuts) **with the formula only**: write `stack_input_grad(blocks, x,
# g)`, the gradient of $L = \langle g, x_L\rangle$ with respect to $x$,
# where $x_L$ is `blocks` applied in order to `x`. Run the stack forward
# once, keeping each block's input $x_i$ (under `mr.no_grad()`); then, from
# the last block down, $g \leftarrow g + J_{F_i}^\top g$, where
# $J_{F_i}^\top g$ is one backward pass through the branch $F_i$ alone
# (`branch` of §5.0, on a fresh leaf `mr.tensor(x_i, requires_grad=True)`).
# Never call backward through a whole block. The next cell checks the result
# against autograd through the stack and against finite differences. (The
# solution is in `solutions/05_residual_gradient.py`.)


# %%
# EXERCISE 5.A: replace the body of this function.
def stack_input_grad(blocks, x, g):
    """dL/dx for L = <g, x_L>, by g <- g + J_F^T g from the last block down."""
    raise NotImplementedError("stack_input_grad is still a stub")


# %%
from solutions import exercise, fill_in  # tutorials/solutions/: the checks' helpers

fill_in("05_residual_gradient", globals())  # only with MINIRES_SOLUTIONS=1
with exercise("5.A"):
    rng_ex = np.random.default_rng(51)  # its own generator: the cells below draw the same
    stack3 = [randomize_bn(PreActBlock(3, 3).to(np.float64)) for _ in range(3)]
    x3, g3 = rng_ex.standard_normal((2, 3, 4, 4)), rng_ex.standard_normal((2, 3, 4, 4))

    def run3(t):
        return stack3[2](stack3[1](stack3[0](t)))

    mine = stack_input_grad(stack3, x3, g3)
    assert isinstance(mine, np.ndarray) and mine.shape == x3.shape, "return an array shaped like x"
    err_autograd = rel(mine, autograd_grad(run3, x3, g3))
    err_fd = rel(mine, numerical_vjp(run3, x3, g3))
    print(f"vs autograd through the stack: {err_autograd:.1e}; vs finite differences: {err_fd:.1e}")
    assert err_autograd < 1e-10 and err_fd < 1e-7

# %% [markdown]
# ## 5.4 Gradient norms through deep nets: plain, residual, and the shortcut cut
#
# Now the consequence. For CIFAR nets of depth 20, 56 and 110 at
# initialisation, with BN in training mode on a batch of random images and
# random labels, we record $\lVert \partial L/\partial x_l \rVert$ at the
# input of every block ($l = 0$ is the stem's output, the last is the final
# block's output), for three nets with the same weights where they share
# layers:
#
# * **plain**: `residual=False`, the blocks without shortcuts;
# * **residual**: option A shortcuts, as built;
# * **shortcut cut**: the residual net with every shortcut's *gradient*
#   cut. Its forward pass is the residual net's, bit for bit (the shortcut
#   reads `x.detach()`, the same values); in backward, gradient reaches a
#   block's input only through its branch. This isolates the "1" of
#   $I + J_F$: whatever is left is what the branches carry.


# %% tags=["figure-05-gradient-norms"]
class CutGradient(mr.nn.Module):
    """A shortcut whose forward is unchanged and whose backward carries nothing."""

    def __init__(self, shortcut):
        super().__init__()
        self.inner = shortcut

    def forward(self, x):
        return self.inner(x.detach())  # same values; no edge back to x in the graph


def make_net(depth, kind):
    mr.manual_seed(depth)  # the same weights for the three kinds
    model = mr.models.cifar_resnet(depth, residual=kind != "plain")
    if kind == "cut":
        for block in model.blocks():
            block.shortcut = CutGradient(block.shortcut)
    return model


depths = [20, 56, 110]
kinds = ["plain", "residual", "cut"]
n_img, size = (4, 16) if QUICK else (16, 32)
imgs = mr.tensor(rng.standard_normal((n_img, 3, size, size)).astype(np.float32))
lab = rng.integers(0, 10, n_img)


def block_grads(model):
    """Every block input x_l (arrays) and dL/dx_l, from one forward and backward."""
    logits, outs = model(imgs, return_block_outputs=True)
    for o in outs:
        o.retain_grad()
    F.cross_entropy(logits, lab).backward()
    return [o.data for o in outs], [o.grad for o in outs]


acts, grads, norms = {}, {}, {}
for depth in depths:
    for kind in kinds:
        acts[depth, kind], grads[depth, kind] = block_grads(make_net(depth, kind))
        norms[depth, kind] = np.array([np.linalg.norm(gr) for gr in grads[depth, kind]])
    same_forward = all(
        np.array_equal(a, b) for a, b in zip(acts[depth, "residual"], acts[depth, "cut"])
    )
    assert same_forward  # cutting the gradient changed nothing in the forward pass

fig, axes = plt.subplots(1, len(depths), figsize=(4.2 * len(depths), 3.4), sharey=True)
for ax, depth in zip(axes, depths):
    for kind, style in zip(kinds, ("o-", "s-", "^-")):
        ax.semilogy(norms[depth, kind], style, ms=3, label=kind)
    ax.set_title(f"depth {depth}")
    ax.set_xlabel("block l (0 = stem output)")
axes[0].set_ylabel("||dL/dx_l||")
axes[0].legend(title="net")
plt.tight_layout()
plt.show()

print(f"{'depth':>5s} {'':>8s} {'|dL/dx_0|':>10s} {'|dL/dx_L|':>10s} {'max/min over l':>15s}")
for depth in depths:
    for kind in kinds:
        n = norms[depth, kind]
        print(f"{depth:5d} {kind:>8s} {n[0]:10.3g} {n[-1]:10.3g} {n.max() / n.min():15.3g}")

spread = {key: np.log10(n.max() / n.min()) for key, n in norms.items()}
for depth in depths:
    assert spread[depth, "plain"] > spread[depth, "residual"]  # plain always varies more
    assert norms[depth, "cut"][0] < norms[depth, "residual"][0] / 5  # the cut loses the gradient
    assert 1 < norms[depth, "residual"][0] / norms[depth, "residual"][-1] < 1e3
for depth in depths[1:]:
    assert spread[depth, "plain"] - spread[depth, "residual"] > 2  # by orders of magnitude
    assert norms[depth, "plain"][0] / norms[depth, "plain"][-1] > 1e3  # plain: explodes
    assert norms[depth, "cut"][0] / norms[depth, "cut"][-1] < 1e-3  # cut: vanishes
assert norms[110, "cut"][0] / norms[110, "cut"][-1] < 1e-12

# %% [markdown]
# Read the plot from right (the loss) to left (the input). Three different
# behaviours from the same layers:
#
# * **plain**: the gradient norm grows by a roughly constant factor per
#   block, so it *explodes* toward the input: in full mode
#   $\lVert\partial L/\partial x_0\rVert$ is about $3 \times 10^{6}$ at
#   depth 110 against $0.02$ at the last block, a spread of about $10^{8}$
#   ($10^{4}$ at depth 56, 25 at depth 20);
# * **residual**: it grows slowly, about 80× over the 54 blocks of
#   ResNet-110 (about 30× at 56, 9× at 20);
# * **shortcut cut**: with the same forward pass, the gradient at the input
#   of ResNet-110 is about $3 \times 10^{-20}$: the branches alone carry
#   essentially nothing to the early blocks. At depth 56 it is $2 \times
#   10^{-6}$ of the last block's.
#
# So in the residual net, virtually all of the gradient at the first blocks
# arrives along paths that use the shortcuts. (The exact figures are the
# table's; the ones above are what full mode prints.)
#
# ## 5.5 "The shortcut prevents explosion because it restricts the propagation path"?
#
# That is a common explanation of why residual nets train, and it suggests a
# picture: the branches would explode like a plain net, and the shortcut
# lets the gradient go *around* them. §5.4 already tests it, and the picture
# is wrong on both counts:
#
# 1. The shortcut does not restrict any path: it **adds** one per block
#    ($2^{54}$ paths through ResNet-110's 54 blocks instead of one), and
#    autograd sums the gradient over all of them (the fork of tutorial 4).
# 2. The branch paths of the residual net do not explode. The cut net runs
#    the gradient through *only* the branches, and it **vanishes**
#    ($10^{-20}$), while the plain net, whose blocks are the same
#    conv-BN-ReLU-conv-BN, explodes ($3 \times 10^{6}$). The same kind of
#    layers amplify the gradient in one net and attenuate it in the other.
#
# What does happen, with BatchNorm in training mode, is measured below.
# In a plain net every block multiplies the gradient by about the same
# factor, above 1: deep BN nets in training mode have exploding gradients at
# initialisation (Yang et al., *A Mean Field Theory of Batch Normalization*,
# 2019, derive the rate; for ReLU and large batches, a factor of about
# $\pi/(\pi-1) \approx 1.47$ in squared norm per conv-BN-ReLU layer). BN
# keeps the *activations* at a fixed scale, not the gradients. In a residual
# net the activations are *not* at a fixed scale: $x_l$ grows with $l$,
# and that is what tames the branches. Per block of each net at depth 110:


# %%
def branch_gains(depth, kind):
    """Per block: Var(x_l), and r_l = |J_F^T u| / |u| with u = D g_{l+1} (the
    gradient the block's last ReLU lets through into the branch), cos(u, J_F^T u)."""
    model = make_net(depth, kind)
    xs, gs = acts[depth, kind], grads[depth, kind]
    rows = []
    for i, block in enumerate(model.blocks()):
        leaf = mr.tensor(xs[i].copy(), requires_grad=True)
        f = branch(block, leaf)
        s = f.data if block.shortcut is None else f.data + block.shortcut(mr.tensor(xs[i])).data
        u = gs[i + 1] * (s > 0)  # D g: the block's output is relu(s)
        f.backward(u)
        jtu = leaf.grad
        gain = np.linalg.norm(jtu) / np.linalg.norm(u)
        cos = np.nan  # only where the shortcut is the identity, so that u and J_F^T u align
        if u.shape == jtu.shape:
            cos = np.vdot(u, jtu) / (np.linalg.norm(u) * np.linalg.norm(jtu))
        rows.append((xs[i].var(), gain, cos))
    return np.array(rows).T


gains = {kind: branch_gains(110, kind) for kind in ("plain", "residual")}
step = norms[110, "plain"][:-1] / norms[110, "plain"][1:]  # |g_l| / |g_{l+1}| per plain block
factor = np.exp(np.log(step).mean())

fig, axes = plt.subplots(1, 3, figsize=(13, 3.3))
for kind, style in (("plain", "o-"), ("residual", "s-")):
    var, r, _ = gains[kind]
    axes[0].plot(var, style, ms=3, label=kind)
    axes[1].semilogy(r, style, ms=3, label=kind)
    axes[2].plot(r * np.sqrt(var), style, ms=3, label=kind)
axes[0].set_title("Var(x_l): the block's input")
axes[1].set_title("r_l = |J_F^T u| / |u|: the branch's gain")
axes[2].set_title("r_l * std(x_l)")
axes[1].axhline(1, color="gray", lw=0.8, ls=":")
axes[2].set_ylim(0, 2.2)  # a constant, where r_l itself varies sevenfold
for ax in axes:
    ax.set_xlabel("block l")
axes[0].legend()
plt.tight_layout()
plt.show()

var_p, r_p, _ = gains["plain"]
var_r, r_r, cos_r = gains["residual"]
scale_p, scale_r = r_p * np.sqrt(var_p), r_r * np.sqrt(var_r)
print(
    f"plain   : |g_l|/|g_l+1| per block, geometric mean {factor:.3f}; branch gain r_l median "
    f"{np.median(r_p):.2f}; Var(x_l) from {var_p.min():.2f} to {var_p.max():.2f}"
)
print(
    f"residual: branch gain r_l from {r_r[0]:.2f} (block 0) to {r_r[-1]:.2f} (last); "
    f"Var(x_l) from {var_r[0]:.2f} to {var_r[-1]:.2f}"
)
print(f"r_l * std(x_l): plain median {np.median(scale_p):.2f}, "
      f"residual median {np.median(scale_r):.2f}")  # fmt: skip
print(f"residual: mean |cos(u, J_F^T u)| = {np.nanmean(np.abs(cos_r)):.3f}")
assert 1.2 < factor < 1.7  # plain: a constant factor per block, above 1
assert var_p.max() / var_p.min() < 2 and var_r[-1] / var_r[0] > 10
assert np.median(r_p) > 1.5 and (r_r[len(r_r) // 3 :] < 1).all()
assert abs(np.median(scale_r) / np.median(scale_p) - 1) < 0.2  # the same constant in both nets
assert np.nanmean(np.abs(cos_r)) < 0.1

# %% [markdown]
# ## 5.6 The mechanism, measured
#
# The three panels tell the story.
#
# * **Var($x_l$)**. In the plain net every block ends in BN → ReLU, so its
#   input has about the same variance everywhere (0.33 to 0.43). In the
#   residual net each block *adds* a BN-normalised $F$ (variance about 1 per
#   channel, before the ReLU) to $x_l$, so the variance grows roughly
#   linearly along each stage (from 0.34 to 12.6 at depth 110; it dips where
#   option A's zero channels dilute it).
# * **$r_l = \lVert J_F^\top u\rVert / \lVert u\rVert$**, the branch's gain
#   for the gradient $u$ it receives. Plain: about 2 in every block; the
#   ReLU at the block's end passes about $1/\sqrt2$ of the gradient's norm,
#   so each block multiplies it by about 1.4 (the geometric mean printed
#   above), and 54 blocks by $1.4^{54} \approx 10^{8}$. Residual: 2 at the
#   first block, then falling (0.32 at the last).
# * **$r_l \cdot \mathrm{std}(x_l)$** is the same constant (about 1.2) in
#   both nets. That is exact arithmetic, not a coincidence: the branch starts
#   with conv → BN, and BN in training mode divides by its input's standard
#   deviation, so $F(\alpha x) = F(x)$ for any $\alpha > 0$ and therefore
#   $J_F(\alpha x) = J_F(x)/\alpha$. A branch reading a large $x_l$ has a
#   small Jacobian. The next cell checks the identity on one block.
#
# So the residual net's gradient obeys $g_l = u + J_F^\top u$ with
# $\lVert J_F^\top u\rVert = r_l \lVert u\rVert$, $r_l^2 \propto 1/l$, and
# $J_F^\top u$ nearly orthogonal to $u$ (mean $|\cos|$ printed above), so
# $\lVert g_l\rVert^2 \approx \lVert u\rVert^2 (1 + r_l^2)$: the norms add
# in quadrature, and $\prod_l (1 + c/l)$ grows like a power of the depth,
# not exponentially. Cut the shortcut and only $J_F^\top u$ is left, a
# product of gains $r_l < 1$ that shrink as $x_l$ grows: $10^{-20}$.

# %%
blk = randomize_bn(CifarBasicBlock(4, 4).to(np.float64))
xb = rng.standard_normal((4, 4, 6, 6))
gb = rng.standard_normal(xb.shape)
alpha = 5.0
with mr.no_grad():
    f1, f_alpha = branch(blk, mr.tensor(xb)).data, branch(blk, mr.tensor(alpha * xb)).data
jt1 = autograd_grad(lambda t: branch(blk, t), xb, gb)
jt_alpha = autograd_grad(lambda t: branch(blk, t), alpha * xb, gb)
print(f"|F(5x) - F(x)| / |F(x)| = {rel(f_alpha, f1):.1e}   (BN's eps = 1e-5 keeps it from 0)")
print(f"|J_F(5x)^T g - J_F(x)^T g / 5| / |.| = {rel(jt_alpha, jt1 / alpha):.1e}")
assert rel(f_alpha, f1) < 1e-4 and rel(jt_alpha, jt1 / alpha) < 1e-4

# %% [markdown]
# ## Summary
#
# * One block: $\nabla_x L = g + J_F^\top g$. Autograd, the formula with
#   $J_F$ from finite differences of the branch, and finite differences of
#   the block agree to finite differences' precision (about $10^{-9}$);
#   drop the $I$ and they disagree completely.
# * The "1" is $I$, and $J_F$ is a dense matrix; $I + J_F$ has directions it
#   shrinks (singular values down to 0.29 for the block of §5.1), and a
#   block whose $J_F$ has the eigenvalue $-1$ erases the gradient along it.
# * $x_L = x_l + \sum F(x_i)$ holds to rounding for pre-activation blocks and
#   fails by a large fraction of $x_L$ with the original block's ReLU after
#   the add; the gradient form holds along every direction we test.
# * With BN in training mode, plain nets' gradients explode toward the input
#   (about 1.4× per block); residual nets' grow about 80× over 110 layers;
#   cut the shortcuts' gradient and it vanishes ($10^{-20}$ at depth 110).
# * Why: $x_l$'s variance grows along a residual net, BN makes the branch
#   scale-invariant, so its gain falls as $1/\mathrm{std}(x_l)$, and its
#   contribution adds to the shortcut's in quadrature.
#
# **Exercise.** Set every block's last BN weight to 0 in a pre-activation
# net (`block.bn2.weight.data[...] = 0`): what is $J_F$ now, and what do the
# gradient norms of §5.4 look like? (The idea behind `zero_init_residual`.)
#
# Previous: [04_residual_block](04_residual_block.ipynb) ·
# Next: [06_degradation](06_degradation.ipynb), what this means for training.
