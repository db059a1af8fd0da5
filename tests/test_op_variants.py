"""The PyTorch options of the network ops (issue 13): conv2d's dilation, groups
and padding='same'|'valid'; the pools' ceil_mode and count_include_pad;
cross_entropy's weight, ignore_index, reduction='none' and label_smoothing.

Each is checked three ways: against the naive loops of tests/naive.py where
they have the option (conv2d), against PyTorch (values and gradients), and
against central differences in float64, on shapes drawn by hypothesis, on
both CPU backends (the fast one and the im2col reference). The CUDA twins
are compared with numpy_backend in tests/test_cuda_kernels_cpu.py (and on a
GPU in tests/test_cuda_backend_gpu.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import naive
import numpy as np
import pytest
from conftest import kink_free
from hypothesis import assume, example, given
from hypothesis import strategies as st

import minires as mr
import minires.functional as F
from minires import nn
from minires.backends import cpu_backend, layout, numpy_backend, shifted_conv

# torch warns that 'same' with an even span copies the input (so does minires).
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")
seeds = st.integers(0, 2**32 - 1)
algorithms = pytest.mark.parametrize("algorithm", ["auto", "im2col"])


@contextmanager
def conv_algorithm(name: str):
    previous = F.set_conv_algorithm(name)
    try:
        yield
    finally:
        F.set_conv_algorithm(previous)


def _torch():
    return pytest.importorskip("torch")


def _leaves(*arrays):
    return [mr.Tensor(np.array(a, dtype=np.float64), requires_grad=True) for a in arrays]


def _both(ours, theirs, arrays, upstream_seed=0):
    """Run ``ours`` on minires leaves and ``theirs`` on torch leaves made from
    the same arrays; backward the same random upstream gradient through both.
    Returns ((y, grads), (y, grads)) as NumPy arrays."""
    torch = _torch()
    mine = _leaves(*arrays)
    tl = [torch.tensor(np.array(a, dtype=np.float64), requires_grad=True) for a in arrays]
    y = ours(*mine)
    t = theirs(*tl)
    gy = np.random.default_rng(upstream_seed).standard_normal(tuple(t.shape))
    t.backward(torch.from_numpy(gy))
    y.backward(mr.Tensor(gy))
    return (y.data, [m.grad for m in mine]), (t.detach().numpy(), [u.grad.numpy() for u in tl])


def _assert_same(got, want, rtol=1e-10, atol=1e-12):
    (y, grads), (ty, tgrads) = got, want
    assert y.shape == ty.shape
    np.testing.assert_allclose(y, ty, rtol=rtol, atol=atol, equal_nan=True)
    for g, tg in zip(grads, tgrads):
        np.testing.assert_allclose(g, tg, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------
# conv2d: dilation, groups, padding='same' | 'valid'
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantConv:
    N: int
    C: int
    F: int
    H: int
    W: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: str | tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    @property
    def shapes(self):
        return (
            (self.N, self.C, self.H, self.W),
            (self.F, self.C // self.groups, *self.kernel),
            (self.F,),
        )

    @property
    def args(self):
        return self.stride, self.padding, self.dilation, self.groups


@st.composite
def variant_convs(draw, max_hw: int = 7, strings: bool = True) -> VariantConv:
    """Dilation 1..3, groups 1..3 (depthwise, with a channel multiplier, half
    the time), stride 1..2, and padding an int pair or, with ``strings``,
    'same' (stride 1 only) or 'valid'."""
    groups = draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    per_in = 1 if depthwise else draw(st.integers(1, 2))
    per_out = draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    kinds = ["pair", "same", "valid"] if strings else ["pair"]
    kind = draw(st.sampled_from(kinds))
    if kind == "same":
        stride = (1, 1)
    padding: str | tuple[int, int] = (
        (draw(st.integers(0, 2)), draw(st.integers(0, 2))) if kind == "pair" else kind
    )
    pads = padding if kind == "pair" else (0, 0)
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    low_h = 1 if kind == "same" else max(1, span_h - 2 * pads[0])
    low_w = 1 if kind == "same" else max(1, span_w - 2 * pads[1])
    H = draw(st.integers(low_h, max(low_h, max_hw)))
    W = draw(st.integers(low_w, max(low_w, max_hw)))
    return VariantConv(
        N=draw(st.integers(1, 2)),
        C=groups * per_in,
        F=groups * per_out,
        H=H,
        W=W,
        kernel=(kh, kw),
        stride=stride,
        padding=padding,
        dilation=(dh, dw),
        groups=groups,
    )


# Hand-picked: depthwise 3x3, ResNeXt-like groups, dilated 'same' with an
# even span (the odd pixel of padding goes to the bottom/right), 'valid'.
VARIANT_CORNERS = [
    VariantConv(2, 4, 4, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1), 4),  # depthwise
    VariantConv(1, 4, 8, 7, 7, (3, 3), (2, 2), (1, 1), (1, 1), 4),  # depthwise x2, stride 2
    VariantConv(2, 8, 8, 5, 6, (3, 3), (1, 1), (1, 1), (1, 1), 2),  # ResNeXt-like: 4 per group
    VariantConv(1, 2, 3, 6, 7, (2, 4), (1, 1), "same", (1, 1), 1),  # even kernel: asymmetric
    VariantConv(1, 2, 2, 7, 6, (3, 2), (1, 1), "same", (2, 3), 2),  # dilated 'same', groups
    VariantConv(2, 3, 2, 6, 6, (3, 3), (1, 2), "valid", (2, 1), 1),  # 'valid' is padding 0
    VariantConv(1, 1, 1, 9, 9, (3, 3), (1, 1), (0, 0), (4, 4), 1),  # span = whole image
]


def _conv(case: VariantConv):
    return lambda x, w, b: F.conv2d(x, w, b, *case.args)


def _torch_conv(case: VariantConv):
    tf = _torch().nn.functional
    return lambda x, w, b: tf.conv2d(x, w, b, *case.args)


def _arrays(case: VariantConv, seed: int):
    r = np.random.default_rng(seed)
    return [r.standard_normal(s) for s in case.shapes]


def _with_variant_corners(test):
    for case in VARIANT_CORNERS:
        test = example(case=case, seed=0)(test)
    return test


@algorithms
@_with_variant_corners
@given(case=variant_convs(), seed=seeds)
def test_conv2d_variants_match_torch(algorithm, case, seed):
    """Values and all three gradients equal torch.nn.functional.conv2d's."""
    arrays = _arrays(case, seed)
    with conv_algorithm(algorithm):
        got, want = _both(_conv(case), _torch_conv(case), arrays, seed)
    _assert_same(got, want)


@algorithms
@given(case=variant_convs(strings=False), seed=seeds)
def test_conv2d_variants_match_naive(algorithm, case, seed):
    """The definition, loop by loop (tests/naive.py), with dilation and groups."""
    x, w, b = _arrays(case, seed)
    with conv_algorithm(algorithm):
        y = F.conv2d(mr.Tensor(x), mr.Tensor(w), mr.Tensor(b), *case.args)
    np.testing.assert_allclose(y.data, naive.conv2d(x, w, b, *case.args), rtol=1e-12, atol=1e-12)


@algorithms
@_with_variant_corners
@given(case=variant_convs(max_hw=6), seed=seeds)
def test_conv2d_variants_gradcheck(algorithm, case, seed):
    x, w, b = _leaves(*_arrays(case, seed))
    with conv_algorithm(algorithm):
        assert mr.gradcheck(_conv(case), (x, w, b), mode="elementwise", seed=seed)


@pytest.mark.parametrize(
    "case",
    [
        VariantConv(2, 2, 3, 13, 13, (3, 3), (1, 1), (2, 2), (2, 2), 1),
        VariantConv(2, 3, 2, 11, 17, (3, 2), (1, 1), "same", (2, 3), 1),
    ],
)
def test_conv2d_dilated_shifted_in_several_chunks(small_shifted_chunks, monkeypatch, case):
    """A dilated kernel is still a set of constant shifts: the shifted-GEMM
    path takes it, over several column chunks, and agrees with torch."""
    calls = []
    forward = shifted_conv.conv_forward
    monkeypatch.setattr(shifted_conv, "conv_forward", lambda *a: calls.append(a[2]) or forward(*a))
    x, w, b = _arrays(case, 1)
    _assert_same(*_both(_conv(case), _torch_conv(case), [x, w, b]))
    assert calls and calls[0].L > 256 and calls[0].dh == case.dilation[0] > 1
    assert mr.gradcheck(_conv(case), _leaves(x, w, b), mode="directional")


def test_conv2d_fast_path_choice():
    """Shifted GEMMs for one group at stride 1 (dilated too, when the padding
    fits the shared-gap layout); im2col and a batched GEMM for groups > 1."""
    x = np.ones((1, 4, 8, 8))
    w1, w2 = np.ones((4, 4, 3, 3)), np.ones((4, 2, 3, 3))
    geometry = shifted_conv.Geometry
    assert isinstance(
        cpu_backend.conv2d_forward(x, w1, None, (1, 1), (2, 2), (2, 2))[1][2], geometry
    )
    assert not isinstance(
        cpu_backend.conv2d_forward(x, w2, None, (1, 1), (1, 1), (1, 1), 2)[1][2], geometry
    )
    # span 3 (dilation 1) cannot share a gap of 3 padding rows: im2col.
    assert not isinstance(cpu_backend.conv2d_forward(x, w1, None, (1, 1), (3, 3))[1][2], geometry)
    assert shifted_conv.supported(3, 3, 3, 3, 2, 2) and not shifted_conv.supported(3, 3, 3, 3)


def test_conv2d_same_puts_the_odd_padding_bottom_right():
    """An even span needs an odd total padding; PyTorch puts the extra pixel
    after the image. The output has the input's size."""
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.zeros((1, 1, 2, 2))
    w[0, 0, 1, 1] = 1.0  # picks the pixel one down and one right of the window's corner
    y = F.conv2d(mr.Tensor(x), mr.Tensor(w), padding="same")
    assert y.shape == (1, 1, 4, 4)
    expected = np.zeros((4, 4))
    expected[:3, :3] = x[0, 0, 1:, 1:]
    np.testing.assert_array_equal(y.data[0, 0], expected)
    valid = F.conv2d(mr.Tensor(x), mr.Tensor(w), padding="valid")
    np.testing.assert_array_equal(valid.data, F.conv2d(mr.Tensor(x), mr.Tensor(w)).data)


def test_numpy_im2col_reads_dilated_offsets():
    """Row (c, i, j) of the reference im2col holds x[c, n, oh*sh + i*dh - ph, ...]."""
    x = np.random.default_rng(0).standard_normal((2, 1, 7, 8))
    # kernel 2x3, stride (1, 2), padding (1, 0), dilation (3, 2): OH = 6, OW = 2
    col = numpy_backend.im2col(x, 2, 3, 1, 2, 1, 0, 3, 2).reshape(2, 2, 3, 1, 6, 2)
    for c, i, j, oh, ow in np.ndindex(2, 2, 3, 6, 2):
        r, s = oh + 3 * i - 1, 2 * ow + 2 * j
        value = x[c, 0, r, s] if 0 <= r < 7 and 0 <= s < 8 else 0.0
        assert col[c, i, j, 0, oh, ow] == value
    gcol = np.random.default_rng(1).standard_normal((12, 12))
    back = numpy_backend.col2im(gcol, x.shape, 2, 3, 1, 2, 1, 0, 3, 2)
    lhs = np.vdot(numpy_backend.im2col(x, 2, 3, 1, 2, 1, 0, 3, 2), gcol)
    assert abs(lhs - np.vdot(x, back)) < 1e-10 * abs(lhs)  # col2im is im2col's adjoint


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"dilation": 0}, ValueError, r"conv2d: dilation must be >= 1, got 0"),
        ({"dilation": 1.5}, TypeError, r"conv2d: dilation must be an int or a pair"),
        ({"groups": 0}, ValueError, r"conv2d: groups must be >= 1, got 0"),
        ({"groups": 2.0}, TypeError, r"conv2d: groups must be an int"),
        ({"groups": 4}, ValueError, r"conv2d: groups=4 must divide the output channels.* 6"),
        ({"groups": 3}, ValueError, r"conv2d: groups=3 must divide the input channels.* 4"),
        ({"groups": 2}, ValueError, r"weight expects 8 input channels \(4 per group x groups=2"),
        ({"padding": "full"}, ValueError, r"conv2d: padding must be 'same', 'valid', an int"),
        ({"padding": "same", "stride": 2}, ValueError, r"'same' is not supported for strided"),
        ({"dilation": 3}, ValueError, r"kernel 3x3 with dilation \(3, 3\) spans 7x7 and is larger"),
    ],
)
def test_conv2d_variant_errors(kwargs, error, match):
    x = mr.Tensor(np.ones((1, 4, 5, 5)))
    w = mr.Tensor(np.ones((6, 4, 3, 3)))
    with pytest.raises(error, match=match):
        F.conv2d(x, w, **kwargs)


def test_conv2d_layer_variants_match_torch():
    """nn.Conv2d takes dilation, groups and string padding in torch's order;
    its weight is (out, in/groups, kh, kw), initialised with torch's bound."""
    torch = _torch()
    mr.manual_seed(0)
    ours = nn.Conv2d(6, 9, 3, 1, "same", 2, 3).to(np.float64)
    theirs = torch.nn.Conv2d(6, 9, 3, 1, "same", 2, 3).double()
    assert ours.weight.shape == tuple(theirs.weight.shape) == (9, 2, 3, 3)
    bound = 1 / np.sqrt(2 * 3 * 3)  # fan_in counts the inputs of one group
    assert np.abs(ours.weight.data).max() <= bound and np.abs(ours.weight.data).max() > bound / 2
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(ours.weight.data))
        theirs.bias.copy_(torch.from_numpy(ours.bias.data))
    x = np.random.default_rng(0).standard_normal((2, 6, 5, 7))
    np.testing.assert_allclose(
        ours(mr.Tensor(x)).data, theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-12
    )
    assert "dilation=(2, 2), groups=3" in repr(ours) and "padding='same'" in repr(ours)
    with pytest.raises(ValueError, match=r"Conv2d: in_channels must be divisible by groups"):
        nn.Conv2d(5, 6, 3, groups=2)
    with pytest.raises(ValueError, match=r"Conv2d: padding='same' is not supported for strided"):
        nn.Conv2d(4, 4, 3, stride=2, padding="same")


# --------------------------------------------------------------------------
# Pools: ceil_mode and count_include_pad
# --------------------------------------------------------------------------


@st.composite
def pool_variants(draw, max_hw: int = 7):
    """Legal windows (padding at most half the kernel), ceil_mode, count_include_pad."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    ceil_mode = draw(st.booleans())
    H, W = draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
    OH = layout.pool_out_size(H, kh, sh, ph, ceil_mode)
    OW = layout.pool_out_size(W, kw, sw, pw, ceil_mode)
    assume(OH >= 1 and OW >= 1)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), H, W)
    return shape, (kh, kw), (sh, sw), (ph, pw), ceil_mode, draw(st.booleans())


POOL_VARIANT_CORNERS = [
    ((1, 1, 6, 6), (3, 3), (2, 2), (1, 1), True, False),  # a last window past the padding
    ((1, 1, 5, 5), (2, 2), (2, 2), (1, 1), True, True),  # it would start in the padding: dropped
    ((1, 2, 4, 4), (5, 5), (2, 2), (0, 0), True, False),  # kernel > input, allowed by ceil_mode
    ((2, 1, 7, 5), (3, 2), (2, 3), (1, 1), False, False),  # padding left out of the divisor
]


def _with_pool_corners(test):
    for case in POOL_VARIANT_CORNERS:
        test = example(case=case, seed=0)(test)
    return test


@_with_pool_corners
@given(case=pool_variants(), seed=seeds)
def test_pool_variants_match_torch(case, seed):
    tf = _torch().nn.functional
    shape, k, s, p, ceil_mode, count_include_pad = case
    x = kink_free(np.random.default_rng(seed), shape)
    avg = {"ceil_mode": ceil_mode, "count_include_pad": count_include_pad}
    for ours, theirs in (
        (
            lambda t: F.max_pool2d(t, k, s, p, ceil_mode=ceil_mode),
            lambda t: tf.max_pool2d(t, k, s, p, ceil_mode=ceil_mode),
        ),
        (lambda t: F.avg_pool2d(t, k, s, p, **avg), lambda t: tf.avg_pool2d(t, k, s, p, **avg)),
    ):
        _assert_same(*_both(ours, theirs, [x], seed))


@_with_pool_corners
@given(case=pool_variants(max_hw=6), seed=seeds)
def test_pool_variants_gradcheck(case, seed):
    shape, k, s, p, ceil_mode, count_include_pad = case
    (x,) = _leaves(kink_free(np.random.default_rng(seed), shape))
    assert mr.gradcheck(
        lambda t: F.max_pool2d(t, k, s, p, ceil_mode=ceil_mode), [x], mode="elementwise"
    )
    assert mr.gradcheck(
        lambda t: F.avg_pool2d(t, k, s, p, ceil_mode, count_include_pad), [x], mode="elementwise"
    )


@pytest.mark.parametrize("size", range(1, 12))
@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (2, 2, 1), (3, 2, 1), (3, 3, 1), (4, 3, 2)])
def test_pool_out_size_is_torchs(size, k, s, p):
    """Output size, ceil_mode or not: the last window must start inside the
    input or its left padding."""
    tf = _torch().nn.functional
    torch = _torch()
    for ceil_mode in (False, True):
        try:
            want = tf.max_pool2d(torch.zeros(1, 1, size, 1), (k, 1), (s, 1), (p, 0), 1, ceil_mode)
        except RuntimeError:  # output size too small
            with pytest.raises(ValueError, match="larger than the padded input"):
                F.max_pool2d(mr.Tensor(np.zeros((1, 1, size, 1))), (k, 1), (s, 1), (p, 0))
            continue
        assert layout.pool_out_size(size, k, s, p, ceil_mode) == want.shape[2]


def test_avg_pool_divisors():
    """One 3x3 window per corner of a 2x2 image of ones, padding 1, stride 2,
    ceil_mode: count_include_pad=True divides by the window inside the padded
    input, False by the pixels inside the image."""
    x = mr.Tensor(np.ones((1, 1, 3, 3)))
    with_pad = F.avg_pool2d(x, 2, 2, 1, ceil_mode=True, count_include_pad=True)
    without = F.avg_pool2d(x, 2, 2, 1, ceil_mode=True, count_include_pad=False)
    # windows start at -1 and 1; the second reaches row 2 of the padded 5 rows (-1..3).
    np.testing.assert_allclose(with_pad.data[0, 0], [[1 / 4, 2 / 4], [2 / 4, 4 / 4]])
    np.testing.assert_array_equal(without.data[0, 0], np.ones((2, 2)))


def test_pool_variant_errors_and_layers():
    x = mr.Tensor(np.ones((1, 1, 4, 4)))
    with pytest.raises(TypeError, match=r"max_pool2d: ceil_mode must be a bool, got 1"):
        F.max_pool2d(x, 2, ceil_mode=1)
    with pytest.raises(TypeError, match=r"avg_pool2d: count_include_pad must be a bool"):
        F.avg_pool2d(x, 2, count_include_pad=None)
    with pytest.raises(ValueError, match=r"kernel 6x6 is larger .* by the stride \(1, 1\) or more"):
        F.max_pool2d(x, 6, 1, ceil_mode=True)
    with pytest.raises(TypeError):  # ceil_mode is keyword-only (torch's 5th argument: dilation)
        F.max_pool2d(x, 2, 2, 0, True)
    y = np.random.default_rng(0).standard_normal((1, 2, 5, 5))
    np.testing.assert_array_equal(
        nn.MaxPool2d(2, ceil_mode=True)(mr.Tensor(y)).data,
        F.max_pool2d(mr.Tensor(y), 2, ceil_mode=True).data,
    )
    np.testing.assert_array_equal(
        nn.AvgPool2d(3, 2, 1, True, False)(mr.Tensor(y)).data,
        F.avg_pool2d(mr.Tensor(y), 3, 2, 1, ceil_mode=True, count_include_pad=False).data,
    )


# --------------------------------------------------------------------------
# cross_entropy: weight, ignore_index, reduction, label_smoothing
# --------------------------------------------------------------------------


@st.composite
def loss_variants(draw):
    N, K = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    ignore_index = draw(st.sampled_from([-100, 0, 2]))
    labels = np.array(draw(st.lists(st.integers(0, K - 1), min_size=N, max_size=N)))
    ignored = np.array(draw(st.lists(st.booleans(), min_size=N, max_size=N)))
    labels[ignored] = ignore_index
    weighted = draw(st.booleans())
    return {
        "labels": labels,
        "K": K,
        "weighted": weighted,
        "ignore_index": ignore_index,
        "reduction": draw(st.sampled_from(["none", "mean", "sum"])),
        "label_smoothing": draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
    }


def _loss_fns(case, weight):
    opts = {k: case[k] for k in ("ignore_index", "reduction", "label_smoothing")}
    torch = _torch()
    labels = case["labels"]
    tw = None if weight is None else torch.from_numpy(weight)
    ours = lambda z: F.cross_entropy(z, labels, weight, **opts)  # noqa: E731
    theirs = lambda z: torch.nn.functional.cross_entropy(  # noqa: E731
        z, torch.from_numpy(labels), tw, **opts
    )
    return ours, theirs


@given(case=loss_variants(), seed=seeds)
def test_cross_entropy_variants_match_torch(case, seed):
    r = np.random.default_rng(seed)
    logits = 3 * r.standard_normal((len(case["labels"]), case["K"]))
    weight = r.uniform(0.2, 3.0, case["K"]) if case["weighted"] else None
    _assert_same(*_both(*_loss_fns(case, weight), [logits], seed))


@given(case=loss_variants(), seed=seeds)
def test_cross_entropy_variants_gradcheck(case, seed):
    r = np.random.default_rng(seed)
    (logits,) = _leaves(3 * r.standard_normal((len(case["labels"]), case["K"])))
    weight = r.uniform(0.2, 3.0, case["K"]) if case["weighted"] else None
    ours, _ = _loss_fns(case, weight)
    assume(case["reduction"] != "mean" or (case["labels"] != case["ignore_index"]).any())
    assert mr.gradcheck(ours, [logits], mode="elementwise", seed=seed)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_every_row_ignored(reduction, label_smoothing):
    """The mean over no counted rows is NaN (0/0), as in torch, and the
    gradient is 0, not NaN; no NumPy warning either."""
    case = {
        "labels": np.array([-100, -100, -100]),
        "ignore_index": -100,
        "reduction": reduction,
        "label_smoothing": label_smoothing,
    }
    logits = np.random.default_rng(0).standard_normal((3, 4))
    with np.errstate(all="raise"):
        got, want = _both(*_loss_fns(case, np.linspace(0.5, 2, 4)), [logits])
    _assert_same(got, want)
    assert not got[1][0].any()


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_variants_on_an_empty_batch(reduction):
    case = {"labels": np.zeros(0, np.int64), "ignore_index": -100, "reduction": reduction}
    case["label_smoothing"] = 0.1
    with np.errstate(all="raise"):
        got, want = _both(*_loss_fns(case, np.ones(3)), [np.zeros((0, 3))])
    _assert_same(got, want)


def test_cross_entropy_float32_stays_float32():
    """Weights, smoothing, ignored rows and every reduction keep float32 float32."""
    r = np.random.default_rng(0)
    z = mr.Tensor(r.standard_normal((4, 3)).astype(np.float32), requires_grad=True)
    w = np.array([0.5, 1.0, 2.0], np.float32)
    for reduction in ("none", "mean", "sum"):
        z.grad = None
        loss = F.cross_entropy(z, np.array([0, -100, 2, 1]), w, -100, reduction, 0.1)
        loss.sum().backward()
        assert loss.dtype == np.float32 and z.grad.dtype == np.float32


def test_cross_entropy_positional_order_is_torchs():
    """weight, ignore_index, reduction, label_smoothing: torch's order."""
    _, theirs = _loss_fns(
        {
            "labels": np.array([1, 0, 2]),
            "ignore_index": 0,
            "reduction": "sum",
            "label_smoothing": 0.3,
        },
        np.array([1.0, 2.0, 3.0]),
    )
    z = np.random.default_rng(3).standard_normal((3, 3))
    mine = F.cross_entropy(
        mr.Tensor(z), np.array([1, 0, 2]), np.array([1.0, 2.0, 3.0]), 0, "sum", 0.3
    )
    torch = _torch()
    assert mine.item() == pytest.approx(theirs(torch.from_numpy(z)).item(), rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"reduction": "avg"}, ValueError, r"reduction must be one of \('none', 'mean', 'sum'\)"),
        ({"label_smoothing": 1.5}, ValueError, r"label_smoothing must be in \[0, 1\], got 1.5"),
        ({"label_smoothing": "0.1"}, TypeError, r"label_smoothing must be a float"),
        ({"weight": np.ones(4)}, ValueError, r"weight must have shape \(3,\), got \(4,\)"),
        ({"weight": np.ones(3, np.float32)}, TypeError, r"weight has dtype float32 but input"),
        ({"weight": [1.0, 1.0, 1.0]}, TypeError, r"weight must be an array or a Tensor"),
        ({"ignore_index": 1.0}, TypeError, r"ignore_index must be an int"),
    ],
)
def test_cross_entropy_variant_errors(kwargs, error, match):
    with pytest.raises(error, match=f"cross_entropy: {match}"):
        F.cross_entropy(mr.Tensor(np.zeros((2, 3))), np.array([0, 1]), **kwargs)


def test_cross_entropy_labels_may_equal_ignore_index_outside_the_classes():
    z = mr.Tensor(np.zeros((2, 3)))
    F.cross_entropy(z, np.array([-7, 1]), ignore_index=-7)
    with pytest.raises(
        ValueError, match=r"in \[0, 3\) \(or equal ignore_index=-100\), got .*\[5, 5\]"
    ):
        F.cross_entropy(z, np.array([5, -100]))
