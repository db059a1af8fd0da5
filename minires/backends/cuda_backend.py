"""The CUDA backend: the device-specific steps of the ops, on an NVIDIA GPU.

Every function of the contract in ``minires/backends/__init__.py`` is here,
with the same name, arguments, shapes and dtypes as its twin in
``numpy_backend.py``, on CuPy arrays. Each one allocates its outputs and
launches kernels written in CUDA C, in ``kernels/*.cu`` (one family of ops
per file), compiled at run time by NVRTC through ``cupy.RawModule``. The conv
GEMM is not a kernel of ours: the ops call ``cupy.matmul`` (cuBLAS).

The rules every launch here follows (each one is a classic way for a
hand-written kernel to compute garbage without an error):

* Arrays are made C-contiguous (``ascontiguousarray``) and their dtype is
  checked: a kernel sees a bare pointer and trusts it. (The elementwise
  ReLU takes a channel-major array as its flat memory instead, so that the
  activations keep their layout from one convolution to the next.)
* Every scalar has an explicit NumPy type matching the kernel's parameter:
  ``np.int32`` for ``int``, ``np.float32``/``np.float64`` for ``T``. CuPy
  passes a Python ``int`` as 64 bits and a Python ``float`` as a C
  ``double``; a kernel that declared ``int`` or ``float`` reads the wrong
  bytes. (Integer arrays likewise: labels become int64, the kernels'
  ``long long``; argmax is int32, their ``int``.)
* The grid is ceil(n / threads) blocks, capped at ``MAX_BLOCKS``; the
  kernels' grid-stride loops cover whatever the cap leaves.
* Sizes are ``int`` in the kernels: :func:`_check_size` refuses an array
  whose flat indices would not fit in 31 bits.

Kernels are compiled on first use, once per (GPU, .cu file), and cached.
Importing this module needs no CuPy: it is imported lazily, and
:func:`gpu_available` says whether a GPU can really be used here.

Testing without a GPU. Two small seams, :func:`_cupy` (the array module) and
:func:`_kernel` (the compiled kernel of a given name and dtype), let the CPU
tests (``tests/test_cuda_kernels_cpu.py``) run this very file with NumPy
arrays and the same kernels compiled for the CPU by a C++ compiler.
"""

from __future__ import annotations

import functools
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from . import cuda_libraries, numpy_backend
from .layout import out_size, pool_out_size, span

# Threads per block of the elementwise kernels, and the most blocks a launch
# asks for (a grid-stride loop covers the rest). 4096 blocks of 256 threads
# is about four times what an H100 (132 SMs x 2048 threads) runs at once.
THREADS = 256
MAX_BLOCKS = 4096
# Threads per block of the per-channel reductions in batch_norm.cu: a power
# of two, at most BN_MAX_THREADS (the size of their shared arrays).
REDUCE_THREADS = 256
BN_MAX_THREADS = 256
# The chunked BatchNorm reductions aim at about BN_BLOCKS blocks per launch
# (an H100 or H200 runs 132 SMs x 8 blocks of 256 threads at once), with at
# least BN_MIN_PER_THREAD values for each thread of a block.
BN_BLOCKS = 1024
BN_MIN_PER_THREAD = 4

# The kernels of each .cu file (its stem) that cuda_backend launches. Each is
# compiled for T = float and T = double. tests/test_cuda_kernels_cpu.py checks
# this table against the __global__ functions found in the files.
KERNELS: dict[str, tuple[str, ...]] = {
    "im2col": ("im2col", "col2im"),
    "batch_norm": (
        "batch_norm_stats",
        "batch_norm_apply",
        "batch_norm_backward_reduce",
        "batch_norm_backward_apply",
    ),
    "relu": ("relu_forward", "relu_backward"),
    "pooling": ("max_pool_forward", "max_pool_backward", "avg_pool_forward", "avg_pool_backward"),
    "cross_entropy": ("cross_entropy_forward", "cross_entropy_backward"),
    "sgd": ("sgd_step",),
}
_FILE_OF = {name: stem for stem, names in KERNELS.items() for name in names}
# The C type that T stands for, by NumPy dtype.
C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

# Flat indices are C ints in the kernels. A grid-stride loop can step one
# stride past the last element, so leave that much headroom below 2**31.
_INDEX_LIMIT = 2**31 - 1 - MAX_BLOCKS * max(THREADS, REDUCE_THREADS)

_CUPY_INSTALL_HINT = (
    'install CuPy with `pip install "minires[gpu]"` (cupy-cuda12x[ctk]: CuPy and the CUDA 12 '
    "libraries, for a driver of CUDA 12.x or later), or the CuPy wheel that matches your CUDA "
    "major version: cupy-cuda13x[ctk] for CUDA 13.x, cupy-cuda11x and the CUDA Toolkit 11.x "
    "for CUDA 11.x (`nvidia-smi` shows the highest CUDA version your driver supports)"
)


# --------------------------------------------------------------------------
# Finding CuPy, the GPU and the kernels
# --------------------------------------------------------------------------


def _cupy() -> ModuleType:
    """The ``cupy`` module, imported on first use (the CPU tests swap in NumPy)."""
    import cupy

    return cupy


# A one-line kernel: if CuPy can compile it with NVRTC, launch it, pass it a
# float scalar and read the result back, and multiply two matrices with
# cuBLAS, the GPU path works here.
_PROBE_SOURCE = r"""
extern "C" __global__ void minires_probe(float* out, float value)
{
    out[threadIdx.x] = value;
}
"""


@functools.lru_cache(maxsize=1)
def _probe() -> str:
    """Try the GPU once; '' when it works, else why it does not."""
    try:
        import cupy
    except ImportError as e:
        return f"CuPy is not installed ({e}): {_CUPY_INSTALL_HINT}."
    except Exception as e:  # a broken install fails in many ways
        return (
            f"CuPy is installed but failed to import ({type(e).__name__}: {e}): "
            f"{_CUPY_INSTALL_HINT}."
        )
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return (
            f"CuPy imported, but the CUDA runtime found no usable GPU ({type(e).__name__}: {e}). "
            "Is an NVIDIA driver installed (`nvidia-smi`)?"
        )
    if count == 0:
        return "CuPy imported, but no CUDA device is visible (check CUDA_VISIBLE_DEVICES)."
    try:
        kernel = cupy.RawKernel(_PROBE_SOURCE, "minires_probe")
        out = cupy.zeros(1, dtype=cupy.float32)
        kernel((1,), (1,), (out, np.float32(2.5)))
        value = float(out[0])  # copies back, so waits for the kernel
    except Exception as e:
        return cuda_libraries.explain(e, f"CuPy sees {count} GPU(s), but compiling a kernel") or (
            f"CuPy sees {count} GPU(s) but could not compile and run a one-line kernel: "
            "NVRTC or the CUDA runtime libraries are missing or do not match the driver "
            f"(CuPy's wheel must match your CUDA major version; {_CUPY_INSTALL_HINT}). "
            f"Original error: {type(e).__name__}: {e}"
        )
    if value != 2.5:
        return f"A test kernel ran on the GPU but returned {value} instead of 2.5."
    try:  # cuBLAS is loaded at the first matrix product: try one before any work
        a = cupy.ones((2, 2), dtype=cupy.float32)
        total = float((a @ a).sum())
    except Exception as e:
        return cuda_libraries.explain(e, "A 2x2 matrix product on the GPU (cuBLAS)") or (
            "A 2x2 matrix product on the GPU (cuBLAS) failed: "
            f"{type(e).__name__}: {e} ({_CUPY_INSTALL_HINT})."
        )
    if total != 8.0:
        return f"A 2x2 matrix product of ones on the GPU summed to {total} instead of 8."
    return ""


def gpu_available() -> bool:
    """True when CuPy imports, sees a GPU, and can compile and run a kernel on it.

    ``import cupy`` alone proves little: it succeeds where the NVRTC library
    is missing or does not match, and the failure then comes at the first
    kernel. So this compiles and launches a one-line kernel, once per process.
    """
    return _probe() == ""


def gpu_unavailable_reason() -> str:
    """Why :func:`gpu_available` is False, with what to do about it ('' when it is True)."""
    return _probe()


def require_gpu() -> None:
    """Raise ``RuntimeError`` explaining what is missing unless the GPU path works."""
    reason = _probe()
    if reason:
        raise RuntimeError(f"minires cannot use the GPU: {reason}")


def to_gpu(array: Any) -> Any:
    """A CuPy copy of ``array`` on the current GPU (the array itself if it is one)."""
    return _cupy().asarray(array)


def to_cpu(array: Any) -> np.ndarray:
    """A NumPy copy of ``array`` (the array itself if it already is NumPy)."""
    if type(array).__module__.startswith("cupy"):
        return array.get()
    return np.asarray(array)


def kernel_dir() -> Path:
    """The folder holding the ``.cu`` files.

    An installed wheel has them in ``minires/_kernels/`` (pyproject's
    force-include); a source checkout has them in the repository's
    ``kernels/``, next to the package.
    """
    here = Path(__file__).resolve()
    for folder in (here.parents[1] / "_kernels", here.parents[2] / "kernels"):
        if (folder / "im2col.cu").is_file():
            return folder
    raise FileNotFoundError(
        f"minires's CUDA sources (*.cu) are neither in {here.parents[1] / '_kernels'} "
        f"(installed package) nor in {here.parents[2] / 'kernels'} (source checkout)"
    )


@functools.cache
def _module(device_id: int, stem: str) -> Any:
    """``kernels/<stem>.cu`` as a ``cupy.RawModule``, one per (GPU, file).

    ``name_expressions`` asks NVRTC to instantiate each template kernel for
    float and double and to remember the (mangled) name of each, which
    ``get_function("im2col<float>")`` then looks up. ``device_id`` is part of
    the key because a compiled module belongs to one GPU.
    """
    source = (kernel_dir() / f"{stem}.cu").read_text()
    names = [f"{k}<{t}>" for k in KERNELS[stem] for t in C_TYPES.values()]
    return _cupy().RawModule(code=source, name_expressions=names)


@functools.cache
def _function(device_id: int, stem: str, expression: str) -> Any:
    return _module(device_id, stem).get_function(expression)


def _kernel(name: str, dtype: np.dtype) -> Any:
    """The compiled kernel ``name<T>`` with T the C type of ``dtype``, on the current GPU.

    Called as ``kernel(grid, block, args)``: grid and block are tuples
    (blocks, threads per block); args holds arrays and NumPy scalars, in the
    order of the kernel's parameters.
    """
    device_id = _cupy().cuda.Device().id
    return _function(device_id, _FILE_OF[name], f"{name}<{C_TYPES[np.dtype(dtype)]}>")


def _address(a: Any) -> int:
    """The device address of ``a``'s first element, for a kernel's table of
    addresses (the CPU tests swap in NumPy's ``a.ctypes.data``)."""
    return a.data.ptr


# --------------------------------------------------------------------------
# Launch helpers
# --------------------------------------------------------------------------


def _float_array(a: Any, what: str, dtype: np.dtype | None = None) -> Any:
    """``a`` as a C-contiguous float32/float64 array on the GPU (``dtype`` if given)."""
    cp = _cupy()
    if not isinstance(a, cp.ndarray):
        raise TypeError(
            f"{what} must be a {cp.__name__} array (the CUDA backend), got {type(a).__name__}; "
            "move it with minires.backends.cuda_backend.to_gpu"
        )
    if a.dtype not in C_TYPES:
        raise TypeError(f"{what} must be float32 or float64, got {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{what} is {a.dtype} but the other inputs are {dtype}")
    return cp.ascontiguousarray(a)


def _ints(*values: int) -> tuple[np.int32, ...]:
    """Sizes as the C ``int`` the kernels declare."""
    return tuple(np.int32(v) for v in values)


def _check_size(n: int) -> None:
    if n > _INDEX_LIMIT:
        raise ValueError(
            f"an array of {n} elements is too large for the kernels' 32-bit indices; "
            "split the batch into smaller ones"
        )


def _launch(name: str, dtype: np.dtype, n: int, args: tuple) -> None:
    """Launch an elementwise kernel: one thread per item, n items, grid-stride."""
    if n == 0:
        return  # CUDA refuses a launch of zero blocks; there is nothing to do
    _check_size(n)
    blocks = min((n + THREADS - 1) // THREADS, MAX_BLOCKS)  # ceiling division
    _kernel(name, dtype)((blocks,), (THREADS,), args)


# --------------------------------------------------------------------------
# im2col / col2im
# --------------------------------------------------------------------------


def im2col(
    x: Any, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, dh: int = 1, dw: int = 1
) -> Any:
    """(C, N, H, W) -> (C*kh*kw, N*OH*OW): one column per output pixel.

    Row (c, i, j) holds x[c, n, oh*sh + i*dh - ph, ow*sw + j*dw - pw] for every
    output pixel (n, oh, ow), 0 outside the image (dilation dh, dw). One
    thread per entry. x is channel-major memory, or the (C, N, H, W) view of
    a C-contiguous NCHW batch (``nchw.swapaxes(0, 1)``), which the kernel
    reads where it is, through strides, with no copy.
    """
    cp = _cupy()
    C, N, H, W = x.shape
    if _channel_major(x):  # an NCHW batch seen as (C, N, H, W)
        x = _float_array(x.swapaxes(0, 1), "im2col: x")
        strides = (H * W, C * H * W)
    else:
        x = _float_array(x, "im2col: x")
        strides = (N * H * W, H * W)
    OH, OW = out_size(H, span(kh, dh), sh, ph), out_size(W, span(kw, dw), sw, pw)
    col = cp.empty((C * kh * kw, N * OH * OW), dtype=x.dtype)
    geometry = _ints(C, N, H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW, *strides)
    _check_size(x.size)
    _launch("im2col", x.dtype, col.size, (x, col, *geometry))
    return col


def col2im(
    col: Any,
    x_shape: tuple[int, int, int, int],
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
    dh: int = 1,
    dw: int = 1,
) -> Any:
    """(C*kh*kw, N*OH*OW) -> (C, N, H, W), the adjoint of :func:`im2col`.

    One thread per input pixel sums the column entries copied from it (a
    gather: deterministic, no atomics).
    """
    cp = _cupy()
    col = _float_array(col, "col2im: col")
    C, N, H, W = x_shape
    OH, OW = out_size(H, span(kh, dh), sh, ph), out_size(W, span(kw, dw), sw, pw)
    if col.shape != (C * kh * kw, N * OH * OW):
        raise ValueError(
            f"col2im: col has shape {col.shape}, expected {(C * kh * kw, N * OH * OW)} "
            f"for x_shape {tuple(x_shape)}"
        )
    x = cp.empty((C, N, H, W), dtype=col.dtype)
    geometry = _ints(C, N, H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW)
    _check_size(col.size)
    _launch("col2im", col.dtype, x.size, (col, x, *geometry))
    return x


def conv2d_forward(
    x: Any,
    w: Any,
    b: Any,
    stride: tuple,
    padding: tuple,
    dilation: tuple = (1, 1),
    groups: int = 1,
) -> tuple[Any, tuple]:
    """numpy_backend.conv2d_forward (im2col + one GEMM, batched over the groups)
    with this file's im2col kernel; the GEMM is CuPy's matmul, i.e. cuBLAS
    (a strided batched GEMM over the groups)."""
    return numpy_backend.conv2d_forward(
        x, w, b, stride, padding, dilation, groups, im2col=im2col, channel_major=_cn_view
    )


def _cn_view(x: Any) -> Any:
    """x (N, C, H, W) as (C, N, H, W): the channel-major memory when x is its
    view (free), else a view of x's own memory, which :func:`im2col` reads
    through strides (so an NCHW batch of images is never copied)."""
    return x.swapaxes(0, 1) if x.flags.c_contiguous else numpy_backend.to_channel_major(x)


def conv2d_backward(gy: Any, saved: tuple, needs_grad: tuple) -> tuple[Any, ...]:
    """numpy_backend.conv2d_backward with this file's im2col and col2im kernels."""
    return numpy_backend.conv2d_backward(gy, saved, needs_grad, im2col=im2col, col2im=col2im)


# --------------------------------------------------------------------------
# BatchNorm over a channel-major (C, M) matrix
# --------------------------------------------------------------------------


def _chunks(C: int, M: int) -> int:
    """Values per chunk of a BatchNorm row, so that C * K chunks (one block
    each) fill the GPU: about BN_BLOCKS blocks in all, but no fewer than
    BN_MIN_PER_THREAD values per thread of a block (below that, the partial
    results cost more than the reduction they split)."""
    per_block = REDUCE_THREADS * BN_MIN_PER_THREAD
    K = max(1, min(-(-M // per_block), -(-BN_BLOCKS // max(C, 1))))
    return max(1, -(-M // K))


def _done_counters(C: int) -> Any:
    """The zeroed int32 counters (one per channel) of the last-block reductions
    of batch_norm.cu, allocated once per (array module, GPU) and grown as
    needed; each kernel leaves them at zero for the next."""
    cp = _cupy()
    device_id = cp.cuda.Device().id if hasattr(cp, "cuda") else 0
    per_device = _COUNTERS.setdefault(cp, {})
    counters = per_device.get(device_id)
    if counters is None or counters.size < C:
        counters = per_device[device_id] = cp.zeros(max(C, 1024), dtype=np.int32)
    return counters


# By array module (CuPy, or what the tests put in its place), then by GPU.
_COUNTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _launch_chunks(name: str, dtype: np.dtype, C: int, M: int, chunk: int, args: tuple) -> None:
    """Launch a chunked per-channel reduction: one block of REDUCE_THREADS per
    chunk of a row (C * ceil(M / chunk) of them, capped at MAX_BLOCKS; a
    grid-stride loop covers the rest)."""
    if C == 0 or M == 0:
        return
    threads = REDUCE_THREADS
    if threads > BN_MAX_THREADS or threads & (threads - 1):
        raise ValueError(f"REDUCE_THREADS must be a power of two <= {BN_MAX_THREADS}")
    _check_size(C * M)
    blocks = C * -(-M // chunk)
    _kernel(name, dtype)((min(blocks, MAX_BLOCKS),), (threads,), args)


def batch_norm_forward(
    x: Any,
    gamma: Any,
    beta: Any,
    eps: float,
    running_mean: Any | None,
    running_var: Any | None,
    momentum: float,
    *,
    relu: bool = False,
    count: Any | None = None,
) -> tuple[Any, Any, Any]:
    """Normalise each row of x (C, M) with its own mean and variance.

    Returns (y, xhat, inv_std): y and xhat (C, M), inv_std (C,); with
    relu=True, y = max(gamma * xhat + beta, 0). When running_mean is given,
    running_mean and running_var (C,) are updated in place with the unbiased
    batch variance; count (int64, 0-d) is incremented in place. Two
    launches: the statistics (many blocks per channel, combined by the last,
    which also updates the running statistics and the count), then the
    elementwise normalisation.
    """
    cp = _cupy()
    x = _float_array(x, "batch_norm_forward: x")
    T = x.dtype
    gamma = _float_array(gamma, "batch_norm_forward: gamma", T)
    beta = _float_array(beta, "batch_norm_forward: beta", T)
    C, M = x.shape
    mean = cp.empty(C, dtype=T)
    var = cp.empty(C, dtype=T)
    inv_std = cp.empty(C, dtype=T)
    update = running_mean is not None
    if update:
        # Updated in place, so they must be usable as they are: a contiguous
        # copy would receive the update and be thrown away.
        for name, r in (("running_mean", running_mean), ("running_var", running_var)):
            _float_array(r, f"batch_norm_forward: {name}", T)
            if not r.flags.c_contiguous:
                raise ValueError(f"batch_norm_forward: {name} must be C-contiguous")
    chunk = _chunks(C, M)
    K = -(-M // chunk)
    partial_sum, partial_m2 = cp.empty(C * K, dtype=T), cp.empty(C * K, dtype=T)
    # Without running statistics the kernel writes none: mean and var stand in.
    running = (running_mean, running_var) if update else (mean, var)
    counted = count is not None and C > 0 and M > 0  # counted by the kernel
    if count is not None and not (
        isinstance(count, cp.ndarray) and count.dtype == np.int64 and count.shape == ()
    ):
        raise TypeError("batch_norm_forward: count must be an int64 0-d array on the GPU")
    _launch_chunks(
        "batch_norm_stats",
        T,
        C,
        M,
        chunk,
        (x, partial_sum, partial_m2, _done_counters(C), mean, var, inv_std, *running)
        + (count if counted else cp.empty((), dtype=np.int64),)
        + (*_ints(C, M, chunk), T.type(eps), T.type(momentum), *_ints(update, counted)),
    )
    if count is not None and not counted:
        count += 1
    y = cp.empty((C, M), dtype=T)
    xhat = cp.empty((C, M), dtype=T)
    _launch(
        "batch_norm_apply",
        T,
        C * M,
        (x, mean, inv_std, gamma, beta, y, xhat, *_ints(C, M, relu)),
    )
    return y, xhat, inv_std


def batch_norm_backward(
    gy: Any, xhat: Any, gamma: Any, inv_std: Any, *, y: Any | None = None
) -> tuple[Any, Any, Any]:
    """Gradients of y = gamma * xhat + beta, xhat = (x - mean(x)) * inv_std.

    gy, xhat (C, M) -> (gx (C, M), ggamma (C,), gbeta (C,)), with
        gbeta  = sum(g),  ggamma = sum(g * xhat),
        gx     = gamma * inv_std * (g - gbeta/M - xhat * ggamma/M),
    where g = gy, or, given the output y of a forward with relu=True,
    g = gy * (y > 0): the gradient through the fused ReLU. Two launches: the
    per-channel sums (many blocks per channel), then the elementwise formula.
    """
    cp = _cupy()
    gy = _float_array(gy, "batch_norm_backward: gy")
    T = gy.dtype
    xhat = _float_array(xhat, "batch_norm_backward: xhat", T)
    gamma = _float_array(gamma, "batch_norm_backward: gamma", T)
    inv_std = _float_array(inv_std, "batch_norm_backward: inv_std", T)
    relu = y is not None
    y = _float_array(y, "batch_norm_backward: y", T) if relu else gy  # gy: unread
    C, M = gy.shape
    if relu and y.shape != gy.shape:
        raise ValueError(f"batch_norm_backward: y has shape {y.shape}, gy {gy.shape}")
    gbeta = cp.empty(C, dtype=T)
    ggamma = cp.empty(C, dtype=T)
    chunk = _chunks(C, M)
    K = -(-M // chunk)
    partials = (cp.empty(C * K, dtype=T), cp.empty(C * K, dtype=T))
    _launch_chunks(
        "batch_norm_backward_reduce",
        T,
        C,
        M,
        chunk,
        (gy, y, xhat, *partials, _done_counters(C), gbeta, ggamma, *_ints(C, M, chunk, relu)),
    )
    if M == 0:  # no chunk to reduce: the sums are empty
        gbeta.fill(0)
        ggamma.fill(0)
    gx = cp.empty((C, M), dtype=T)
    _launch(
        "batch_norm_backward_apply",
        T,
        C * M,
        (gy, y, xhat, gamma, inv_std, gbeta, ggamma, gx, *_ints(C, M, relu)),
    )
    return gx, ggamma, gbeta


# --------------------------------------------------------------------------
# ReLU
# --------------------------------------------------------------------------


def _channel_major(*arrays: Any) -> bool:
    """Whether every array is a channel-major NCHW view: an (N, C, ...) array
    stored (C, N, ...), as conv2d and batch_norm return their outputs, so
    that ``a.swapaxes(0, 1)`` is C-contiguous and ``a`` itself is not."""
    return all(
        getattr(a, "ndim", 0) >= 2
        and not a.flags.c_contiguous
        and a.swapaxes(0, 1).flags.c_contiguous
        for a in arrays
    )


def _elementwise(kernel: str, **inputs: Any) -> Any:
    """Launch the elementwise kernel ``kernel(*inputs, out, n)``; return ``out``.

    An elementwise kernel reads its arrays as flat memory, so it needs no
    particular layout, only the same one for all of them. When the inputs
    are all channel-major (what conv2d and batch_norm return), their
    C-contiguous (C, N, ...) views are passed as they are and ``out`` is
    allocated in that layout too, as numpy_backend does: converting to NCHW
    here would cost a transposing copy at every ReLU, and the next conv2d
    would copy back. Inputs that are all C-contiguous are passed as they are;
    any other mix is copied to C-contiguous and gives a C-contiguous ``out``.
    """
    cp = _cupy()
    swap = _channel_major(*inputs.values())
    shape = getattr(next(iter(inputs.values())), "shape", ())  # ascontiguousarray makes 0-d 1-d
    arrays: list[Any] = []
    for what, a in inputs.items():
        dtype = arrays[0].dtype if arrays else None
        arrays.append(_float_array(a.swapaxes(0, 1) if swap else a, f"{kernel}: {what}", dtype))
        if a.shape != shape:
            shapes = ", ".join(f"{k} {getattr(v, 'shape', None)}" for k, v in inputs.items())
            raise ValueError(f"{kernel}: the shapes differ: {shapes}")
    out = cp.empty(arrays[0].shape if swap else shape, dtype=arrays[0].dtype)
    _launch(kernel, out.dtype, out.size, (*arrays, out, *_ints(out.size)))
    return out.swapaxes(0, 1) if swap else out


def relu_forward(x: Any) -> Any:
    """y = max(x, 0), any shape; y has x's layout (NCHW or channel-major)."""
    return _elementwise("relu_forward", x=x)


def relu_backward(gy: Any, y: Any) -> Any:
    """gx = gy * (y > 0), as NumPy: 0 where y <= 0, except NaN where gy is NaN or infinite.

    gx has the layout that gy and y share (NCHW or channel-major).
    """
    return _elementwise("relu_backward", gy=gy, y=y)


# --------------------------------------------------------------------------
# Pooling over (P, H, W) planes
# --------------------------------------------------------------------------


def max_pool_forward(
    x: Any, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, ceil_mode: bool = False
) -> tuple[Any, Any]:
    """(P, H, W) -> (y (P, OH, OW), argmax int32 (P, OH, OW)).

    argmax is the offset i*kw + j of each window's first maximum; a window
    holding a NaN gives NaN and points at its last NaN (as PyTorch);
    padding, and the part of a ceil_mode window past it, is -inf. One thread
    per output pixel.
    """
    cp = _cupy()
    x = _float_array(x, "max_pool_forward: x")
    P, H, W = x.shape
    OH, OW = pool_out_size(H, kh, sh, ph, ceil_mode), pool_out_size(W, kw, sw, pw, ceil_mode)
    y = cp.empty((P, OH, OW), dtype=x.dtype)
    argmax = cp.empty((P, OH, OW), dtype=np.int32)
    geometry = _ints(P, H, W, kh, kw, sh, sw, ph, pw, OH, OW)
    _check_size(x.size)
    _launch("max_pool_forward", x.dtype, y.size, (x, y, argmax, *geometry))
    return y, argmax


def max_pool_backward(
    gy: Any,
    argmax: Any,
    x_shape: tuple[int, int, int],
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
) -> Any:
    """gy (P, OH, OW) -> gx (P, H, W): each window's gradient goes to its argmax.

    One thread per input pixel gathers from the windows that contain it.
    """
    cp = _cupy()
    gy = _float_array(gy, "max_pool_backward: gy")
    if argmax.dtype != np.int32 or argmax.shape != gy.shape:
        raise TypeError(
            f"max_pool_backward: argmax must be int32 of shape {gy.shape} (from "
            f"max_pool_forward), got {argmax.dtype} {argmax.shape}"
        )
    argmax = cp.ascontiguousarray(argmax)
    P, H, W = x_shape
    OH, OW = gy.shape[1:]
    gx = cp.empty((P, H, W), dtype=gy.dtype)
    geometry = _ints(P, H, W, kh, kw, sh, sw, ph, pw, OH, OW)
    _check_size(gy.size)
    _launch("max_pool_backward", gy.dtype, gx.size, (gy, argmax, gx, *geometry))
    return gx


def avg_pool_forward(
    x: Any,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> Any:
    """(P, H, W) -> (P, OH, OW) window means, with PyTorch's divisor
    (numpy_backend._avg_pool_divisor, computed per window by the kernel)."""
    cp = _cupy()
    x = _float_array(x, "avg_pool_forward: x")
    P, H, W = x.shape
    OH, OW = pool_out_size(H, kh, sh, ph, ceil_mode), pool_out_size(W, kw, sw, pw, ceil_mode)
    y = cp.empty((P, OH, OW), dtype=x.dtype)
    geometry = _ints(P, H, W, kh, kw, sh, sw, ph, pw, OH, OW, count_include_pad)
    _check_size(x.size)
    _launch("avg_pool_forward", x.dtype, y.size, (x, y, *geometry))
    return y


def avg_pool_backward(
    gy: Any,
    x_shape: tuple[int, int, int],
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
    count_include_pad: bool = True,
) -> Any:
    """gy (P, OH, OW) -> gx (P, H, W): each window spreads gy / divisor over its pixels."""
    cp = _cupy()
    gy = _float_array(gy, "avg_pool_backward: gy")
    P, H, W = x_shape
    OH, OW = gy.shape[1:]
    gx = cp.empty((P, H, W), dtype=gy.dtype)
    geometry = _ints(P, H, W, kh, kw, sh, sw, ph, pw, OH, OW, count_include_pad)
    _check_size(gy.size)
    _launch("avg_pool_backward", gy.dtype, gx.size, (gy, gx, *geometry))
    return gx


# --------------------------------------------------------------------------
# Softmax cross-entropy
# --------------------------------------------------------------------------


def _labels(labels: Any, N: int) -> Any:
    """labels as the contiguous int64 (C ``long long``) array of N entries the kernels read."""
    cp = _cupy()
    if not isinstance(labels, cp.ndarray) or labels.dtype.kind not in "iu":
        raise TypeError(
            f"labels must be an integer {cp.__name__} array, got {type(labels).__name__}"
            f" of dtype {getattr(labels, 'dtype', None)}"
        )
    if labels.shape != (N,):
        raise ValueError(f"labels must have shape ({N},), got {labels.shape}")
    return cp.ascontiguousarray(labels, dtype=np.int64)


def cross_entropy_forward(
    logits: Any, labels: Any, weight: Any | None, ignore_index: int, label_smoothing: float
) -> tuple[Any, Any, Any]:
    """logits (N, K), labels (N,), weight (K,) or None (all ones) ->
    (losses (N,), probs (N, K) softmax, row_weight (N,)).

    Each row's loss by PyTorch's formula (numpy_backend.cross_entropy_forward),
    by log-sum-exp; 0 where the label is ignore_index. row_weight[n] is the
    row's weight in a mean, w[labels[n]], 0 for an ignored row. One thread per
    row writes the row's probabilities, loss and weight. A label outside
    [0, K) that is not ignore_index makes its loss and weight NaN (the kernel
    never indexes with it).
    """
    cp = _cupy()
    logits = _float_array(logits, "cross_entropy_forward: logits")
    T = logits.dtype
    N, K = logits.shape
    if K == 0:
        raise ValueError("cross_entropy_forward: logits must have at least one class (K >= 1)")
    labels = _labels(labels, N)
    weight = _class_weights(weight, K, T, "cross_entropy_forward")
    probs = cp.empty((N, K), dtype=T)
    losses = cp.empty(N, dtype=T)
    row_weight = cp.empty(N, dtype=T)
    _check_size(logits.size)
    weighted = weight is not None
    if not weighted:
        weight = logits  # unread: every weight is 1
    args = (*_ints(N, K, weighted), np.int64(ignore_index), T.type(label_smoothing))
    _launch(
        "cross_entropy_forward", T, N, (logits, labels, weight, probs, losses, row_weight, *args)
    )
    return losses, probs, row_weight


def cross_entropy_backward(
    probs: Any,
    labels: Any,
    weight: Any | None,
    ignore_index: int,
    label_smoothing: float,
    grad_losses: Any,
) -> Any:
    """glogits (N, K) for grad_losses (N,), the gradient of each row's loss:
    (sum(q) * probs - q) * grad_losses for the row's target weights q, 0 for
    an ignored row (numpy_backend.cross_entropy_backward). weight (K,), or
    None for all ones.

    grad_losses and the sum of the weights stay on the GPU: the kernel reads
    them from memory, so the host never waits for their values. Without
    weights that sum is K, and no launch computes it.
    """
    cp = _cupy()
    probs = _float_array(probs, "cross_entropy_backward: probs")
    T = probs.dtype
    N, K = probs.shape
    labels = _labels(labels, N)
    weight = _class_weights(weight, K, T, "cross_entropy_backward")
    grad_losses = cp.asarray(grad_losses, dtype=T)
    if grad_losses.ndim == 1 and grad_losses.size > 1 and grad_losses.strides[0] == 0:
        grad_losses = grad_losses[:1]  # one value broadcast to every row: read it once
    grad_stride = 0 if grad_losses.size == 1 else 1  # one gradient for every row: no copies
    if grad_stride and grad_losses.shape != (N,):
        raise ValueError(
            f"cross_entropy_backward: grad must be a scalar or have shape ({N},), "
            f"got {grad_losses.shape}"
        )
    grad_losses = _float_array(grad_losses.reshape(-1), "cross_entropy_backward: grad")
    glogits = cp.empty((N, K), dtype=T)
    weighted = weight is not None
    if weighted:
        weight_sum = cp.asarray(weight.sum(), dtype=T).reshape(1)
    else:
        weight = weight_sum = probs  # unread: every weight is 1, their sum K
    args = (*_ints(N, K, weighted), np.int64(ignore_index), T.type(label_smoothing))
    _launch(
        "cross_entropy_backward",
        T,
        probs.size,
        (probs, labels, weight, weight_sum, grad_losses, glogits, *args, *_ints(grad_stride)),
    )
    return glogits


def _class_weights(weight: Any | None, K: int, T: np.dtype, op: str) -> Any | None:
    """The K class weights as a contiguous array of dtype T, or None (all ones)."""
    if weight is None:
        return None
    weight = _float_array(weight, f"{op}: weight", T)
    if weight.shape != (K,):
        raise ValueError(f"{op}: weight must have shape ({K},), got {weight.shape}")
    return weight


# --------------------------------------------------------------------------
# SGD: every parameter in one launch
# --------------------------------------------------------------------------


def sgd_step(
    params: list[Any],
    grads: list[Any],
    buffers: list[Any | None],
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
) -> list[Any | None]:
    """Update every parameter in place with optim.sgd_update's rule, fused.

    params[i] (any shape) is updated with grads[i] (the same shape and
    dtype) and the momentum buffer buffers[i], which is None before the
    first step (then it is created, holding that step's gradient, as
    sgd_update does). Returns the buffers (None when momentum is 0).

    One launch of ``sgd_step`` per dtype (two on the step that creates some
    buffers, which start from the gradient rather than update), where the
    per-parameter rule costs 5 to 7 launches per parameter. The kernel finds
    the tensors through one table of their addresses, copied to the GPU
    (asynchronously, a few hundred bytes) at each call: the gradients are new
    arrays after every backward, so the table cannot be kept.
    """
    cp = _cupy()
    if not len(params) == len(grads) == len(buffers):
        raise ValueError(
            f"sgd_step: {len(params)} params, {len(grads)} grads and {len(buffers)} buffers"
        )
    use_buffers = momentum != 0.0
    buffers = list(buffers) if use_buffers else [None] * len(params)
    launches: dict[tuple[np.dtype, bool], list[int]] = {}
    for i, (p, g) in enumerate(zip(params, grads)):
        p = _float_array(p, f"sgd_step: parameter {i}")
        if not p.flags.c_contiguous:
            raise ValueError(f"sgd_step: parameter {i} must be C-contiguous (updated in place)")
        if g.shape != p.shape:
            raise ValueError(f"sgd_step: gradient {i} has shape {g.shape}, its parameter {p.shape}")
        first = use_buffers and buffers[i] is None
        if first:
            buffers[i] = cp.empty(p.shape, dtype=p.dtype)
        elif use_buffers and not (
            buffers[i].shape == p.shape
            and buffers[i].dtype == p.dtype
            and buffers[i].flags.c_contiguous
        ):
            raise ValueError(
                f"sgd_step: momentum buffer {i} must be C-contiguous with its parameter's "
                f"shape {p.shape} and dtype {p.dtype}"
            )
        if p.size:
            launches.setdefault((p.dtype, first), []).append(i)
    for (T, first), which in launches.items():
        grad_arrays = [_float_array(grads[i], f"sgd_step: gradient {i}", T) for i in which]
        offsets = np.cumsum([0] + [params[i].size for i in which])
        total = int(offsets[-1])
        _check_size(total)
        table = np.array(
            [_address(params[i]) for i in which]
            + [_address(g) for g in grad_arrays]
            + [_address(buffers[i]) if use_buffers else 0 for i in which]
            + offsets.tolist(),
            dtype=np.int64,
        )
        hyper = (lr, momentum, 1.0 - dampening, weight_decay)  # 1 - d in double, as NumPy
        flags = _ints(nesterov, maximize, first)
        args = (cp.asarray(table), *_ints(len(which), total), *map(T.type, hyper), *flags)
        _launch("sgd_step", T, total, args)
    return buffers
