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
# # 3. BatchNorm and ReLU, forward and backward
#
# **Claim.** BatchNorm's backward, derived step by step from its
# computational graph, collapses to three lines:
#
# $$ \partial\beta = \textstyle\sum_m g_m, \qquad
#    \partial\gamma = \textstyle\sum_m g_m \hat x_m, \qquad
#    \partial x = \frac{\gamma}{\sqrt{\sigma^2+\varepsilon}}
#    \Big(g - \frac{\partial\beta}{M} - \hat x\,\frac{\partial\gamma}{M}\Big) $$
#
# (per channel, over its $M = N H W$ values), which is what
# `numpy_backend.batch_norm_backward` computes. A gradient check of BatchNorm
# must use a **random** upstream gradient: with the usual `sum()` loss the true
# gradient is exactly zero, so a backward that returns zeros passes. And a
# check with $\gamma = 1$ cannot see a backward that forgets $\gamma$.
#
# The full derivation in prose is in docs/derivations.md; here every step is a
# number.
#
# *Runtime* (measured on a shared 2-core CPU): 2 to 4 s in full mode and
# in quick mode.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import minires as mr
import minires.functional as F
from minires.backends import numpy_backend as B
from minires.gradcheck import numerical_vjp

QUICK = os.environ.get("MINIRES_QUICK") == "1"
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 3.1 Forward
#
# For each channel $c$, over the $M = N \cdot H \cdot W$ values of that
# channel in the batch:
#
# $$\mu = \frac1M\sum_m x_m,\quad \sigma^2 = \frac1M\sum_m (x_m-\mu)^2,\quad
# \hat x_m = \frac{x_m-\mu}{\sqrt{\sigma^2+\varepsilon}},\quad
# y_m = \gamma\hat x_m + \beta .$$
#
# The input below is deliberately *not* centred (channel means 3, −1, 0.5;
# standard deviations 2, 0.5, 4), so that the mean terms of the gradient are
# not accidentally zero.

# %%
N, C, H, W = 4, 3, 5, 5
M = N * H * W
x_np = (
    rng.standard_normal((N, C, H, W)) * np.array([2, 0.5, 4])[:, None, None]
    + np.array([3, -1, 0.5])[:, None, None]
)
gamma_np = np.array([1.5, -0.7, 0.3])
beta_np = np.array([0.2, 1.0, -2.0])

y0 = F.batch_norm(mr.tensor(x_np), None, None, training=True)  # gamma = 1, beta = 0
y1 = F.batch_norm(
    mr.tensor(x_np), None, None, mr.tensor(gamma_np), mr.tensor(beta_np), training=True
)
print("input  mean/std per channel:", x_np.mean(axis=(0, 2, 3)), x_np.std(axis=(0, 2, 3)))
print("xhat   mean/std per channel:", y0.data.mean(axis=(0, 2, 3)), y0.data.std(axis=(0, 2, 3)))
print("y      mean/std per channel:", y1.data.mean(axis=(0, 2, 3)), y1.data.std(axis=(0, 2, 3)))
assert np.allclose(y0.data.mean(axis=(0, 2, 3)), 0, atol=1e-12)
assert np.allclose(y0.data.std(axis=(0, 2, 3)), 1, atol=1e-4)  # not exactly 1: eps = 1e-5
assert np.allclose(y1.data.mean(axis=(0, 2, 3)), beta_np)
assert np.allclose(y1.data.std(axis=(0, 2, 3)), np.abs(gamma_np), atol=1e-4)

# %% [markdown]
# ## 3.2 Backward, one node at a time
#
# Write the forward as a chain of elementary nodes (per channel):
#
# 1. $\mu = \frac1M\sum x$.
#    Backward: $\partial x \mathrel{+}= \frac1M \partial\mu$.
# 2. $x_c = x - \mu$.
#    Backward: $\partial x \mathrel{+}= \partial x_c$, $\ \partial\mu = -\sum \partial x_c$.
# 3. $v = \frac1M \sum x_c^2$.
#    Backward: $\partial x_c \mathrel{+}= \frac{2}{M} x_c\, \partial v$.
# 4. $s = (v+\varepsilon)^{-1/2}$.
#    Backward: $\partial v = -\tfrac12 (v+\varepsilon)^{-3/2}\,\partial s
#    = -\tfrac12 s^3\, \partial s$.
# 5. $\hat x = x_c\, s$.
#    Backward: $\partial x_c \mathrel{+}= s\,\partial\hat x$,
#    $\ \partial s = \sum x_c\, \partial \hat x$.
# 6. $y = \gamma \hat x + \beta$.
#    Backward: $\partial\hat x = \gamma g$, $\ \partial\gamma = \sum g \hat x$,
#    $\ \partial \beta = \sum g$.
#
# $x_c$ is used twice (nodes 3 and 5) and $x$ twice (nodes 1 and 2): the same
# diamonds as in notebook 1, so their gradients are sums. Backward runs the
# list from 6 up to 1.
#
# First, let minires's autograd do it: build BatchNorm out of elementary
# Tensor ops, keep every intermediate's gradient (`retain_grad`), and
# backpropagate a random upstream $g$.

# %%
eps = 1e-5
g_np = rng.standard_normal((N, C, H, W))
axes = (0, 2, 3)  # everything except the channel

x = mr.tensor(x_np, requires_grad=True)
gamma = mr.tensor(gamma_np.reshape(1, C, 1, 1), requires_grad=True)
beta = mr.tensor(beta_np.reshape(1, C, 1, 1), requires_grad=True)
mu = x.mean(dim=axes, keepdim=True)  # node 1
xc = x - mu  # node 2
v = (xc * xc).mean(dim=axes, keepdim=True)  # node 3
s = (v + eps) ** -0.5  # node 4
xhat = xc * s  # node 5
y = gamma * xhat + beta  # node 6
for t in (mu, xc, v, s, xhat):
    t.retain_grad()
y.backward(g_np)
auto = {
    "dxhat": xhat.grad, "ds": s.grad, "dv": v.grad, "dxc": xc.grad, "dmu": mu.grad,
    "dx": x.grad, "dgamma": gamma.grad, "dbeta": beta.grad,
}  # fmt: skip

# %% [markdown]
# Now the same numbers by hand, from node 6 down to node 1, in plain NumPy.
# Each line is one backward rule of the list.

# %%
mu_ = x_np.mean(axis=axes, keepdims=True)
xc_ = x_np - mu_
v_ = (xc_**2).mean(axis=axes, keepdims=True)
s_ = (v_ + eps) ** -0.5
xhat_ = xc_ * s_
G, Gm = gamma_np.reshape(1, C, 1, 1), g_np
hand = {}
hand["dbeta"] = Gm.sum(axis=axes, keepdims=True)  # node 6
hand["dgamma"] = (Gm * xhat_).sum(axis=axes, keepdims=True)  # node 6
hand["dxhat"] = G * Gm  # node 6
hand["ds"] = (xc_ * hand["dxhat"]).sum(axis=axes, keepdims=True)  # node 5
dxc_from_5 = s_ * hand["dxhat"]  # node 5
hand["dv"] = -0.5 * s_**3 * hand["ds"]  # node 4
dxc_from_3 = 2.0 / M * xc_ * hand["dv"]  # node 3
hand["dxc"] = dxc_from_5 + dxc_from_3  # x_c was used twice
hand["dmu"] = -hand["dxc"].sum(axis=axes, keepdims=True)  # node 2
hand["dx"] = hand["dxc"] + hand["dmu"] / M  # nodes 2 and 1: x was used twice

print(f"{'gradient':8s} {'shape':>14s}  max |by hand - autograd|")
for k in ["dxhat", "ds", "dv", "dxc", "dmu", "dx", "dgamma", "dbeta"]:
    err = np.abs(hand[k] - auto[k]).max()
    print(f"{k:8s} {str(hand[k].shape):>14s}  {err:.1e}")
    assert np.allclose(hand[k], auto[k], rtol=1e-10, atol=1e-12), k

# %% [markdown]
# One of these deserves a look. The variance path sends **nothing** to
# $\mu$: its share of $\partial x_c$ is $\frac2M x_c \partial v$, and
# $\sum_m x_{c,m} = 0$ by construction, so $\partial\mu = -\sum s\,\partial
# \hat x = -s\gamma\sum g$. Substituting every rule into the next gives the
# compact formula of the claim:
#
# $$\partial x = s\gamma g - \frac{s\gamma}{M}\textstyle\sum g
#   - \frac{s\gamma}{M}\hat x \textstyle\sum g\hat x $$
#
# which is what minires's backend computes, in channel-major (C, M) layout,
# and what `F.batch_norm` returns through autograd:

# %%
x2 = np.ascontiguousarray(x_np.transpose(1, 0, 2, 3)).reshape(C, M)  # (C, M)
g2 = np.ascontiguousarray(g_np.transpose(1, 0, 2, 3)).reshape(C, M)
y2, xhat2, inv_std = B.batch_norm_forward(x2, gamma_np, beta_np, eps, None, None, 0.1)
gx2, ggamma2, gbeta2 = B.batch_norm_backward(g2, xhat2, gamma_np, inv_std)
gx_compact = gx2.reshape(C, N, H, W).transpose(1, 0, 2, 3)

xt = mr.tensor(x_np, requires_grad=True)
gt, bt = mr.tensor(gamma_np, requires_grad=True), mr.tensor(beta_np, requires_grad=True)
F.batch_norm(xt, None, None, gt, bt, training=True, eps=eps).backward(g_np)

print("variance path's share of d mu:", -dxc_from_3.sum(axis=axes).ravel())
print(
    "d mu vs -s*gamma*sum(g)     :",
    hand["dmu"].ravel(),
    (-s_ * G * g_np.sum(axis=axes, keepdims=True)).ravel(),
)
print("max |compact - step by step| dx:", np.abs(gx_compact - hand["dx"]).max())
print("max |F.batch_norm - step by step| dx:", np.abs(xt.grad - hand["dx"]).max())
assert np.abs(dxc_from_3.sum(axis=axes)).max() < 1e-12
assert np.allclose(hand["dmu"], -s_ * G * g_np.sum(axis=axes, keepdims=True), rtol=1e-12)
assert np.allclose(gx_compact, hand["dx"], rtol=1e-10, atol=1e-12)
assert np.allclose(ggamma2, hand["dgamma"].ravel()) and np.allclose(gbeta2, hand["dbeta"].ravel())
assert np.allclose(xt.grad, hand["dx"], rtol=1e-10, atol=1e-12)
assert np.allclose(gt.grad, hand["dgamma"].ravel()) and np.allclose(bt.grad, hand["dbeta"].ravel())

# %% [markdown]
# ### Exercise 3.A: BatchNorm's backward
#
# Write `bn_backward(gy, xhat, gamma, inv_std)`: the compact formula above,
# in the backend's channel-major layout. `gy` and `xhat` are (C, M), one
# row per channel; `gamma` and `inv_std` $= 1/\sqrt{\sigma^2+\varepsilon}$
# are (C,). Return `(dx, dgamma, dbeta)`, shaped (C, M), (C,), (C,). The
# next cell compares them with minires's `B.batch_norm_backward` and, through
# a `Function` whose forward is the backend's and whose backward is yours,
# with finite differences (`mr.gradcheck`, random $\gamma$, an input that is
# not centred). (The solution is in `solutions/03_batchnorm_relu.py`.)


# %%
# EXERCISE 3.A: replace the body of this function.
def bn_backward(gy, xhat, gamma, inv_std):
    """(dx, dgamma, dbeta) of y = gamma * xhat + beta, xhat = (x - mean) * inv_std, per row."""
    raise NotImplementedError("bn_backward is still a stub")


# %%
from solutions import exercise, fill_in  # tutorials/solutions/: the checks' helpers

fill_in("03_batchnorm_relu", globals())  # only with MINIRES_SOLUTIONS=1


class YourBN(mr.Function):
    """BatchNorm (training mode) on (C, M) rows: minires's forward, your backward."""

    def forward(self, x2, gamma, beta):
        y, self.xhat, self.inv_std = B.batch_norm_forward(x2, gamma, beta, eps, None, None, 0.1)
        self.gamma = gamma
        return y

    def backward(self, gy):
        return bn_backward(gy, self.xhat, self.gamma, self.inv_std)


with exercise("3.A"):
    mine = bn_backward(g2, xhat2, gamma_np, inv_std)
    ref = B.batch_norm_backward(g2, xhat2, gamma_np, inv_std)
    for name, a, r in zip(("dx", "dgamma", "dbeta"), mine, ref):
        print(f"{name:6s}: max |yours - minires| = {np.abs(a - r).max():.1e}")
        assert a.shape == r.shape and np.allclose(a, r, rtol=1e-10, atol=1e-12), name
    ex_x = np.random.default_rng(31).standard_normal((3, 10)) * 2 + 1  # (C, M), not centred
    ex_params = [ex_x, np.array([1.5, -0.7, 0.3]), np.array([0.2, 1.0, -2.0])]
    ok = mr.gradcheck(
        lambda *a: YourBN()(*a), [mr.tensor(a, requires_grad=True) for a in ex_params]
    )
    print("gradcheck of your backward (random gamma, random upstream):", ok)

# %% [markdown]
# ## 3.3 Training mode and evaluation mode
#
# In training, each value is normalised with the statistics **of its batch**,
# so one image's output depends on the other images in the batch, and the
# running statistics are updated in place:
# $r \leftarrow (1 - m)\, r + m \cdot \text{batch statistic}$, with momentum
# $m = 0.1$ and, as PyTorch does, the *unbiased* variance
# $\frac{M}{M-1}\sigma^2$ for the running variance.
#
# In evaluation, the running statistics replace the batch's: $y$ is a fixed
# affine map of $x$, the same for an image whatever else is in the batch.

# %%
bn = mr.nn.BatchNorm2d(C).to(np.float64)
bn.train()
out_a = bn(mr.tensor(x_np)).data[0]
print(
    "running_mean after one batch:",
    bn.running_mean,
    "= 0.1 * batch mean",
    0.1 * x_np.mean(axis=axes),
)
assert np.allclose(bn.running_mean, 0.1 * x_np.mean(axis=axes))
assert np.allclose(bn.running_var, 0.9 + 0.1 * x_np.var(axis=axes) * M / (M - 1))

other = x_np.copy()
other[1:] = rng.standard_normal(other[1:].shape)  # same image 0, different companions
out_b = bn(mr.tensor(other)).data[0]
print("train: image 0's output changes with its batch-mates:", np.abs(out_a - out_b).max())
assert np.abs(out_a - out_b).max() > 0.1

bn.eval()
e_a, e_b = bn(mr.tensor(x_np)).data[0], bn(mr.tensor(other)).data[0]
print("eval : image 0's output with either batch:", np.abs(e_a - e_b).max())
assert np.array_equal(e_a, e_b)

# %% [markdown]
# Over many batches from one distribution the running statistics converge to
# that distribution's mean and variance (here: per-channel means 3, −1, 0.5
# and variances 4, 0.25, 16):

# %% tags=["figure-03-batchnorm-training"]
true_mean, true_std = np.array([3.0, -1.0, 0.5]), np.array([2.0, 0.5, 4.0])
bn = mr.nn.BatchNorm2d(C).to(np.float64).train()
history = []
for _ in range(60):
    batch = rng.standard_normal((8, C, 4, 4)) * true_std[:, None, None] + true_mean[:, None, None]
    bn(mr.tensor(batch))
    history.append(bn.running_mean.copy())
history = np.array(history)
fig, ax = plt.subplots(figsize=(6, 3))
for c in range(C):
    ax.plot(history[:, c], label=f"channel {c}")
    ax.axhline(true_mean[c], color=f"C{c}", ls=":")
ax.set_xlabel("training batches")
ax.set_ylabel("running_mean")
ax.legend()
plt.tight_layout()
plt.show()
print("running_mean:", bn.running_mean, " running_var:", bn.running_var)
assert np.allclose(bn.running_mean, true_mean, atol=0.3)
assert np.allclose(bn.running_var, true_std**2, rtol=0.3)

# %% [markdown]
# In evaluation the backward is just the affine map's:
# $\partial x = \gamma\, g / \sqrt{r_{var} + \varepsilon}$, with no mean
# terms, because the statistics are constants now. Both modes pass a
# gradient check (float64, random upstream, every entry):

# %%
xg = mr.tensor(x_np[:2, :, :3, :3].copy(), requires_grad=True)
gg, bg = mr.tensor(gamma_np, requires_grad=True), mr.tensor(beta_np, requires_grad=True)
rm, rv = np.array([0.5, -0.2, 1.0]), np.array([2.0, 0.3, 5.0])
ok_train = mr.gradcheck(
    lambda a, w, b: F.batch_norm(a, None, None, w, b, training=True), [xg, gg, bg]
)
ok_eval = mr.gradcheck(lambda a, w, b: F.batch_norm(a, rm, rv, w, b, training=False), [xg, gg, bg])
print("gradcheck train:", ok_train, " eval:", ok_eval)
assert ok_train and ok_eval

# %% [markdown]
# ## 3.4 Why the check needs a random upstream gradient
#
# Take the loss $L = \sum y$. Per channel, $\sum_m y_m = \gamma \sum_m \hat
# x_m + M\beta = M\beta$, because $\hat x$ has mean zero *by construction*.
# So $L$ does not depend on $x$ at all, and $\partial L/\partial x = 0$:

# %%
xs = mr.tensor(x_np, requires_grad=True)
F.batch_norm(
    xs, None, None, mr.tensor(gamma_np), mr.tensor(beta_np), training=True
).sum().backward()
print("max |d sum(BN(x)) / dx| =", np.abs(xs.grad).max())
assert np.abs(xs.grad).max() < 1e-12

# %% [markdown]
# A gradient check that backpropagates `sum()` therefore compares zero with
# zero, and any backward that returns zeros passes it. Below are two broken
# BatchNorms, written as a reader would write a new op (a subclass of
# `mr.Function` calling the backend), each with a classic bug:
#
# * `ZeroGradBN` returns a zero gradient for $x$ (or anything that sums to
#   zero per channel; DeZero's test of its BatchNorm was vacuous this way);
# * `ForgotGammaBN` leaves $\gamma$ out of $\partial x$ (Knet.jl#288: its tests
#   used $\gamma = 1$, where the bug is invisible).


# %%
class ZeroGradBN(mr.Function):
    def forward(self, x2, gamma, beta):  # x2: (C, M)
        y, self.xhat, self.inv_std = B.batch_norm_forward(x2, gamma, beta, 1e-5, None, None, 0.1)
        self.gamma = gamma
        return y

    def backward(self, gy):
        gx, ggamma, gbeta = B.batch_norm_backward(gy, self.xhat, self.gamma, self.inv_std)
        return np.zeros_like(gx), ggamma, gbeta  # bug: no gradient for x


class ForgotGammaBN(ZeroGradBN):
    def backward(self, gy):
        ones = np.ones_like(self.gamma)
        gx, ggamma, gbeta = B.batch_norm_backward(gy, self.xhat, ones, self.inv_std)
        return gx, ggamma, gbeta  # bug: gamma left out of gx


def sum_check(op, x2, gamma, beta):
    """The vacuous check: d sum(op(x)) / dx by autograd vs central differences
    (``numerical_vjp`` with an upstream of ones is d sum(op(x)) / dx)."""
    xt = mr.tensor(x2.copy(), requires_grad=True)
    op()(xt, mr.tensor(gamma), mr.tensor(beta)).sum().backward()
    fn = lambda t: op()(t, mr.tensor(gamma), mr.tensor(beta))  # noqa: E731
    numeric = numerical_vjp(fn, x2, np.ones_like(x2))
    return np.allclose(xt.grad, numeric, atol=1e-5, rtol=1e-3)


def random_check(op, x2, gamma, beta):
    """minires.gradcheck: random upstream, every entry of x, gamma and beta."""
    ts = [mr.tensor(a.copy(), requires_grad=True) for a in (x2, gamma, beta)]
    return mr.gradcheck(lambda *a: op()(*a), ts, raise_exception=False)


small = rng.standard_normal((3, 6)) * 2 + 1  # (C, M), not centred
gamma_rand, gamma_one, beta_rand = np.array([1.5, -0.7, 0.3]), np.ones(3), np.array([0.2, 1, -2.0])
print(f"{'backward':14s} {'gamma':7s} {'sum() check':>12s} {'random upstream':>16s}")
results = {}
for op in (ZeroGradBN, ForgotGammaBN):
    for gname, gam in (("1", gamma_one), ("random", gamma_rand)):
        s_ok, r_ok = sum_check(op, small, gam, beta_rand), random_check(op, small, gam, beta_rand)
        results[op.__name__, gname] = (s_ok, r_ok)
        print(f"{op.__name__:14s} {gname:7s} {'passes' if s_ok else 'FAILS':>12s} "
              f"{'passes' if r_ok else 'FAILS':>16s}")  # fmt: skip

assert all(sum_ok for sum_ok, _ in results.values())  # the sum() check passes every bug
assert results["ZeroGradBN", "random"] == (True, False)
assert results["ForgotGammaBN", "1"] == (True, True)  # with gamma = 1 nothing can see it
assert results["ForgotGammaBN", "random"][1] is False  # random gamma + random upstream do

# %% [markdown]
# The `sum()` check passes all four broken backwards; only a random upstream
# gradient with a random $\gamma$ catches both bugs. So minires's `gradcheck`
# always draws the upstream gradient at random (`seed=` fixes it), and its
# tests use random $\gamma$ and non-centred inputs. Tests that run a broken
# backward and require the check to *fail* are what prove a check is not
# vacuous.
#
# ## 3.5 ReLU, and kinks
#
# $\text{relu}(x) = \max(x, 0)$; its backward passes the gradient where the
# output is positive and blocks it elsewhere. At exactly $x = 0$ the function
# has a kink: minires (like PyTorch) takes the gradient as 0, while a central
# difference straddles the kink and sees the average slope, 0.5. That is not
# a bug in either; it is why checks keep inputs away from 0.

# %%
xr = mr.tensor(np.array([-1.0, -1e-3, 0.0, 1e-3, 2.0]), requires_grad=True)
F.relu(xr).backward(np.ones(5))
numeric = numerical_vjp(F.relu, xr.data, np.ones(5))  # central differences, eps = 1e-6
print("x        :", xr.data)
print("autograd :", xr.grad)
print("central  :", numeric)
assert list(xr.grad) == [0, 0, 0, 1, 1] and abs(numeric[2] - 0.5) < 1e-6
away = mr.tensor(np.array([-1.0, -0.3, 0.2, 2.0]), requires_grad=True)
at_kink = mr.tensor(np.array([-1.0, 0.0, 0.2]), requires_grad=True)
print("gradcheck away from 0:", mr.gradcheck(F.relu, [away]))
print("gradcheck at 0       :", mr.gradcheck(F.relu, [at_kink], raise_exception=False))
assert not mr.gradcheck(F.relu, [at_kink], raise_exception=False)

# %% [markdown]
# ## Summary
#
# * BatchNorm's backward, node by node, matches autograd on the elementary
#   graph to $10^{-10}$, and collapses to the compact formula the backend uses.
# * Training normalises with the batch's statistics and updates the running
#   ones; evaluation is a fixed affine map.
# * `sum()` is a useless loss for checking BatchNorm ($\partial L/\partial x =
#   0$); $\gamma = 1$ hides bugs in $\gamma$'s role. Check with a random
#   upstream gradient and random $\gamma$.
# * ReLU's gradient at 0 is a convention; finite differences disagree there.
#
# **Exercise.** Show from the compact formula that, per channel,
# $\sum_m \partial x_m = 0$ for every upstream $g$, and that
# $\sum_m \hat x_m\, \partial x_m$ vanishes up to a factor
# $\varepsilon/(\sigma^2+\varepsilon)$ (because $\sum_m \hat x_m^2 =
# M\sigma^2/(\sigma^2+\varepsilon)$, not $M$). Check both with `xt.grad`. What do
# they say about the directions in which BatchNorm's input can be changed to
# any effect?
#
# Previous: [02_im2col](02_im2col.ipynb) ·
# Next: [04_residual_block](04_residual_block.ipynb).
