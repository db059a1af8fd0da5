"""Shared test setup: hypothesis profiles, a seeded generator, kink-free inputs,
and no silent skips in CI.

Hypothesis profiles (choose with HYPOTHESIS_PROFILE=<name>, default "ci"):
    ci        few examples, derandomized: the whole suite stays fast and
              every run draws the same cases
    dev       more examples, random each run
    thorough  many examples, for a long run before a release

Optional imports: a test that needs PyTorch (or another package of the
``test`` extra) asks with ``pytest.importorskip("torch")``. Outside CI that
skips the test when the package is missing. When the environment variable
``CI`` is set (as .ci/run and every CI service do), the ``test`` extra has
been installed, so a missing package is a broken install: the skip becomes a
failure that names the package, and no comparison with PyTorch can be
skipped without anyone noticing.
"""

from __future__ import annotations

import os

# Tests use small arrays, where BLAS threads only add overhead, and CI shares
# its two cores: with other processes competing, a 2-thread OpenBLAS waits on
# its spinning threads and runs 5-20x slower. Set before NumPy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import math  # noqa: E402
import re
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, example, settings
from hypothesis import strategies as st

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# --------------------------------------------------------------------------
# No silent skips in CI
# --------------------------------------------------------------------------

# The packages that tests import with pytest.importorskip, all installed by
# the `test` extra (pyproject.toml): in CI a missing one fails its tests.
REQUIRED_IN_CI = (
    "torch",
    "nbformat",
    "jupytext",
    "nbclient",
    "ipykernel",
    "matplotlib",
    "graphviz",
    "safetensors",
    "mpi4py",
    "PIL",  # installed as Pillow
    "tqdm",
)

# Where a package is installed under another name than the one it is imported by.
DISTRIBUTION_NAMES = {"PIL": "pillow"}

_IMPORT_SKIP = re.compile(r"could not import '([\w.]+)'")


def in_ci() -> bool:
    """True when the environment variable CI is set (to anything but "", "0", "false")."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _required_but_missing(report) -> str | None:
    """The package a skipped report could not import, when CI requires it."""
    if not report.skipped or not in_ci():
        return None
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    match = _IMPORT_SKIP.search(reason)
    if match and match.group(1).split(".")[0] in REQUIRED_IN_CI:
        return reason
    return None


def _fail_instead(report, reason: str) -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"CI is set, so the `test` extra is installed and this test must run, "
        f"but it would have been skipped: {reason}"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    reason = _required_but_missing(report)
    if reason:
        _fail_instead(report, reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # A module-level importorskip skips the whole file at collection.
    outcome = yield
    report = outcome.get_result()
    reason = _required_but_missing(report)
    if reason:
        _fail_instead(report, reason)


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh generator with a fixed seed, so a failure reproduces exactly."""
    return np.random.default_rng(12345)


def kink_free(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    gap: float = 1e-3,
    scale: float = 1.0,
    dtype=np.float64,
) -> np.ndarray:
    """Random values that are pairwise distinct and far from 0, in random order.

    Every value is at least ``gap`` away from 0 and from every other value, so
    ReLU never sits on its kink and a max-pool window never holds a tie, even
    after a finite-difference step (eps = 1e-6 is far below ``gap``). The
    values are half-integers times a step, each jittered by at most a quarter
    step, then shuffled: spacing >= step/2, distance from zero >= step/4.
    """
    n = math.prod(shape)
    step = max(4.0 * scale / max(n, 1), 4.0 * gap)
    k = rng.permutation(n) - n // 2 + 0.5
    values = (k + rng.uniform(-0.25, 0.25, n)) * step
    return values.reshape(shape).astype(dtype)


def min_gap(a: np.ndarray) -> float:
    """The smallest distance between two values of ``a``, or between one and 0."""
    v = np.sort(np.append(np.asarray(a, dtype=np.float64).ravel(), 0.0))
    return float(np.diff(v).min()) if v.size > 1 else math.inf


# --------------------------------------------------------------------------
# Hypothesis strategies for the geometry of conv and pooling cases
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvCase:
    N: int
    C: int
    F: int
    H: int
    W: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    @property
    def w_shape(self) -> tuple[int, int, int, int]:
        return (self.F, self.C, *self.kernel)


@st.composite
def conv_cases(draw, max_n=3, max_c=3, max_hw=7, max_k=4, max_stride=3, max_pad=2) -> ConvCase:
    """Any legal conv: odd sizes, stride > 1, padding, 1x1 and non-square kernels,
    kernels larger than the stride, batch 1, one channel."""
    kh, kw = draw(st.integers(1, max_k)), draw(st.integers(1, max_k))
    ph, pw = draw(st.integers(0, max_pad)), draw(st.integers(0, max_pad))
    H = draw(st.integers(max(1, kh - 2 * ph), max_hw))
    W = draw(st.integers(max(1, kw - 2 * pw), max_hw))
    return ConvCase(
        N=draw(st.integers(1, max_n)),
        C=draw(st.integers(1, max_c)),
        F=draw(st.integers(1, max_c)),
        H=H,
        W=W,
        kernel=(kh, kw),
        stride=(draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride))),
        padding=(ph, pw),
    )


@st.composite
def pool_cases(draw, max_n=3, max_c=3, max_hw=7, max_k=4, max_stride=3) -> ConvCase:
    """Legal pooling windows: padding at most half the kernel (as PyTorch)."""
    kh, kw = draw(st.integers(1, max_k)), draw(st.integers(1, max_k))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    H = draw(st.integers(max(1, kh - 2 * ph), max_hw))
    W = draw(st.integers(max(1, kw - 2 * pw), max_hw))
    C = draw(st.integers(1, max_c))
    return ConvCase(
        N=draw(st.integers(1, max_n)),
        C=C,
        F=C,
        H=H,
        W=W,
        kernel=(kh, kw),
        stride=(draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride))),
        padding=(ph, pw),
    )


# Hand-picked corners that every conv/pool test runs as explicit examples.
CONV_CORNERS = [
    ConvCase(1, 1, 1, 7, 5, (3, 3), (2, 2), (1, 1)),  # odd sizes, stride 2, pad 1
    ConvCase(2, 3, 2, 5, 5, (1, 1), (1, 1), (0, 0)),  # 1x1 kernel
    ConvCase(1, 2, 3, 7, 6, (1, 1), (2, 2), (0, 0)),  # 1x1 kernel, stride 2 (shortcut B)
    ConvCase(2, 1, 2, 6, 7, (3, 2), (1, 2), (1, 0)),  # non-square kernel and stride
    ConvCase(3, 2, 1, 4, 4, (4, 4), (1, 1), (0, 0)),  # kernel = whole image
    ConvCase(1, 3, 3, 3, 3, (3, 3), (1, 1), (2, 2)),  # padding larger than half kernel
    ConvCase(2, 2, 2, 7, 7, (3, 3), (3, 3), (0, 0)),  # stride = kernel, leftover rows
]
POOL_CORNERS = [
    ConvCase(1, 1, 1, 7, 7, (3, 3), (2, 2), (1, 1)),  # ResNet stem pool, odd input
    ConvCase(2, 3, 3, 6, 6, (2, 2), (2, 2), (0, 0)),  # tiling windows
    ConvCase(1, 2, 2, 5, 7, (3, 2), (1, 2), (1, 1)),  # non-square, overlapping
    ConvCase(3, 1, 1, 4, 5, (4, 4), (1, 1), (2, 2)),  # kernel larger than stride, padded
]


def with_corners(corners):
    """Decorator: run the corners as explicit hypothesis examples (with seed=0)."""

    def wrap(test):
        for case in corners:
            test = example(case=case, seed=0)(test)
        return test

    return wrap


# Stride-1 convolutions whose flat grid (N*(H+ph)*(W+pw) positions, see
# minires/shifted_conv.py) spans several 256-column chunks, the last one
# partial. The hypothesis cases above are too small for more than one chunk.
SHIFTED_CHUNK_CASES = [
    ConvCase(2, 2, 3, 13, 13, (3, 3), (1, 1), (1, 1)),  # 392 positions: 256 + 136
    ConvCase(2, 3, 2, 11, 17, (5, 4), (1, 1), (2, 1)),  # 468: non-square kernel and padding
    ConvCase(4, 1, 2, 9, 9, (3, 3), (1, 1), (0, 0)),  # 324: no padding
]


@pytest.fixture
def small_shifted_chunks(monkeypatch):
    """conv2d on the shifted-GEMM path, in chunks of 256 columns (its minimum)."""
    import minires.functional as F
    from minires.backends import shifted_conv

    monkeypatch.setattr(shifted_conv, "CHUNK_VALUES", 1)
    previous = F.set_conv_algorithm("shifted")
    yield
    F.set_conv_algorithm(previous)


def grid_positions(case: ConvCase) -> int:
    """Positions on the shifted-GEMM grid of a stride-1 case: its chunked length."""
    return case.N * (case.H + case.padding[0]) * (case.W + case.padding[1])
