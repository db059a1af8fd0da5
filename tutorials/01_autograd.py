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
# # 1. Autograd: Tensor, Function, and the order of the chain rule
#
# **Claim.** Reverse-mode automatic differentiation is the chain rule applied
# node by node, *in reverse topological order*: a node may pass its gradient on
# only after every node that consumed it has handed back its share. minires
# walks the graph in that order with a heap keyed on each Function's
# *generation*. Walking it any other way is either wrong or exponentially slow,
# and every gradient it produces can be checked against finite differences, in
# float64 (float32 is too coarse for the check, and we measure by how much).
#
# This notebook shows each of those statements with numbers computed by
# minires, and ends each section with an `assert`, so the test suite fails if a
# statement stops being true.
#
# *Runtime* (measured on a 2-core CPU): about 30 s in full mode, 10 s in
# quick mode (most of it the Hessian's power iterations of section 1.6).

# %%
import os
import sys
import warnings

import matplotlib.pyplot as plt
import numpy as np

import minires as mr

QUICK = os.environ.get("MINIRES_QUICK") == "1"
np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## 1.1 A Tensor remembers how it was computed
#
# A `Tensor` wraps an array. A `Function` maps arrays to arrays (`forward`) and
# gradients of its outputs to gradients of its inputs (`backward`). Calling a
# Function on Tensors records a node: the output's `creator` is the Function,
# and the Function keeps its `inputs`.

# %%
x = mr.tensor(np.array([0.5, -1.0, 2.0]), requires_grad=True)  # float64 stays float64
y = x * x.exp()  # Exp, then Mul
loss = y.sum()  # Sum

print("loss          :", loss)
print("loss.creator  :", type(loss.creator).__name__)
print("its input     :", type(loss.creator.inputs[0].creator).__name__, "(that is y)")
print(
    "y's inputs    :",
    [type(t.creator).__name__ if t.creator else "x (leaf)" for t in y.creator.inputs],
)
print("x is a leaf   :", x.is_leaf, "| dtype", x.dtype)

# %% [markdown]
# ## 1.2 The chain rule, node by node
#
# For $y_i = x_i e^{x_i}$ and $L = \sum_i y_i$:
# $\partial L/\partial x_i = e^{x_i} + x_i e^{x_i} = e^{x_i}(1 + x_i)$.
# `backward()` seeds $\partial L / \partial L = 1$ and hands each Function the
# gradient of its output. `Mul.backward` returns `gy * b` for `a` and `gy * a`
# for `b`; `Exp.backward` returns `gy * exp(x)`. `x` is used twice, once by
# `Exp` and once by `Mul`, so its gradient is the **sum** of the two
# contributions.

# %%
loss.backward()
by_hand = np.exp(x.data) * (1 + x.data)
print("autograd :", x.grad)
print("by hand  :", by_hand)
assert np.allclose(x.grad, by_hand, rtol=1e-14, atol=0)

# %% [markdown]
# ## 1.3 Generations: the order on a diamond
#
# A *diamond* is a value used by two branches that meet again, which is
# exactly what a residual block does (`y = F(x) + x`):
#
# ```
#            ┌── b = a * a ──┐
# x ── a = 2x                  d = b + c
#            └── c = exp(a) ─┘
# ```
#
# Each Function gets a *generation*: the largest generation among its inputs
# (a leaf has 0), and its outputs get one more. Backward pops the Function
# with the **largest** generation first. Everything that consumes `a` has a
# larger generation than `a`'s creator, so `a`'s creator runs only after both
# branches have added their share to `a`'s gradient.
#
# To watch the order we wrap each recorded Function's `backward` with a logger
# (this only observes the library's Functions; it does not replace them).


# %%
def functions_of(out):
    """Every Function in the graph below `out`, found by following creators."""
    seen, stack, found = set(), [out.creator], []
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        found.append(fn)
        stack.extend(t.creator for t in fn.inputs)
    return found


def log_backward_calls(out, names):
    """Record the name of each Function when its backward runs."""
    log = []
    for fn in functions_of(out):
        label = names.get(id(fn), type(fn).__name__)
        original = fn.backward

        def logged(*gys, _label=label, _original=original):
            log.append(_label)
            return _original(*gys)

        fn.backward = logged  # an instance attribute; the class is untouched
    return log


x = mr.tensor(np.array([0.3]), requires_grad=True)
a = x * 2.0
b = a * a
c = a.exp()
d = b + c
names = {
    id(a.creator): "a = 2x",
    id(b.creator): "b = a*a",
    id(c.creator): "c = exp(a)",
    id(d.creator): "d = b + c",
}
for t, n in [(x, "x"), (a, "a"), (b, "b"), (c, "c"), (d, "d")]:
    gen_fn = (
        "leaf" if t.creator is None else f"made by a Function of generation {t.creator.generation}"
    )
    print(f"{n}: generation {t.generation}  ({gen_fn})")

log = log_backward_calls(d, names)
d.backward()
print("\nbackward ran:", " -> ".join(log))

# dd/dx = (2a + exp(a)) * 2
expected = (2 * a.data + np.exp(a.data)) * 2
print("dd/dx:", x.grad, " by hand:", expected)
assert log[0] == "d = b + c" and log[-1] == "a = 2x" and len(log) == 4
assert np.allclose(x.grad, expected, rtol=1e-14)

# %% [markdown]
# ### Why not just recurse?
#
# The first idea most people have (see micrograd issues #21, #68 and PRs #23,
# #64) is to recurse: when a tensor receives a gradient, call its creator's
# backward straight away. There are two ways to write that, and both fail.
#
# **(a) Propagate each share separately.** Because the chain rule is linear
# the answer is right, but a value reached by *k* diamonds in a row is
# back-propagated once per path: $2^k$ times. A ResNet is a chain of
# diamonds.
#
# **(b) Propagate the accumulated gradient each time a share arrives**
# (micrograd's `_backward` reads `self.grad`). Then the first share is sent on
# once, and sent again inside the total when the second share arrives: the
# leaf receives too much. (With a single diamond whose fork is the leaf itself
# nothing is sent on and (b) happens to be right; from two diamonds on, an
# intermediate value is forked and the error compounds.)
#
# Both are written below in a few lines, on minires's own recorded graph, as
# counterexamples. Neither is what minires does.


# %%
def recursive_backward(t, g, calls):
    """(a): every share travels separately down every path."""
    if t.creator is None:
        t.grad = g if t.grad is None else t.grad + g
        return
    fn = t.creator
    calls[0] += 1
    gxs = fn.backward(g)
    gxs = gxs if isinstance(gxs, tuple) else (gxs,)
    for xi, gx, wanted in zip(fn.inputs, gxs, fn.needs_input_grad):
        if wanted:
            recursive_backward(xi, gx, calls)


def eager_backward(t, g, totals):
    """(b): on each arriving share, send on the running total (wrong)."""
    totals[id(t)] = totals.get(id(t), 0) + g
    if t.creator is None:
        return
    fn = t.creator
    gxs = fn.backward(totals[id(t)])
    gxs = gxs if isinstance(gxs, tuple) else (gxs,)
    for xi, gx, wanted in zip(fn.inputs, gxs, fn.needs_input_grad):
        if wanted:
            eager_backward(xi, gx, totals)


def chain_of_diamonds(x, k):
    """k diamonds in a row: h <- h*h*0.5 + h*0.5 (h is used twice each time)."""
    h = x
    for _ in range(k):
        h = h * h * 0.5 + h * 0.5
    return h


x0 = np.array([0.9])
rows = []
for k in [2, 4, 6, 8, 10]:
    # minires's walk: count how many Function.backward calls it makes.
    x = mr.tensor(x0.copy(), requires_grad=True)
    out = chain_of_diamonds(x, k)
    log = log_backward_calls(out, {})
    out.backward()
    walk_grad, walk_calls = x.grad.copy(), len(log)

    x = mr.tensor(x0.copy(), requires_grad=True)
    out = chain_of_diamonds(x, k)
    calls = [0]
    recursive_backward(out, np.ones(1), calls)
    rec_grad = x.grad.copy()

    x = mr.tensor(x0.copy(), requires_grad=True)
    out = chain_of_diamonds(x, k)
    totals = {}
    eager_backward(out, np.ones(1), totals)
    eager_grad = totals[id(x)]
    rows.append((k, walk_calls, calls[0], walk_grad[0], rec_grad[0], eager_grad[0]))

print(" k | walk calls | recursive calls | walk grad    | recursive grad | eager grad")
for k, wc, rc, wg, rg, eg in rows:
    print(f"{k:2d} | {wc:10d} | {rc:15d} | {wg:.6e} | {rg:.6e}   | {eg:.6e}")

for k, wc, rc, wg, rg, eg in rows:
    assert wc == 4 * k  # each diamond is 4 Functions: Mul, Mul, Mul, Add
    assert np.isclose(rg, wg, rtol=1e-12)  # (a) is right ...
    assert rc > 2**k  # ... but exponentially slow
    assert not np.isclose(eg, wg, rtol=1e-3)  # (b) is wrong

# %% [markdown]
# ### The `a + a` case: accumulate out of place
#
# `y = a + a` uses the same tensor twice in *one* Function. `Add.backward`
# returns `gy` for both inputs, and (as it should, to avoid a copy) returns the
# **same array object** twice. If gradients were accumulated in place
# (`grad += g`), adding the second share would write into the first, which is
# also `y`'s own gradient array: `y`'s gradient would silently become 2.
# DeZero's step 14 is about exactly this. minires accumulates out of place.

# %%
a = mr.tensor(np.array([1.5]), requires_grad=True)
y = a + a
ga, gb = y.creator.backward(np.ones(1))
print("Add.backward returns one array twice:", ga is gb)

# What in-place accumulation would do to that shared array:
gy = np.ones(1)
ga, gb = y.creator.backward(gy)
acc = ga  # first share stored as is
acc += gb  # second share added in place ...
print("in place: a's gradient", acc, "but y's own gradient became", gy, "(should be 1)")

# What minires does:
a = mr.tensor(np.array([1.5]), requires_grad=True)
y = a + a
y.retain_grad()
y.backward()
print("minires : a.grad =", a.grad, " y.grad =", y.grad)
assert a.grad[0] == 2.0 and y.grad[0] == 1.0

# %% [markdown]
# ### No recursion, so depth is not limited
#
# The walk is a loop over a heap, so a graph far deeper than Python's
# recursion limit (a ResNet-1202 has thousands of nodes) is no problem.

# %%
n_ops = 5_000 if QUICK else 20_000
x = mr.tensor(np.array([1.0]), requires_grad=True)
h = x
for _ in range(n_ops):
    h = h * 1.0001
h.backward()
print(
    f"{n_ops} Functions deep (recursion limit {sys.getrecursionlimit()}): dh/dx = {x.grad[0]:.6f}"
)
assert n_ops > sys.getrecursionlimit()
assert np.isclose(x.grad[0], 1.0001**n_ops, rtol=1e-10)

# %% [markdown]
# ## 1.4 Checking a gradient by finite differences
#
# Autograd computes vector-Jacobian products $u^\top J$. Central differences
# compute the same numbers from forward passes alone:
#
# $$\frac{\partial}{\partial x_i}\langle u, f(x)\rangle \approx
# \frac{\langle u, f(x + \varepsilon e_i)\rangle
#       - \langle u, f(x - \varepsilon e_i)\rangle}{2\varepsilon}$$
#
# with an error of order $\varepsilon^2$ (Taylor) plus rounding of order
# $\text{machine-}\epsilon \cdot |f| / \varepsilon$. `mr.gradcheck` does this
# for every entry (or along random directions for big inputs), with a
# **random** upstream $u$, and raises `GradcheckError` naming the worst
# entries. First by hand, then with `gradcheck`.

# %%
rng = np.random.default_rng(0)
W = mr.tensor(rng.standard_normal((3, 4)), requires_grad=True)
v = mr.tensor(rng.standard_normal((2, 4)), requires_grad=True)


def f(W, v):
    return ((v @ W.T).exp() * 0.5 - W.sum(dim=1)).sum()


f(W, v).backward()
eps = 1e-6
numeric = np.zeros_like(W.data)
for idx in np.ndindex(W.shape):
    old = W.data[idx]
    W.data[idx] = old + eps
    plus = f(W, v).item()
    W.data[idx] = old - eps
    minus = f(W, v).item()
    W.data[idx] = old
    numeric[idx] = (plus - minus) / (2 * eps)
rel = np.abs(W.grad - numeric).max() / np.abs(numeric).max()
print("autograd dL/dW:\n", W.grad, "\ncentral differences:\n", numeric, "\nmax rel. error:", rel)
assert rel < 1e-8
assert mr.gradcheck(lambda W, v: (v @ W.T).exp() * 0.5 - W.sum(dim=1), [W, v])

# %% [markdown]
# A gradient check is only worth something if it fails on a wrong backward.
# Here is a Function written the way the library's are (a subclass of
# `mr.Function`), with a typical bug: the derivative of $x^3$ taken as $3x$.


# %%
class BadCube(mr.Function):
    def forward(self, x):
        self.x = x
        return x**3

    def backward(self, gy):
        return gy * 3 * self.x  # wrong: should be 3 * x**2


x = mr.tensor(rng.standard_normal(5), requires_grad=True)
try:
    mr.gradcheck(lambda x: BadCube()(x), [x])
    caught = False
except mr.GradcheckError as err:
    caught = True
    print(str(err).splitlines()[0])
    print("\n".join(str(err).splitlines()[1:3]))
assert caught

# %% [markdown]
# ## 1.5 Why float64 for the check
#
# Take $f(x) = x e^x$ at $x = 0.7$, whose derivative is $e^x(1+x)$, and
# measure the relative error of the central difference as $\varepsilon$
# shrinks, with $x$ stored in float32 and in float64. The truncation error
# falls as $\varepsilon^2$; the rounding error grows as $u/\varepsilon$
# ($u$ = machine epsilon: $1.2\times10^{-7}$ in float32, $2.2\times10^{-16}$ in
# float64). The best $\varepsilon$ is near $u^{1/3}$ and the best error near
# $u^{2/3}$: about $10^{-11}$ in float64 but only $10^{-5}$ in float32, and at
# gradcheck's default $\varepsilon = 10^{-6}$ a float32 check is wrong in the
# first or second digit.


# %% tags=["figure-01-finite-differences"]
def fd_relative_error(dtype, eps):
    x0 = np.array([0.7], dtype=dtype)
    exact = np.exp(0.7) * 1.7

    def f(arr):
        x = mr.tensor(arr)
        return (x * x.exp()).sum().item()

    step = np.array([eps], dtype=dtype)
    numeric = (f(x0 + step) - f(x0 - step)) / (2 * eps)
    return abs(numeric - exact) / exact


epsilons = 10.0 ** -np.arange(1, 13, 0.5)
err64 = np.array([fd_relative_error(np.float64, e) for e in epsilons])
err32 = np.array([fd_relative_error(np.float32, e) for e in epsilons])

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.loglog(epsilons, err32, "o-", label="float32")
ax.loglog(epsilons, err64, "s-", label="float64")
ax.axvline(1e-6, color="gray", ls=":", label="gradcheck's default eps")
ax.set_xlabel("eps")
ax.set_ylabel("relative error of the central difference")
ax.legend()
ax.invert_xaxis()
plt.tight_layout()
plt.show()

i6 = np.argmin(np.abs(epsilons - 1e-6))
print(f"best float64: {err64.min():.1e} at eps={epsilons[err64.argmin()]:.0e}")
print(f"best float32: {err32.min():.1e} at eps={epsilons[err32.argmin()]:.0e}")
print(f"at eps=1e-6 : float64 {err64[i6]:.1e}, float32 {err32[i6]:.1e}")
assert err64.min() < 1e-9
assert err32.min() > 1e-7
assert err32.min() / err64.min() > 1e3
assert err32[i6] > 1e-2 and err64[i6] < 1e-8

# %% [markdown]
# This is why minires's layers are created in float32 but checked in float64
# (`module.to(np.float64)`), and why `gradcheck` warns when it is handed
# anything else:

# %%
x32 = mr.tensor(np.array([0.7, 1.2], dtype=np.float32), requires_grad=True)
with warnings.catch_warnings(record=True) as caught_warnings:
    warnings.simplefilter("always")
    mr.gradcheck(lambda x: x * x.exp(), [x32], eps=1e-2, atol=1e-2, rtol=1e-2)
print(caught_warnings[0].message)
assert any("float64" in str(w.message) for w in caught_warnings)

# %% [markdown]
# ## 1.6 Second derivatives: the backward pass, recorded
#
# Everything above records the *forward* pass. With `create_graph=True`
# the backward pass is recorded too (each Function's backward written with
# Tensor operations: docs/architecture.md §2.6), so a gradient can be
# differentiated again. The useful case is the **Hessian-vector product**
# $Hv = \nabla_w (\nabla_w L \cdot v)$: two backward passes, never the
# Hessian itself (for ResNet-20's 270,000 weights it would have $7 \cdot
# 10^{10}$ entries). First the check, as for every gradient: $Hv$ must equal
# the central difference of the gradient along $v$,
# $(g(w + \epsilon v) - g(w - \epsilon v)) / 2\epsilon$, in float64. The
# net is a CIFAR ResNet-8 (convolutions, BatchNorm in training mode, ReLU,
# residual adds, cross-entropy) on 16 of the 8×8 digits.

# %%
import minires.functional as F
from minires.data import load_digits

digits, digit_labels = load_digits("train")
images = np.repeat((digits - digits.mean()) / digits.std(), 3, axis=1).astype(np.float64)


def loss_of(model, x, labels):
    return F.cross_entropy(model(mr.tensor(x)), labels)


def gradient(model, x, labels):
    return [g.data for g in mr.autograd.grad(loss_of(model, x, labels), list(model.parameters()))]


def hvp(model, x, labels, v):
    """H v for the loss's Hessian in the model's weights: grad of (grad . v)."""
    params = list(model.parameters())
    grads = mr.autograd.grad(loss_of(model, x, labels), params, create_graph=True)
    directional = sum((g * mr.tensor(vi)).sum() for g, vi in zip(grads, v))
    return [h.data for h in mr.autograd.grad(directional, params)]


mr.manual_seed(0)
net8 = mr.models.cifar_resnet(8).to(np.float64).train()
x16, y16 = images[:16], digit_labels[:16]
rng_h = np.random.default_rng(6)
direction = [rng_h.standard_normal(p.shape) for p in net8.parameters()]
length = np.sqrt(sum((d * d).sum() for d in direction))
direction = [d / length for d in direction]  # |v| = 1
hv = hvp(net8, x16, y16, direction)

# A small step: the gradient is only piecewise smooth (ReLU's kinks), and a
# step that moved some activation across 0 would measure a jump, not H v.
eps, weights = 1e-6, [p.data.copy() for p in net8.parameters()]
shifted = []
for sign in (1, -1):
    for p, w0, vi in zip(net8.parameters(), weights, direction):
        p.data[...] = w0 + sign * eps * vi
    shifted.append(gradient(net8, x16, y16))
for p, w0 in zip(net8.parameters(), weights):
    p.data[...] = w0
by_differences = [(a - b) / (2 * eps) for a, b in zip(*shifted)]
flat = lambda arrays: np.concatenate([a.ravel() for a in arrays])  # noqa: E731
error = np.abs(flat(hv) - flat(by_differences)).max() / np.abs(flat(by_differences)).max()
curvature = flat(hv) @ flat(direction) / (flat(direction) @ flat(direction))
print(
    f"{flat(hv).size:,} entries of Hv; largest difference from central differences: "
    f"{error:.1e} of the largest entry"
)
print(f"curvature of the loss along v: v'Hv / v'v = {curvature:.4f}")
assert error < 1e-6

# %% [markdown]
# What a Hessian says about a residual net: its eigenvalue of largest
# magnitude, $\lambda$, is the sharpest curvature of the loss around the
# weights, and gradient descent with learning rate $\eta$ is stable along
# that direction only if $\eta < 2/|\lambda|$. Power iteration finds it
# with Hessian-vector products alone ($v \leftarrow Hv/\|Hv\|$; the
# Rayleigh quotient $v^\top H v$ converges to $\lambda$). Here for a
# 20-layer net at initialisation, with and without its shortcuts, on 32
# digits; the same seeds draw the same weights for both.


# %%
def top_curvature(model, x, labels, iters, seed):
    """The Hessian's eigenvalue of largest magnitude, by power iteration on H v."""
    rng = np.random.default_rng(seed)
    v = [rng.standard_normal(p.shape) for p in model.parameters()]
    for _ in range(iters):
        norm = np.sqrt(sum((a * a).sum() for a in v))
        v = [a / norm for a in v]
        hv = hvp(model, x, labels, v)
        rayleigh = sum((a * b).sum() for a, b in zip(hv, v))  # v'Hv, with |v| = 1
        v = hv
    return rayleigh


x32, y32 = images[:32], digit_labels[:32]
curvatures = {}
for seed in (0,) if QUICK else (0, 1, 2):
    for residual in (True, False):
        mr.manual_seed(seed)
        model = mr.models.cifar_resnet(20, residual=residual).to(np.float64).train()
        curvatures[seed, residual] = top_curvature(model, x32, y32, iters=20, seed=seed)
    res, plain = curvatures[seed, True], curvatures[seed, False]
    print(
        f"seed {seed}: top curvature  residual-20 {res:8.2f}   plain-20 {plain:8.2f}   "
        f"ratio {abs(plain) / abs(res):5.1f}x"
    )
    assert abs(plain) > 3 * abs(res)

# %% [markdown]
# At initialisation the plain net's sharpest curvature is 4 to 11 times its
# residual twin's (the printed ratios, full mode; 20 power iterations each): the plain
# net's loss is far more curved along its worst direction, so a learning
# rate that is safe for the residual net can be unstable for the plain one.
# (Lesson 6 sees the other side of this: deep plain nets train badly at any
# rate of its sweep.) The signs differ from seed to seed because at
# initialisation the Hessian has large negative eigenvalues too: the weights
# are not at a minimum.

# %% [markdown]
# ## Summary
#
# * A Tensor records its creator; a Function knows its forward and backward.
# * Backward must run each Function once, after all its consumers: minires
#   orders Functions by generation and pops the largest first. Recursion is
#   either exponential (per-path) or wrong (eager totals).
# * Gradients are accumulated out of place, because `Add` hands the same
#   array to both of its inputs.
# * Every gradient can be checked by central differences, in float64.
# * `create_graph=True` records the backward pass: a Hessian-vector product
#   costs two backward passes, and power iteration on it measures curvature
#   (sharper, at initialisation, for a plain net than for its residual twin).
#
# **Exercise.** Change `chain_of_diamonds` to use `h * h` only (no `+ h`
# branch). Which of the three walks still agree, and why?
#
# Next: [02_im2col](02_im2col.ipynb), convolution as one matrix product.
