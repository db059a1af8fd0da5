"""cuda_backend vs numpy_backend, function by function, on any device.

The same checks serve two test files: tests/test_cuda_kernels_cpu.py runs
them with cuda_backend on the CPU (NumPy arrays, kernels built by the C++
harness), tests/test_cuda_backend_gpu.py with CuPy arrays on a GPU. A
:class:`Device` says how arrays go to and from the device under test.

Each check builds its inputs with NumPy, computes the expected outputs with
numpy_backend, runs cuda_backend on device copies, and asserts:
* same shapes and dtypes as numpy_backend;
* values equal within a tolerance of the dtype (float64 to ~1e-12, float32
  to ~1e-5 relative; integer outputs such as argmax exactly);
* the inputs are left unchanged (only the documented in-place running
  statistics of BatchNorm may change, and they must match NumPy's update).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from minires.backends import numpy_backend as nb

DTYPES = (np.float32, np.float64)


@dataclass
class Device:
    """How to move arrays to and from the device that cuda_backend runs on."""

    to_device: Callable[[np.ndarray], Any]
    to_host: Callable[[Any], np.ndarray]


def tolerance(dtype: Any) -> tuple[float, float]:
    """(rtol, atol) for comparing with numpy_backend; atol is scaled by the data."""
    return (1e-5, 1e-5) if np.dtype(dtype) == np.float32 else (1e-12, 1e-12)


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if expected.dtype.kind in "iu":
        np.testing.assert_array_equal(actual, expected, err_msg=what)
        return
    rtol, atol = tolerance(expected.dtype)
    finite = np.abs(expected[np.isfinite(expected)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=what)


class BackendChecks:
    """The checks, run against one cuda_backend module on one device."""

    def __init__(self, cuda_backend: Any, device: Device):
        self.cb, self.dev = cuda_backend, device

    # -- helpers -----------------------------------------------------------

    def _run(self, fn: Callable, *host_args: Any) -> tuple[Any, list[Any]]:
        """Run fn on device copies of the array arguments; check they are unchanged."""
        dev_args = [self.dev.to_device(a) if isinstance(a, np.ndarray) else a for a in host_args]
        out = fn(*dev_args)
        for i, (h, d) in enumerate(zip(host_args, dev_args)):
            if isinstance(h, np.ndarray):
                np.testing.assert_array_equal(
                    self.dev.to_host(d), h, err_msg=f"{fn.__name__} changed input {i}"
                )
        return out, dev_args

    def _host(self, a: Any) -> np.ndarray:
        return np.asarray(self.dev.to_host(a))

    def _compare(self, name: str, *host_args: Any, outputs: tuple[str, ...] = ()) -> Any:
        """numpy_backend.<name> and cuda_backend.<name> on the same inputs must agree.

        ``outputs`` names the items of a tuple result. Returns NumPy's result.
        """
        expected = getattr(nb, name)(*host_args)
        actual, _ = self._run(getattr(self.cb, name), *host_args)
        if not outputs:
            assert_close(self._host(actual), expected, name)
            return expected
        assert len(actual) == len(expected) == len(outputs), name
        for what, a, e in zip(outputs, actual, expected):
            assert_close(self._host(a), e, f"{name} {what}")
        return expected

    # -- the checks ----------------------------------------------------------

    def sgd(
        self,
        rng: np.random.Generator,
        dtype: Any,
        sizes: list[int],
        hyper: tuple[float, float, float, float, bool, bool],
        steps: int = 3,
    ):
        """sgd_step (every parameter in one launch) against optim.sgd_update
        (the textbook rule, parameter by parameter), over several steps: the
        first creates the momentum buffers, the later ones update them. The
        kernel rounds each product on its own, so the results are NumPy's
        bits, not just close. One parameter joins only at the second step
        (its buffer is created while the others are updated)."""
        from minires.optim import sgd_update

        params = [rng.standard_normal(n).astype(dtype) for n in sizes]
        late = len(params) // 2  # gets no gradient at the first step
        buffers: list[Any] = [None] * len(params)
        dev_params = [self.dev.to_device(p) for p in params]
        dev_buffers: list[Any] = [None] * len(params)
        for step in range(steps):
            which = [i for i in range(len(params)) if step > 0 or i != late]
            grads = {i: rng.standard_normal(sizes[i]).astype(dtype) for i in which}
            for i in which:
                buffers[i] = sgd_update(params[i], grads[i], buffers[i], *hyper)
            dev_grads = [self.dev.to_device(grads[i]) for i in which]
            new = self.cb.sgd_step(
                [dev_params[i] for i in which], dev_grads, [dev_buffers[i] for i in which], *hyper
            )
            for g, dev_g in zip((grads[i] for i in which), dev_grads):
                np.testing.assert_array_equal(
                    self._host(dev_g), g, err_msg="sgd_step changed a grad"
                )
            for i, buf in zip(which, new):
                dev_buffers[i] = buf
            for i in range(len(params)):
                what = f"sgd_step, step {step}, parameter {i}"
                np.testing.assert_array_equal(self._host(dev_params[i]), params[i], err_msg=what)
                if buffers[i] is None:
                    assert dev_buffers[i] is None, what
                else:
                    np.testing.assert_array_equal(self._host(dev_buffers[i]), buffers[i], what)

    def im2col(
        self, rng: np.random.Generator, dtype: Any, C, N, H, W, kh, kw, sh, sw, ph, pw, dh=1, dw=1
    ):
        x = rng.standard_normal((C, N, H, W)).astype(dtype)
        geometry = (kh, kw, sh, sw, ph, pw, dh, dw)
        col = self._compare("im2col", x, *geometry)
        gcol = rng.standard_normal(col.shape).astype(dtype)
        self._compare("col2im", gcol, x.shape, *geometry)

    def conv2d(
        self,
        rng: np.random.Generator,
        dtype: Any,
        N: int,
        groups: int,
        per_group_in: int,
        per_group_out: int,
        geometry: tuple[int, ...],
    ):
        """conv2d_forward and conv2d_backward, whole: im2col/col2im with the
        dilation handed on, and the GEMM batched over the groups."""
        H, W, kh, kw, sh, sw, ph, pw, dh, dw = geometry
        C, F = groups * per_group_in, groups * per_group_out
        x = rng.standard_normal((N, C, H, W)).astype(dtype)
        w = rng.standard_normal((F, per_group_in, kh, kw)).astype(dtype)
        b = rng.standard_normal(F).astype(dtype)
        args = ((sh, sw), (ph, pw), (dh, dw), groups)
        y_exp, saved_exp = nb.conv2d_forward(x, w, b, *args)
        (y, saved), _ = self._run(self.cb.conv2d_forward, x, w, b, *args)
        assert_close(self._host(y), np.ascontiguousarray(y_exp), "conv2d_forward y")
        gy = rng.standard_normal(y_exp.shape).astype(dtype)
        wanted = (True, True, True)
        expected = nb.conv2d_backward(gy, saved_exp, wanted)
        actual = self.cb.conv2d_backward(self.dev.to_device(gy), saved, wanted)
        for what, a, e in zip(("gx", "gw", "gb"), actual, expected):
            assert_close(self._host(a), np.ascontiguousarray(e), f"conv2d_backward {what}")

    def batch_norm(
        self,
        rng: np.random.Generator,
        dtype: Any,
        C: int,
        M: int,
        running: bool,
        momentum: float = 0.1,
        eps: float = 1e-5,
        relu: bool = False,
    ):
        """Forward and backward, with or without the fused ReLU, against
        numpy_backend; with relu=True also against bn-then-relu done in two
        steps (numpy_backend's relu_forward and relu_backward)."""
        # Off-centre, scaled data and gamma far from 1 (a test with gamma = 1
        # and centred data cannot see half the mistakes a backward can make).
        x = (rng.standard_normal((C, M)) * 3 + 2).astype(dtype)
        gamma = rng.uniform(0.5, 2.0, C).astype(dtype) * rng.choice([-1, 1], C).astype(dtype)
        beta = rng.standard_normal(C).astype(dtype)
        rm = rng.standard_normal(C).astype(dtype) if running else None
        rv = rng.uniform(0.5, 2.0, C).astype(dtype) if running else None
        rm_exp = None if rm is None else rm.copy()
        rv_exp = None if rv is None else rv.copy()
        y_exp, xhat_exp, inv_std_exp = nb.batch_norm_forward(
            x, gamma, beta, eps, rm_exp, rv_exp, momentum, relu=relu
        )
        if relu:  # the fused twin is bn then relu, to the bit
            y_plain = nb.batch_norm_forward(x, gamma, beta, eps, None, None, momentum)[0]
            np.testing.assert_array_equal(y_exp, nb.relu_forward(y_plain))
        x_d, g_d, b_d = (self.dev.to_device(a) for a in (x, gamma, beta))
        rm_d = None if rm is None else self.dev.to_device(rm)
        rv_d = None if rv is None else self.dev.to_device(rv)
        count = self.dev.to_device(np.array(41, dtype=np.int64)) if running else None
        y, xhat, inv_std = self.cb.batch_norm_forward(
            x_d, g_d, b_d, eps, rm_d, rv_d, momentum, relu=relu, count=count
        )
        if running:  # num_batches_tracked, counted once by the kernel
            assert int(self._host(count)) == 42
        for name, before, after in (("x", x, x_d), ("gamma", gamma, g_d), ("beta", beta, b_d)):
            np.testing.assert_array_equal(self._host(after), before, err_msg=f"bn changed {name}")
        assert_close(self._host(y), y_exp, "batch_norm_forward y")
        assert_close(self._host(xhat), xhat_exp, "batch_norm_forward xhat")
        assert_close(self._host(inv_std), inv_std_exp, "batch_norm_forward inv_std")
        if running:
            assert_close(self._host(rm_d), rm_exp, "batch_norm_forward running_mean")
            assert_close(self._host(rv_d), rv_exp, "batch_norm_forward running_var")

        gy = rng.standard_normal((C, M)).astype(dtype)
        grads = ("gx", "ggamma", "gbeta")
        if not relu:
            self._compare("batch_norm_backward", gy, xhat_exp, gamma, inv_std_exp, outputs=grads)
            return
        expected = nb.batch_norm_backward(gy, xhat_exp, gamma, inv_std_exp, y=y_exp)
        two_steps = nb.batch_norm_backward(
            nb.relu_backward(gy, y_exp), xhat_exp, gamma, inv_std_exp
        )
        for e, t in zip(expected, two_steps):
            np.testing.assert_array_equal(e, t)
        actual, _ = self._run(
            lambda *a: self.cb.batch_norm_backward(*a[:4], y=a[4]),
            gy, xhat_exp, gamma, inv_std_exp, y_exp,
        )  # fmt: skip
        for what, a, e in zip(grads, actual, expected):
            assert_close(self._host(a), e, f"batch_norm_backward (relu) {what}")

    def relu(self, rng: np.random.Generator, dtype: Any, shape: tuple[int, ...]):
        x = rng.standard_normal(shape).astype(dtype)
        if x.size:
            x.flat[0] = 0.0  # the kink itself: y = 0, gradient 0
        y = self._compare("relu_forward", x)
        gy = rng.standard_normal(shape).astype(dtype)
        self._compare("relu_backward", gy, y)

    def relu_channel_major(
        self, rng: np.random.Generator, dtype: Any, shape: tuple[int, ...]
    ) -> tuple[Any, ...]:
        """ReLU on channel-major data (an (N, C, ...) view of memory stored
        (C, N, ...), what conv2d and batch_norm return): NumPy's values, and
        outputs in the same layout, forward and backward.

        Returns the device arrays (x, y, gy, gx), for the CPU test to check
        which memory the kernels were given.
        """
        stored = (shape[1], shape[0], *shape[2:])
        x = rng.standard_normal(stored).astype(dtype)
        if x.size:
            x.flat[0] = 0.0
        gy = rng.standard_normal(stored).astype(dtype)
        # to_device copies a C-contiguous array; the view is taken on the device.
        x_d, gy_d = (self.dev.to_device(a).swapaxes(0, 1) for a in (x, gy))
        x, gy = x.swapaxes(0, 1), gy.swapaxes(0, 1)
        y_exp = nb.relu_forward(x)
        gx_exp = nb.relu_backward(gy, y_exp)
        y = self.cb.relu_forward(x_d)
        gx = self.cb.relu_backward(gy_d, y)
        np.testing.assert_array_equal(self._host(x_d), x, err_msg="relu_forward changed x")
        np.testing.assert_array_equal(self._host(gy_d), gy, err_msg="relu_backward changed gy")
        for name, out, expected in (("relu_forward", y, y_exp), ("relu_backward", gx, gx_exp)):
            assert_close(self._host(out), expected, name)
            assert out.swapaxes(0, 1).flags.c_contiguous, f"{name}: output not channel-major"
            if shape[0] > 1 and shape[1] > 1:
                assert not out.flags.c_contiguous, f"{name}: output converted to NCHW"
        return x_d, y, gy_d, gx

    def max_pool(
        self,
        rng: np.random.Generator,
        dtype: Any,
        P,
        H,
        W,
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        ties: bool,
        nans: float = 0.0,
        ceil_mode: bool = False,
    ):
        # With ties, small integers make equal maxima common: the first one
        # must win on both backends, so argmax must match exactly. A fraction
        # ``nans`` of the values is NaN: a window holding one gives NaN and
        # points at its last NaN, on both backends.
        if ties:
            x = rng.integers(-2, 3, (P, H, W)).astype(dtype)
        else:
            x = rng.standard_normal((P, H, W)).astype(dtype)
        x[rng.random(x.shape) < nans] = np.nan
        geometry = (kh, kw, sh, sw, ph, pw)
        y, argmax = self._compare(
            "max_pool_forward", x, *geometry, ceil_mode, outputs=("y", "argmax")
        )
        gy = rng.standard_normal(y.shape).astype(dtype)
        self._compare("max_pool_backward", gy, argmax, x.shape, *geometry)

    def avg_pool(
        self,
        rng: np.random.Generator,
        dtype: Any,
        P,
        H,
        W,
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ):
        x = rng.standard_normal((P, H, W)).astype(dtype)
        geometry = (kh, kw, sh, sw, ph, pw)
        y = self._compare("avg_pool_forward", x, *geometry, ceil_mode, count_include_pad)
        gy = rng.standard_normal(y.shape).astype(dtype)
        self._compare("avg_pool_backward", gy, x.shape, *geometry, count_include_pad)

    def cross_entropy(
        self,
        rng: np.random.Generator,
        dtype: Any,
        N: int,
        K: int,
        scale: float = 3.0,
        label_dtype: Any = np.int64,
        weighted: bool = False,
        ignored: float = 0.0,
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
    ):
        """A fraction ``ignored`` of the rows have ignore_index as their label
        (it is then cast to label_dtype, so it may wrap to a positive value).
        Without ``weighted`` the weight is None (all ones), the kernels' other
        path. Each row's weight in the mean is also checked written out:
        w[label], 0 for an ignored row."""
        logits = (rng.standard_normal((N, K)) * scale).astype(dtype)
        labels = rng.integers(0, K, N)
        labels[rng.random(N) < ignored] = ignore_index
        labels = labels.astype(label_dtype)
        ignore_index = int(np.asarray(ignore_index).astype(label_dtype))
        weight = rng.uniform(0.2, 3.0, K).astype(dtype) if weighted else None
        targets = (labels, weight, ignore_index, label_smoothing)
        _, probs, row_weight = self._compare(
            "cross_entropy_forward", logits, *targets, outputs=("losses", "probs", "row_weight")
        )
        counted = labels != ignore_index
        w_label = np.ones(N, dtype) if weight is None else weight[np.where(counted, labels, 0)]
        np.testing.assert_array_equal(row_weight, np.where(counted, w_label, 0).astype(dtype))
        grad_losses = rng.uniform(0.5, 2.0, N).astype(dtype)
        self._compare("cross_entropy_backward", probs, *targets, grad_losses)


# --------------------------------------------------------------------------
# Hypothesis strategies for the geometry of windows
# --------------------------------------------------------------------------


@st.composite
def window_geometry(draw: st.DrawFn, max_size: int = 8) -> tuple[int, ...]:
    """(H, W, kh, kw, sh, sw, ph, pw) with at least one output pixel.

    Kernels 1..4 (non-square too), strides 1..3 (so also stride > kernel:
    pixels no window covers), padding 0..k-1, images up to max_size.
    """
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))
    H = draw(st.integers(max(1, kh - 2 * ph), max_size))
    W = draw(st.integers(max(1, kw - 2 * pw), max_size))
    assume(nb.out_size(H, kh, sh, ph) >= 1 and nb.out_size(W, kw, sw, pw) >= 1)
    return H, W, kh, kw, sh, sw, ph, pw


@st.composite
def dilated_geometry(draw: st.DrawFn, max_size: int = 9) -> tuple[int, ...]:
    """(H, W, kh, kw, sh, sw, ph, pw, dh, dw): window_geometry's with a
    dilation of 1..3 along each axis (the kernel then spans d*(k-1) + 1)."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh)), draw(st.integers(0, kw))
    span_h, span_w = nb.span(kh, dh), nb.span(kw, dw)
    H = draw(st.integers(max(1, span_h - 2 * ph), max(max_size, span_h)))
    W = draw(st.integers(max(1, span_w - 2 * pw), max(max_size, span_w)))
    return H, W, kh, kw, sh, sw, ph, pw, dh, dw


@st.composite
def pool_modes(draw: st.DrawFn) -> tuple[int, ...]:
    """window_geometry's, with (ceil_mode, count_include_pad) appended."""
    return (*draw(window_geometry()), draw(st.booleans()), draw(st.booleans()))
