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
# # 7. The same ops on a GPU: CUDA kernels next to the NumPy they mirror
#
# **Claim.** minires's GPU path is the NumPy path translated, function for
# function: every function of `minires/backends/numpy_backend.py` has a twin
# of the same name in `cuda_backend.py`, which launches a kernel written in
# plain CUDA C in `kernels/*.cu` (the convolution is the reference's own code
# around the CUDA im2col and col2im). Reading them side by side shows the one
# idea that changes on a GPU: NumPy loops over a few *kernel offsets* and
# lets each slice operation run over all pixels, while a CUDA kernel gives
# each *output element* its own thread. For col2im that turns a scatter-add
# into a gather, which needs no atomic operations and gives the same sum on
# every run.
#
# The notebook runs everywhere. Without a GPU it shows the sources and the
# index arithmetic, and says why the GPU part is skipped; with a GPU (and
# CuPy) it also checks the GPU results against NumPy and times both.
#
# *Runtime* (measured on a shared 2-core CPU without a GPU): about 3 s in
# either mode. No GPU has run it yet.

# %%
import inspect
import os
import re
import time

import numpy as np

import minires as mr
import minires.functional as F
from minires.backends import cpu_backend
from minires.backends import cuda_backend as CB
from minires.backends import numpy_backend as B

QUICK = os.environ.get("MINIRES_QUICK") == "1"
GPU = CB.gpu_available()  # compiles and runs a one-line kernel; never just "import cupy"
print("GPU available:", GPU)
if not GPU:
    print("Why not:", CB.gpu_unavailable_reason())

# %% [markdown]
# ## 7.1 Where the kernels are
#
# The `.cu` files live in the repository's `kernels/` folder and are shipped
# inside the wheel as `minires/_kernels/`; `cuda_backend.kernel_dir()` finds
# them either way. Importing `cuda_backend` needs no CuPy. `KERNELS` lists the
# `__global__` functions each file provides; each is a template compiled for
# `float` and for `double`.

# %%
kdir = CB.kernel_dir()
print("kernel folder:", kdir)
for stem, names in CB.KERNELS.items():
    source = (kdir / f"{stem}.cu").read_text()
    found = re.findall(r"__global__\s+void\s+(\w+)", source)
    print(f"  {stem + '.cu':18s} {len(source.splitlines()):4d} lines  kernels: {', '.join(found)}")
    assert set(found) == set(names)

# the contract: every public function of the reference backend has a CUDA
# twin, and the fast CPU backend (the default for NumPy arrays) has it too
numpy_ops = {
    n
    for n, f in inspect.getmembers(B, inspect.isfunction)
    if f.__module__ == B.__name__ and not n.startswith("_")
}
print("numpy_backend:", ", ".join(sorted(numpy_ops)))
for backend in (CB, cpu_backend):
    missing = {n for n in numpy_ops if not hasattr(backend, n)}
    print(f"  without a twin in {backend.__name__.split('.')[-1]}:", missing or "none")
    assert not missing


# %% [markdown]
# ## 7.2 The convolution: the reference's code, with CUDA's im2col
#
# `F.conv2d` calls `Conv2dFunction` (`minires/functional.py`), whose forward
# asks `get_backend(x)` (`minires/backends/__init__.py`) for the backend of
# its input and calls that backend's `conv2d_forward`. For a CuPy array that
# is `cuda_backend.conv2d_forward`, and it is not a new algorithm: it runs the
# reference, `numpy_backend.conv2d_forward` (notebook 2), handing it the
# CUDA `im2col` below. The GEMM inside is then `@` on CuPy arrays, i.e.
# cuBLAS; the backward likewise gets the CUDA `col2im`.

# %%
print(inspect.getsource(CB.conv2d_forward))
print(inspect.getsource(CB.conv2d_backward))
assert "numpy_backend.conv2d_forward" in inspect.getsource(CB.conv2d_forward)
assert "im2col" in inspect.signature(B.conv2d_forward).parameters


# %% [markdown]
# ## 7.3 im2col: slices vs threads
#
# The NumPy version (notebook 2) builds the column matrix with $k_h k_w$
# strided slice copies: the loop is over kernel offsets $(i, j)$, and each
# slice copies that offset for every channel, image and output pixel at once,
# in NumPy's C loops, on one thread. (The fast CPU backend's threads share
# out *blocks of channels* of BatchNorm and ReLU, `parallel.for_rows` in
# `minires/backends/parallel.py`: the CPU's coarse version of a CUDA grid of
# blocks.)


# %%
def kernel_source(stem, name):
    """The comment block and body of one __global__ template in kernels/<stem>.cu."""
    text = (kdir / f"{stem}.cu").read_text()
    start = text.index(f"__global__ void {name}(")
    start = text.rindex("template <typename T>", 0, start)
    # include the comment block right above the template
    lines = text[:start].splitlines()
    k = len(lines)
    while k > 0 and lines[k - 1].startswith("//"):
        k -= 1
    head = "\n".join(lines[k:])
    end = text.index("\n}\n", start) + 3
    return (head + "\n" if head else "") + text[start:end]


print(inspect.getsource(B.im2col))

# %% [markdown]
# The CUDA version gives every element of `col` its own thread. A thread
# knows only its flat index; it peels the coordinates $(c, i, j, n, o_h, o_w)$
# off that index and copies one value (or writes 0 in the padding). The
# *grid-stride loop* lets a grid of any size cover an array of any size.

# %%
print(kernel_source("im2col", "im2col"))

# %% [markdown]
# ## 7.4 col2im: scatter in NumPy, gather in CUDA
#
# NumPy adds each offset's slice of `col` back onto the image: $k_h k_w$
# strided `+=` operations, each of which touches every pixel at most once,
# so there is no conflict.

# %%
print(inspect.getsource(B.col2im))

# %% [markdown]
# On a GPU the direct translation, one thread per entry of `col` adding into
# its pixel, would have up to $k_h k_w$ threads writing the same pixel at once:
# it needs `atomicAdd`, and the order of the additions (and so the rounding
# of the sum) would change from run to run. The kernel instead gives each
# **pixel** a thread, which works out which entries of `col` were copied from
# it and sums them:

# %%
print(kernel_source("im2col", "col2im"))

# %% [markdown]
# The index arithmetic of that loop can be followed on the CPU. For one pixel
# of a small example (stride 2, padding 1, a 3×3 kernel), list the entries of
# `col` that the kernel's two loops visit, exactly as written above, and
# check that their sum is what NumPy's scatter produced for that pixel:

# %%
rng = np.random.default_rng(0)
C_, N_, H_, W_, k, s, p = 2, 1, 5, 5, 3, 2, 1
OH = OW = B.out_size(H_, k, s, p)
col = rng.standard_normal((C_ * k * k, N_ * OH * OW))
x_numpy = B.col2im(col, (C_, N_, H_, W_), k, k, s, s, p, p)

c, n, h, w = 1, 0, 1, 3  # the pixel this "thread" owns
visited, total = [], 0.0
for i in range(k):  # the kernel's loops, transcribed
    oh_times_sh = h + p - i
    if oh_times_sh < 0 or oh_times_sh % s != 0 or oh_times_sh // s >= OH:
        continue
    oh = oh_times_sh // s
    for j in range(k):
        ow_times_sw = w + p - j
        if ow_times_sw < 0 or ow_times_sw % s != 0 or ow_times_sw // s >= OW:
            continue
        ow = ow_times_sw // s
        row, column = (c * k + i) * k + j, (n * OH + oh) * OW + ow
        visited.append(((i, j), (oh, ow)))
        total += col[row, column]
print(f"pixel (c={c}, h={h}, w={w}) gathers {len(visited)} entries (offset, window):", visited)
print(f"gathered sum {total:.12f}  numpy col2im {x_numpy[c, n, h, w]:.12f}")
assert np.isclose(total, x_numpy[c, n, h, w], rtol=1e-14)

# %% [markdown]
# ## 7.5 Calling a kernel from Python without computing garbage
#
# A kernel sees bare pointers and C scalars; nothing checks that what Python
# passes matches. `cuda_backend` therefore follows a few rules at every
# launch (from its module docstring):

# %%
doc = CB.__doc__
print(doc[doc.index("The rules") : doc.index("Kernels are compiled")].strip())
print("\nfor example, sizes go in as", [type(v).__name__ for v in CB._ints(3, 32)])

# %% [markdown]
# ## 7.6 On a GPU: the same numbers, and the time they take
#
# A Tensor moves with `.to("cuda")` (a model with `model.to("cuda")`); every
# op then goes to `cuda_backend`, because `get_backend` (the one place where
# a path is chosen) sees a CuPy array.
# Without a working GPU that call raises an error that says what is missing:

# %%
try:
    mr.tensor(np.ones(3)).to("cuda")
    print("moved to the GPU")
except RuntimeError as err:
    print("RuntimeError:", err)
    assert not GPU

# %% [markdown]
# With a GPU, first correctness: a strided, padded convolution and a
# training-mode BatchNorm, forward and backward, in float64 on both devices.
# The GEMM is cuBLAS's on the GPU and OpenBLAS's (or MKL's) on the CPU, so
# the results agree to rounding, not bit for bit.

# %%
if GPU:
    x = rng.standard_normal((4, 8, 15, 15))
    w = rng.standard_normal((16, 8, 3, 3))
    gamma, beta = rng.uniform(0.5, 1.5, 16), rng.standard_normal(16)
    g = rng.standard_normal((4, 16, 8, 8))
    results = {}
    for device in ("cpu", "cuda"):
        on_device = (a if device == "cpu" else CB.to_gpu(a) for a in (x, w, gamma, beta))
        xt, wt, gt, bt = (mr.tensor(a, requires_grad=True) for a in on_device)
        y = F.relu(
            F.batch_norm(F.conv2d(xt, wt, stride=2, padding=1), None, None, gt, bt, training=True)
        )
        y.backward(g)
        results[device] = [CB.to_cpu(a) for a in (y.data, xt.grad, wt.grad)]
    for name, a, b_ in zip(["y", "dx", "dw"], results["cpu"], results["cuda"]):
        err = np.abs(a - b_).max() / np.abs(a).max()
        print(f"{name}: max |cpu - cuda| / max |cpu| = {err:.1e}")
        assert err < 1e-10
else:
    print("skipped: no GPU here")

# %% [markdown]
# Then time: the im2col/col2im kernels against their NumPy twins on a ResNet
# layer (64 channels, 56×56, a batch of 32), and one training step of
# ResNet-20 on a CIFAR batch of 128, in float32.


# %%
def timed(fn, sync=lambda: None, repeat=5):
    fn()
    sync()  # warm up: compile kernels, fill caches
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


if GPU:
    import cupy as cp

    sync = cp.cuda.Device().synchronize
    xl = rng.standard_normal((64, 32, 56, 56)).astype(np.float32)
    xl_gpu = cp.asarray(xl)
    t_np = timed(
        lambda: B.col2im(B.im2col(xl, 3, 3, 1, 1, 1, 1), xl.shape, 3, 3, 1, 1, 1, 1), repeat=3
    )
    t_gpu = timed(
        lambda: CB.col2im(CB.im2col(xl_gpu, 3, 3, 1, 1, 1, 1), xl.shape, 3, 3, 1, 1, 1, 1), sync
    )
    print(
        f"im2col + col2im, 64x56x56, batch 32: numpy {1e3 * t_np:.1f} ms, cuda {1e3 * t_gpu:.2f} ms"
    )

    def train_step_timer(device):
        mr.manual_seed(0)
        model = mr.models.resnet20().to(device)
        opt = mr.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        images = mr.tensor(rng.standard_normal((128, 3, 32, 32)).astype(np.float32)).to(device)
        labels = rng.integers(0, 10, 128)

        def step():
            opt.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            opt.step()

        return step

    t_cpu = timed(train_step_timer("cpu"), repeat=2 if QUICK else 5)
    t_cuda = timed(train_step_timer("cuda"), sync)
    print(f"resnet20 training step, batch 128: cpu {1e3 * t_cpu:.0f} ms ({128 / t_cpu:.0f} img/s), "
          f"cuda {1e3 * t_cuda:.1f} ms ({128 / t_cuda:.0f} img/s)")  # fmt: skip
else:
    print("skipped: no GPU here")

# %% [markdown]
# ## Summary
#
# * One contract (`minires/backends/__init__.py`) and three backends with the
#   same function names: the NumPy reference, the fast CPU backend and CUDA;
#   the ops above them are written once. The CUDA convolution is the
#   reference's `conv2d_forward/backward` with CUDA's im2col and col2im.
# * NumPy loops over kernel offsets and lets slicing cover the pixels; CUDA
#   gives each output element a thread and a grid-stride loop.
# * col2im is a gather on the GPU: deterministic, no atomics.
# * Scalars are passed with explicit NumPy types; arrays are made contiguous
#   and their dtypes checked before every launch.
# * The kernels are also compiled and run on the CPU by the test suite
#   (`tests/test_cuda_kernels_cpu.py`), so their logic is checked on machines
#   without a GPU too.
#
# **Exercise.** Write the scatter version of col2im as a kernel with
# `atomicAdd` and run it twice on the same float32 input. Are the two results
# identical? Compare with `cuda_backend.col2im`.
#
# Previous: [06_degradation](06_degradation.ipynb) ·
# Back to the start: [01_autograd](01_autograd.ipynb).
