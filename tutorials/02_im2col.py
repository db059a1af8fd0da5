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
# # 2. Convolution as one matrix product: im2col, GEMM, col2im
#
# **Claim.** A convolution is a matrix product in disguise. Copy every
# receptive field of the input into a column of a matrix (*im2col*), and the
# whole layer becomes one GEMM: `W.reshape(F, -1) @ col`. Its backward is two
# more GEMMs and *col2im*, the adjoint of im2col, which adds every column back
# onto the pixels it was copied from. The price is memory: the column matrix
# is $k_h k_w$ times the size of the input for a stride-1 convolution.
#
# Everything below calls minires's own `F.conv2d` and its reference backend,
# `minires.backends.numpy_backend` (plain NumPy: im2col and one GEMM), prints
# the functions that do the work, and asserts what it shows.
#
# *Runtime* (measured on a shared 2-core CPU): about 2 s in full mode and
# in quick mode.

# %%
import inspect
import os

import matplotlib.pyplot as plt
import numpy as np

import minires as mr
import minires.functional as F
from minires.backends import cpu_backend, get_backend
from minires.backends import numpy_backend as B

QUICK = os.environ.get("MINIRES_QUICK") == "1"
np.set_printoptions(linewidth=120)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 2.1 Output size
#
# A window of size $K$ slides over an input of size $H$ padded by $P$ on each
# side, moving $S$ at a time. Its first position starts at 0 and its last must
# end inside the padded input, so
#
# $$ H_{out} = \left\lfloor \frac{H + 2P - K}{S} \right\rfloor + 1 .$$
#
# The floor matters: with stride 2, an odd-sized input loses its last row if
# the window does not fit. `F.conv2d` agrees on every row of this table.

# %%
print("   H  K  S  P | formula | conv2d output")
for H, K, S, P in [(4, 3, 1, 0), (4, 3, 1, 1), (32, 3, 1, 1), (32, 3, 2, 1), (224, 7, 2, 3),
                   (56, 1, 2, 0), (7, 3, 2, 0), (8, 3, 2, 0), (5, 5, 1, 2)]:  # fmt: skip
    formula = (H + 2 * P - K) // S + 1
    x = mr.tensor(np.zeros((1, 1, H, H), np.float32))
    w = mr.tensor(np.zeros((1, 1, K, K), np.float32))
    got = F.conv2d(x, w, stride=S, padding=P).shape[2]
    print(f"{H:4d} {K:2d} {S:2d} {P:2d} | {formula:7d} | {got}")
    assert got == formula == B.out_size(H, K, S, P)

# %% [markdown]
# ## 2.2 im2col on a tiny input
#
# One image, one channel, 4×4 pixels numbered 1..16, and a 3×3 kernel with no
# padding: there are 2×2 = 4 output pixels, so 4 windows. im2col makes one
# **column per output pixel** and one **row per kernel offset** $(i, j)$:
# a 9×4 matrix. Column $(o_h, o_w)$ holds the 9 input values under the window
# whose top-left corner is at $(o_h S, o_w S)$.
#
# (minires's backend takes the input *channel-major*, shaped (C, N, H, W);
# with one image and one channel that is the same array.)

# %%
x = np.arange(1, 17, dtype=np.float64).reshape(1, 1, 4, 4)
col = B.im2col(x, 3, 3, 1, 1, 0, 0)
print("input:\n", x[0, 0].astype(int))
print("\ncol: shape", col.shape, "(rows: kernel offset (i, j); columns: output pixel (oh, ow))")
print("          (0,0) (0,1) (1,0) (1,1)")
for r in range(9):
    print(f"  (i,j)=({r // 3},{r % 3})", "  ".join(f"{v:4.0f}" for v in col[r]))

assert col.shape == (9, 4)
assert list(col[:, 0]) == [1, 2, 3, 5, 6, 7, 9, 10, 11]  # the top-left window, row by row
assert list(col[0]) == [1, 2, 5, 6]  # offset (0, 0) of each window

# %% tags=["figure-02-im2col"]
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw={"width_ratios": [1, 1.1]})
axes[0].imshow(x[0, 0], cmap="tab20", vmin=0.5, vmax=20.5)
for (r, c), v in np.ndenumerate(x[0, 0]):
    axes[0].text(c, r, int(v), ha="center", va="center")
axes[0].add_patch(plt.Rectangle((-0.45, -0.45), 2.9, 2.9, fill=False, lw=2, color="C0"))
axes[0].add_patch(plt.Rectangle((0.55, 0.55), 2.9, 2.9, fill=False, lw=2, color="C3", ls="--"))
axes[0].set_title("input: windows (0,0) and (1,1)")
axes[1].imshow(col, cmap="tab20", vmin=0.5, vmax=20.5, aspect="auto")
for (r, c), v in np.ndenumerate(col):
    axes[1].text(c, r, int(v), ha="center", va="center")
axes[1].set_xticks(range(4), ["(0,0)", "(0,1)", "(1,0)", "(1,1)"])
axes[1].set_yticks(range(9), [f"({i},{j})" for i in range(3) for j in range(3)])
axes[1].set_title("col: a column per window, a colour per pixel")
for ax in axes[:1]:
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# With padding 1 the output is 4×4, so col has 16 columns; the zeros are the
# padding that windows at the border read.

# %%
col_p = B.im2col(x, 3, 3, 1, 1, 1, 1)
print("padding 1: col shape", col_p.shape)
print(col_p.astype(int))
assert col_p.shape == (9, 16) and (col_p == 0).sum() == 4 * 5 + 8 * 3

# %% [markdown]
# (The count of zeros: a 3×3 window centred on each of the 16 pixels reads
# 144 values; those of a corner pixel's window lie 5 outside the image, of an
# edge pixel's 3, of an interior pixel's 0: $4 \cdot 5 + 8 \cdot 3 = 44$.)
#
# ## 2.3 The GEMM
#
# With several channels, row $(c, i, j)$ of col has index $c k_h k_w + i k_w
# + j$, exactly the order of `W.reshape(F, C*kh*kw)`. So the convolution of a
# whole batch is
#
# $$ Y_{(F,\; N O_H O_W)} = W_{(F,\; C k_h k_w)} \cdot \text{col}_{(C k_h k_w,\; N O_H O_W)} + b $$
#
# and one BLAS call does all the arithmetic. Below: a batch of 2, 3 channels,
# 4 filters, stride 2, padding 1, checked against the definition of
# cross-correlation written as loops, and against `F.conv2d`.

# %%
N, C, H, W_, Fo, K, S, P = 2, 3, 7, 6, 4, 3, 2, 1
x = rng.standard_normal((N, C, H, W_))
w = rng.standard_normal((Fo, C, K, K))
b = rng.standard_normal(Fo)
OH, OW = B.out_size(H, K, S, P), B.out_size(W_, K, S, P)

# The definition: y[n, f, oh, ow] = b[f] + sum_{c,i,j} w[f,c,i,j] * xpad[n, c, oh*S+i, ow*S+j]
xpad = np.pad(x, ((0, 0), (0, 0), (P, P), (P, P)))
y_loops = np.zeros((N, Fo, OH, OW))
for n, f, oh, ow in np.ndindex(N, Fo, OH, OW):
    y_loops[n, f, oh, ow] = (
        b[f] + (w[f] * xpad[n, :, oh * S : oh * S + K, ow * S : ow * S + K]).sum()
    )

# im2col + one GEMM (the backend wants the input channel-major: (C, N, H, W))
col = B.im2col(np.ascontiguousarray(x.transpose(1, 0, 2, 3)), K, K, S, S, P, P)
y_gemm = (w.reshape(Fo, -1) @ col + b[:, None]).reshape(Fo, N, OH, OW).transpose(1, 0, 2, 3)

y_lib = F.conv2d(mr.tensor(x), mr.tensor(w), mr.tensor(b), stride=S, padding=P)
print("col:", col.shape, "= (C*kh*kw, N*OH*OW) =", (C * K * K, N * OH * OW))
print("max |gemm - loops| =", np.abs(y_gemm - y_loops).max())
print("max |conv2d - loops| =", np.abs(y_lib.data - y_loops).max())
assert np.allclose(y_gemm, y_loops, atol=1e-12) and np.allclose(y_lib.data, y_loops, atol=1e-12)

# %% [markdown]
# In minires those three lines are `numpy_backend.conv2d_forward`. `F.conv2d`
# checks its arguments and calls a `Conv2dFunction` (`minires/functional.py`);
# `Function.__call__` (`minires/autograd.py`) hands it the raw arrays;
# `Conv2dFunction.forward` asks `get_backend(x)` (`minires/backends/`) which
# backend handles arrays like `x`, and calls that backend's `conv2d_forward`.
# For NumPy arrays the default is the fast CPU backend (`cpu_backend`, end of
# this notebook); `F.set_conv_algorithm("im2col")` selects the reference, the
# function below. Its `_columns` is `im2col`, except for a 1×1, stride-1,
# unpadded convolution, whose input already is the column matrix.

# %%
previous = F.set_conv_algorithm("im2col")
assert get_backend(x) is B
F.set_conv_algorithm(previous)
assert get_backend(x) is cpu_backend  # the default: "auto"
print(inspect.getsource(B.conv2d_forward))
print(inspect.getsource(B._columns))

# %% [markdown]
# Notice the layout of the GEMM's result: (F, N, OH, OW), *channel-major*.
# minires does not transpose it back; `F.conv2d` returns the NCHW **view** of
# that memory (see the docstring of `minires/functional.py` and
# docs/architecture.md). The next BatchNorm, ReLU and convolution read it in
# that layout, and im2col from channel-major memory copies long contiguous
# rows.

# %%
yd = y_lib.data
print("shape (NCHW):", yd.shape, " strides:", yd.strides)
print("C-contiguous as NCHW?", yd.flags.c_contiguous,
      "| as (C, N, H, W)?", yd.swapaxes(0, 1).flags.c_contiguous)  # fmt: skip
assert yd.swapaxes(0, 1).flags.c_contiguous

# %% [markdown]
# ## 2.4 Backward: two GEMMs and col2im
#
# Given $G = \partial L / \partial Y$ laid out as (F, N·OH·OW):
#
# * $\partial L/\partial W = G \cdot \text{col}^\top$ (reshaped to W's shape),
# * $\partial L/\partial b = $ the row sums of $G$,
# * $\partial L/\partial \text{col} = W^\top G$, and since col was built by
#   *copying* input pixels, each pixel's gradient is the sum of the gradients
#   of all its copies: $\partial L / \partial x = \text{col2im}(W^\top G)$.
#
# col2im is the **adjoint** (transpose) of im2col as a linear map:
# $\langle \text{im2col}(x), c\rangle = \langle x, \text{col2im}(c)\rangle$
# for every $x$ and $c$. Applied to a matrix of ones it counts how many
# windows cover each pixel:

# %%
ones = np.ones((9, 4))
coverage = B.col2im(ones, (1, 1, 4, 4), 3, 3, 1, 1, 0, 0)
print("col2im(ones): windows covering each pixel of the 4x4 input\n", coverage[0, 0].astype(int))
assert (coverage[0, 0] == np.array([[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]])).all()

xc = rng.standard_normal((C, N, H, W_))
c = rng.standard_normal((C * K * K, N * OH * OW))
lhs = np.vdot(B.im2col(xc, K, K, S, S, P, P), c)
rhs = np.vdot(xc, B.col2im(c, xc.shape, K, K, S, S, P, P))
print(f"<im2col(x), c> = {lhs:.12f}\n<x, col2im(c)> = {rhs:.12f}")
assert abs(lhs - rhs) < 1e-10 * abs(lhs)

# %% [markdown]
# Now the three formulas against what autograd returns through `F.conv2d`:

# %%
xt = mr.tensor(x, requires_grad=True)
wt = mr.tensor(w, requires_grad=True)
bt = mr.tensor(b, requires_grad=True)
G = rng.standard_normal((N, Fo, OH, OW))
F.conv2d(xt, wt, bt, stride=S, padding=P).backward(G)

G2 = G.transpose(1, 0, 2, 3).reshape(Fo, -1)  # (F, N*OH*OW)
gw = (G2 @ col.T).reshape(w.shape)
gb = G2.sum(axis=1)
gx = B.col2im(w.reshape(Fo, -1).T @ G2, (C, N, H, W_), K, K, S, S, P, P).transpose(1, 0, 2, 3)
for name, mine, lib in [("dW", gw, wt.grad), ("db", gb, bt.grad), ("dx", gx, xt.grad)]:
    print(f"{name}: max |formula - autograd| = {np.abs(mine - lib).max():.1e}")
    assert np.allclose(mine, lib, atol=1e-12)

# %% [markdown]
# `loss.backward()` reaches the same formulas through `run_backward`
# (`minires/backward.py`), `Conv2dFunction.backward`, and the backend's
# `conv2d_backward`, which receives what `conv2d_forward` saved and computes
# only the gradients that `needs_grad` asks for. In the reference:

# %%
print(inspect.getsource(B.conv2d_backward))

# %% [markdown]
# And the whole op against central differences, on awkward shapes: odd
# sizes, stride 2, padding, a non-square kernel, batch 1 and one channel.

# %%
for shape_x, shape_w, stride, padding in [
    ((2, 3, 7, 6), (4, 3, 3, 3), 2, 1),
    ((1, 1, 5, 5), (2, 1, 2, 3), 1, 0),
    ((3, 2, 6, 7), (1, 2, 3, 1), (2, 1), (1, 0)),
]:
    xg = mr.tensor(rng.standard_normal(shape_x), requires_grad=True)
    wg = mr.tensor(rng.standard_normal(shape_w), requires_grad=True)
    bg = mr.tensor(rng.standard_normal(shape_w[0]), requires_grad=True)
    ok = mr.gradcheck(lambda a, k, c, s=stride, p=padding: F.conv2d(a, k, c, s, p), [xg, wg, bg])
    print(f"gradcheck conv2d x{shape_x} w{shape_w} stride={stride} padding={padding}: {ok}")
    assert ok

# %% [markdown]
# ### Exercise 2.A: your own convolution, forward and backward
#
# Write a convolution as a minires `Function` (the way `Conv2dFunction` is
# written): `forward` gets NumPy arrays `x` (N, C, H, W), `w` (F, C, kh,
# kw) and `b` (F,) and returns `y` (N, F, OH, OW); `backward` gets
# $G = \partial L/\partial y$ and returns the three gradients
# $(\partial x, \partial w, \partial b)$. Use the backend's
# `B.im2col(x_cm, kh, kw, sh, sw, ph, pw)` on the *channel-major* input
# `x_cm` (C, N, H, W), one matrix product, and in backward the formulas of
# §2.4 with `B.col2im`; save on `self` in forward what backward needs.
# Strides and paddings are ints here. The next cell compares your outputs
# and gradients with `F.conv2d` on awkward shapes and runs `mr.gradcheck`
# (finite differences) on your Function. (The solution is in
# `solutions/02_im2col.py`.)


# %%
# EXERCISE 2.A: write forward and backward.
class Conv2dIm2col(mr.Function):
    """y = conv2d(x, w, b, stride, padding) as im2col + one GEMM; backward with col2im."""

    def __init__(self, stride=1, padding=0):
        self.stride, self.padding = stride, padding

    def forward(self, x, w, b):
        raise NotImplementedError("Conv2dIm2col.forward is still a stub")

    def backward(self, gy):
        raise NotImplementedError("Conv2dIm2col.backward is still a stub")


# %%
from solutions import exercise, fill_in  # tutorials/solutions/: the checks' helpers

fill_in("02_im2col", globals())  # only with MINIRES_SOLUTIONS=1
with exercise("2.A"):
    rng_ex = np.random.default_rng(21)  # its own generator: the cells below draw the same
    for shape_x, shape_w, stride, padding in [
        ((2, 3, 7, 6), (4, 3, 3, 3), 2, 1),
        ((1, 1, 5, 5), (2, 1, 2, 3), 1, 0),
        ((3, 2, 6, 7), (1, 2, 3, 1), 1, 2),
    ]:
        arrays = [rng_ex.standard_normal(s) for s in (shape_x, shape_w, (shape_w[0],))]
        results, g_seed = [], int(rng_ex.integers(2**31))  # the same upstream for both
        for conv in (
            lambda a, k, c, s=stride, p=padding: F.conv2d(a, k, c, s, p),
            lambda a, k, c, s=stride, p=padding: Conv2dIm2col(s, p)(a, k, c),
        ):
            ts = [mr.tensor(a.copy(), requires_grad=True) for a in arrays]
            y_ex = conv(*ts)
            g_ex = np.random.default_rng(g_seed).standard_normal(y_ex.shape)
            y_ex.backward(g_ex)
            results.append([y_ex.data] + [t.grad for t in ts])
        errs = [np.abs(mine - ref).max() for ref, mine in zip(*results)]
        print(f"x{shape_x} w{shape_w} stride={stride} padding={padding}: max |yours - F.conv2d|",
              "y {:.1e}, dx {:.1e}, dw {:.1e}, db {:.1e}".format(*errs))  # fmt: skip
        assert all(e < 1e-10 for e in errs)
        ts = [mr.tensor(a, requires_grad=True) for a in arrays]
        assert mr.gradcheck(lambda a, k, c, s=stride, p=padding: Conv2dIm2col(s, p)(a, k, c), ts)

# %% [markdown]
# ## 2.5 The price: memory
#
# col holds $k_h k_w$ copies of (almost) every input value, spread over
# $O_H O_W$ columns instead of $H W$ pixels. Its size relative to the input is
#
# $$ \frac{|\text{col}|}{|x|} = \frac{C k_h k_w \, N O_H O_W}{C \, N H W}
# \approx \frac{k_h k_w}{S^2} .$$
#
# For the 3×3, stride-1 convolutions that make up most of a ResNet, that is
# 9×. Measured on a real ResNet-18 layer (`layer1`: 64 channels, 56×56) with
# minires's own im2col:

# %%
batch = 2 if QUICK else 16
x_layer = rng.standard_normal((64, batch, 56, 56)).astype(np.float32)  # channel-major
col_layer = B.im2col(x_layer, 3, 3, 1, 1, 1, 1)
mib_x, mib_col = x_layer.nbytes / 2**20, col_layer.nbytes / 2**20
print(f"batch {batch}: input {mib_x:.1f} MiB, col {mib_col:.1f} MiB, ratio {mib_col / mib_x:.2f}")
assert col_layer.nbytes == 9 * x_layer.nbytes
del col_layer, x_layer

# %% [markdown]
# The same arithmetic for the layers of ResNet-18 on a 224×224 image and of
# a CIFAR ResNet at its training batch of 128 (float32, 4 bytes a value):


# %%
def im2col_bytes(C, H, W, K, S, P, N=1, itemsize=4):
    OH, OW = B.out_size(H, K, S, P), B.out_size(W, K, S, P)
    return C * H * W * N * itemsize, C * K * K * N * OH * OW * itemsize


layers = [
    ("resnet18 conv1 7x7/2", 3, 224, 7, 2, 3, 1),
    ("resnet18 layer1 3x3", 64, 56, 3, 1, 1, 1),
    ("resnet18 layer2.0 3x3/2", 64, 56, 3, 2, 1, 1),
    ("resnet18 layer4 3x3", 512, 7, 3, 1, 1, 1),
    ("resnet50 1x1", 256, 56, 1, 1, 0, 1),
    ("resnet20 stage1 3x3, N=128", 16, 32, 3, 1, 1, 128),
    ("resnet20 stage3 3x3, N=128", 64, 8, 3, 1, 1, 128),
]
print(f"{'layer':28s} {'input':>11s} {'col':>11s} {'ratio':>6s}")
for name, C_, H_, K_, S_, P_, N_ in layers:
    xb, cb = im2col_bytes(C_, H_, H_, K_, S_, P_, N_)
    print(f"{name:28s} {xb / 2**20:7.2f} MiB {cb / 2**20:7.2f} MiB {cb / xb:6.2f}")
    if S_ == 1 and 2 * P_ == K_ - 1:
        assert cb == K_ * K_ * xb

# %% [markdown]
# A 1×1 convolution with stride 1 needs no im2col at all (col *is* the input,
# and minires skips the copy); the 7×7 stem pays $49/4 \approx 12$×. Two
# things keep this bearable: `conv2d_forward` does **not** keep col for
# backward (it saves the channel-major input and the weights, and rebuilds
# col when the weight gradient needs it), and col lives only while one layer
# runs. Libraries that need to bound it further split the batch into chunks
# (mmdetection's `im2col_step`).

# %%
y_ref, saved = B.conv2d_forward(x, w, b, (S, S), (P, P))
print("conv2d_forward saves:", [getattr(s, "shape", s) for s in saved], "; col:", col.shape)
saved_values = sum(s.size for s in saved if isinstance(s, np.ndarray))
assert saved_values < col.size  # the input and the weights, not col
#
# The memory-light alternative is to never build col. A window *view* of the
# padded input (`numpy.lib.stride_tricks.sliding_window_view`, CS231n's and
# early tinygrad's `as_strided`) shares memory with the input and gives the
# same convolution, though `einsum` over it is slow:

# %%
view = np.lib.stride_tricks.sliding_window_view(xpad, (K, K), axis=(2, 3))[:, :, ::S, ::S]
print("window view:", view.shape, "(N, C, OH, OW, kh, kw); shares memory with the padded input:",
      np.shares_memory(view, xpad))  # fmt: skip
y_view = np.einsum("ncyxij,fcij->nfyx", view, w) + b[None, :, None, None]
assert np.shares_memory(view, xpad) and np.allclose(y_view, y_loops, atol=1e-12)

# %% [markdown]
# minires's fast CPU backend (`minires/backends/cpu_backend.py`) takes the
# idea further for stride-1 convolutions (`minires/backends/shifted_conv.py`,
# docs/architecture.md §4): with the input laid out flat with shared zero
# gaps, every kernel offset is a constant *shift* of the flat index, so the
# column matrix can be built and multiplied a cache-sized chunk at a time and
# is never held whole. It is the default on the CPU for stride-1 convolutions
# with kernels larger than 1×1 (`F.set_conv_algorithm("auto")`; other
# convolutions fall back to the reference's im2col there); the textbook
# im2col is always available as `F.set_conv_algorithm("im2col")`, and the two
# agree:

# %%
xs = mr.tensor(rng.standard_normal((2, 8, 9, 9)), requires_grad=True)
ws = mr.tensor(rng.standard_normal((4, 8, 3, 3)), requires_grad=True)
gs = rng.standard_normal((2, 4, 9, 9))
by_algorithm = {}
for algorithm in ("im2col", "shifted"):
    previous = F.set_conv_algorithm(algorithm)
    xs.grad = ws.grad = None
    ys = F.conv2d(xs, ws, padding=1)
    ys.backward(gs)
    by_algorithm[algorithm] = (ys.data.copy(), xs.grad.copy(), ws.grad.copy())
    F.set_conv_algorithm(previous)
for name, a, c in zip(["y", "dx", "dw"], *by_algorithm.values()):
    print(f"{name}: max |im2col - shifted| = {np.abs(a - c).max():.1e}")
    assert np.allclose(a, c, rtol=1e-12, atol=1e-12)

# %% [markdown]
# ## Summary
#
# * $H_{out} = \lfloor (H + 2P - K)/S \rfloor + 1$.
# * im2col turns a convolution into one GEMM; rows are $(c, i, j)$, matching
#   `W.reshape(F, -1)`; columns are output pixels.
# * Backward: $dW = G\,\text{col}^\top$, $db = \sum G$,
#   $dx = \text{col2im}(W^\top G)$, with col2im the adjoint of im2col.
# * col costs $k_h k_w / S^2$ times the input.
#
# **Exercise.** Compute `B.col2im(np.ones(...))` for stride 2 and a 3×3
# kernel on a 5×5 input. Which pixels are covered twice, which four times?
#
# Previous: [01_autograd](01_autograd.ipynb) ·
# Next: [03_batchnorm_relu](03_batchnorm_relu.ipynb).
