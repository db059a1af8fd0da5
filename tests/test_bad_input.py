"""Wrong input fails at once, with an error that names the op and the argument.

Every check asserts the exception type and, through ``match``, that the
message says which op and which argument is wrong (and what was given).
"""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
import minires.functional as F
from minires import nn


def t(*shape, dtype=np.float64, requires_grad=False):
    return mr.Tensor(np.ones(shape, dtype=dtype), requires_grad=requires_grad)


# --------------------------------------------------------------------------
# conv2d
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x_shape, w_shape, match",
    [
        ((3, 5, 5), (2, 3, 3, 3), r"conv2d: input must be 4-D .*got shape \(3, 5, 5\)"),
        ((1, 3, 5, 5, 1), (2, 3, 3, 3), r"conv2d: input must be 4-D"),
        ((1, 3, 5, 5), (2, 3, 3), r"conv2d: weight must be 4-D .*got shape \(2, 3, 3\)"),
    ],
)
def test_conv2d_wrong_ndim(x_shape, w_shape, match):
    with pytest.raises(ValueError, match=match):
        F.conv2d(t(*x_shape), t(*w_shape))


def test_conv2d_channel_mismatch():
    with pytest.raises(ValueError, match=r"conv2d: weight expects 3 input channels.*input has 4"):
        F.conv2d(t(1, 4, 5, 5), t(2, 3, 3, 3))


@pytest.mark.parametrize(
    "hw, kernel, padding, match",
    [
        ((2, 5), (3, 3), 0, r"conv2d: kernel 3x3 is larger than the padded input 2x5"),
        ((4, 4), (5, 2), 0, r"conv2d: kernel 5x2 is larger than the padded input 4x4"),
        ((1, 1), (4, 4), 1, r"conv2d: kernel 4x4 is larger than the padded input 3x3"),
    ],
)
def test_conv2d_kernel_larger_than_padded_input(hw, kernel, padding, match):
    with pytest.raises(ValueError, match=match):
        F.conv2d(t(1, 1, *hw), t(1, 1, *kernel), padding=padding)


@pytest.mark.parametrize("stride", [0, -1, (1, 0), (0, 2)])
def test_conv2d_stride_must_be_positive(stride):
    with pytest.raises(ValueError, match=r"conv2d: stride must be >= 1, got"):
        F.conv2d(t(1, 1, 5, 5), t(1, 1, 3, 3), stride=stride)


@pytest.mark.parametrize("kernel", [(0, 3), (3, 0)])
def test_conv2d_empty_kernel(kernel):
    # A (C_out, C_in, 0, 3) weight would otherwise give a silent, meaningless output.
    with pytest.raises(ValueError, match=r"conv2d: weight's kernel size must be >= 1, got"):
        F.conv2d(t(1, 1, 5, 5), t(1, 1, *kernel))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kernel_size": 0}, r"Conv2d: kernel_size must be >= 1, got 0$"),
        ({"kernel_size": (3, -1)}, r"Conv2d: kernel_size must be >= 1, got \(3, -1\)"),
        ({"kernel_size": 3, "stride": 0}, r"Conv2d: stride must be >= 1, got 0$"),
        ({"kernel_size": 3, "padding": -1}, r"Conv2d: padding must be >= 0, got -1$"),
    ],
)
def test_conv2d_layer_checks_its_geometry(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nn.Conv2d(1, 2, **kwargs)


@pytest.mark.parametrize("padding", [-1, (0, -2)])
def test_conv2d_negative_padding(padding):
    with pytest.raises(ValueError, match=r"conv2d: padding must be >= 0, got"):
        F.conv2d(t(1, 1, 5, 5), t(1, 1, 3, 3), padding=padding)


@pytest.mark.parametrize("stride", [1.5, (1, 2, 3), "2"])
def test_conv2d_stride_of_wrong_type(stride):
    with pytest.raises(TypeError, match=r"conv2d: stride must be an int or a pair of ints"):
        F.conv2d(t(1, 1, 5, 5), t(1, 1, 3, 3), stride=stride)


def test_conv2d_mismatched_dtypes():
    with pytest.raises(
        TypeError, match=r"conv2d: weight has dtype float64 but input has .*float32"
    ):
        F.conv2d(t(1, 1, 5, 5, dtype=np.float32), t(1, 1, 3, 3, dtype=np.float64))
    with pytest.raises(TypeError, match=r"conv2d: bias has dtype float64 but input has .*float32"):
        F.conv2d(
            t(1, 1, 5, 5, dtype=np.float32),
            t(1, 1, 3, 3, dtype=np.float32),
            t(1, dtype=np.float64),
        )


def test_conv2d_integer_input():
    with pytest.raises(TypeError, match=r"conv2d: input must be a floating tensor, got dtype int"):
        F.conv2d(mr.Tensor(np.ones((1, 1, 3, 3), dtype=np.int64)), t(1, 1, 3, 3))


@pytest.mark.parametrize("b_shape", [(3,), (1, 2), ()])
def test_conv2d_wrong_bias_shape(b_shape):
    with pytest.raises(ValueError, match=r"conv2d: bias must have shape \(2,\), got"):
        F.conv2d(t(1, 1, 5, 5), t(2, 1, 3, 3), t(*b_shape))


# --------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_pool_bad_arguments(op):
    pool = getattr(F, op)
    x = t(1, 1, 4, 4)
    with pytest.raises(ValueError, match=rf"{op}: input must be 4-D"):
        pool(t(1, 4, 4), 2)
    with pytest.raises(ValueError, match=rf"{op}: kernel_size must be >= 1, got 0"):
        pool(x, 0)
    with pytest.raises(ValueError, match=rf"{op}: stride must be >= 1, got 0"):
        pool(x, 2, stride=0)
    with pytest.raises(ValueError, match=rf"{op}: padding must be >= 0, got -1"):
        pool(x, 2, padding=-1)
    with pytest.raises(ValueError, match=rf"{op}: padding should be at most half the kernel"):
        pool(x, 2, padding=2)
    with pytest.raises(ValueError, match=rf"{op}: kernel 5x5 is larger than the padded input 4x4"):
        pool(x, 5)


def test_adaptive_avg_pool2d_bad_arguments():
    with pytest.raises(ValueError, match=r"adaptive_avg_pool2d: input must be 4-D"):
        F.adaptive_avg_pool2d(t(2, 3), 1)
    with pytest.raises(ValueError, match=r"adaptive_avg_pool2d: output_size must be >= 1"):
        F.adaptive_avg_pool2d(t(1, 1, 4, 4), 0)
    with pytest.raises(ValueError, match=r"adaptive_avg_pool2d: output_size \(3, 3\) must divide"):
        F.adaptive_avg_pool2d(t(1, 1, 4, 4), 3)


# --------------------------------------------------------------------------
# linear, cross_entropy
# --------------------------------------------------------------------------


def test_linear_bad_arguments():
    with pytest.raises(ValueError, match=r"linear: input must be 2-D .*got shape \(2, 3, 4\)"):
        F.linear(t(2, 3, 4), t(5, 4))
    with pytest.raises(ValueError, match=r"linear: weight expects 4 input features.*input has 3"):
        F.linear(t(2, 3), t(5, 4))
    with pytest.raises(ValueError, match=r"linear: bias must have shape \(5,\), got \(4,\)"):
        F.linear(t(2, 4), t(5, 4), t(4))
    with pytest.raises(TypeError, match=r"linear: weight has dtype float32 but input has .*64"):
        F.linear(t(2, 4), t(5, 4, dtype=np.float32))


@pytest.mark.parametrize("labels", [np.array([0, 3]), np.array([-1, 0])])
def test_cross_entropy_labels_out_of_range(labels):
    with pytest.raises(ValueError, match=r"cross_entropy: target labels must be in \[0, 3\)"):
        F.cross_entropy(t(2, 3), labels)


@pytest.mark.parametrize("labels", [np.array([0, 1, 2]), np.array([0]), np.array([[0, 1]])])
def test_cross_entropy_labels_of_wrong_length(labels):
    with pytest.raises(ValueError, match=r"cross_entropy: target must be a 1-D array of 2 labels"):
        F.cross_entropy(t(2, 3), labels)


def test_cross_entropy_float_labels():
    with pytest.raises(TypeError, match=r"cross_entropy: target must hold integer .*float64"):
        F.cross_entropy(t(2, 3), np.array([0.0, 1.0]))


def test_cross_entropy_bad_input_and_reduction():
    with pytest.raises(ValueError, match=r"cross_entropy: input must be 2-D"):
        F.cross_entropy(t(2, 3, 1), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"cross_entropy: reduction must be one of"):
        F.cross_entropy(t(2, 3), np.array([0, 1]), reduction="avg")


# --------------------------------------------------------------------------
# batch_norm
# --------------------------------------------------------------------------


def test_batch_norm_eval_without_running_stats():
    with pytest.raises(ValueError, match=r"batch_norm: evaluation mode needs running_mean"):
        F.batch_norm(t(2, 3, 4, 4), None, None, training=False)


def test_batch_norm_only_one_running_stat():
    with pytest.raises(ValueError, match=r"batch_norm: give both running_mean and running_var"):
        F.batch_norm(t(2, 3), np.zeros(3), None, training=True)


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1, 1), (1, 2, 1)])
def test_batch_norm_training_with_one_value_per_channel(shape):
    with pytest.raises(ValueError, match=r"batch_norm: expected more than 1 value per channel"):
        F.batch_norm(t(*shape), None, None, training=True)


def test_batch_norm_one_value_per_channel_is_fine_in_eval():
    y = F.batch_norm(t(1, 3, 1, 1), np.zeros(3), np.ones(3), training=False, eps=0.0)
    np.testing.assert_array_equal(y.data, np.ones((1, 3, 1, 1)))


def test_batch_norm_buffer_and_param_checks():
    x = t(2, 3, 2, 2)
    with pytest.raises(ValueError, match=r"batch_norm: running_mean must have shape \(3,\)"):
        F.batch_norm(x, np.zeros(2), np.ones(3), training=True)
    with pytest.raises(TypeError, match=r"batch_norm: running_var has dtype float32, input has"):
        F.batch_norm(x, np.zeros(3), np.ones(3, np.float32), training=True)
    with pytest.raises(TypeError, match=r"batch_norm: running_mean must be a plain array"):
        F.batch_norm(x, mr.Tensor(np.zeros(3)), np.ones(3), training=True)
    with pytest.raises(ValueError, match=r"batch_norm: weight must have shape \(3,\), got \(2,\)"):
        F.batch_norm(x, None, None, t(2), t(3), training=True)
    with pytest.raises(TypeError, match=r"batch_norm: bias has dtype float32 but input has"):
        F.batch_norm(x, None, None, t(3), t(3, dtype=np.float32), training=True)
    with pytest.raises(ValueError, match=r"batch_norm: input must be 2-D to 4-D"):
        F.batch_norm(t(6), None, None, training=True)


def test_batch_norm_layer_wants_4d():
    with pytest.raises(ValueError, match=r"BatchNorm2d: expected 4-D input"):
        nn.BatchNorm2d(3)(t(2, 3))


# --------------------------------------------------------------------------
# Tensor ops
# --------------------------------------------------------------------------


def test_matmul_shape_mismatch():
    with pytest.raises(ValueError, match=r"matmul: inner dimensions differ: a is \(2, 3\), b is"):
        t(2, 3) @ t(4, 5)
    with pytest.raises(ValueError, match=r"matmul: expected operands with at least 2 dimensions"):
        t(3) @ t(3, 2)


def test_reshape_impossible():
    with pytest.raises(ValueError, match=r"reshape: cannot reshape .*\(2, 3\) \(6 elements\) into"):
        t(2, 3).reshape(4, 2)


def test_mixed_float_dtypes_in_arithmetic():
    a, b = t(3, dtype=np.float32), t(3, dtype=np.float64)
    for op, name in [
        (lambda: a + b, "add"),
        (lambda: a - b, "sub"),
        (lambda: a * b, "mul"),
        (lambda: a / b, "div"),
    ]:
        with pytest.raises(TypeError, match=rf"{name}: operands must have the same floating dtype"):
            op()
    with pytest.raises(TypeError, match=r"matmul: operands must have the same floating dtype"):
        t(2, 2, dtype=np.float32) @ t(2, 2)


def test_sum_axis_out_of_range():
    with pytest.raises(
        ValueError, match=r"sum: dim 2 is out of range for a 2-d tensor \(expected -2 to 1\)"
    ):
        t(2, 3).sum(dim=2)


def test_flatten_start_dim_out_of_range():
    with pytest.raises(ValueError, match=r"flatten: start_dim 2 is out of range for a 2-d tensor"):
        F.flatten(t(2, 3), 2)


def test_pow_with_tensor_exponent():
    with pytest.raises(TypeError, match=r"pow: the exponent must be a number"):
        t(2) ** t(2)


def test_item_of_many_elements():
    with pytest.raises(ValueError, match=r"item\(\): expected a tensor with one element"):
        t(2).item()


def test_tensor_to_unknown_device():
    with pytest.raises(ValueError, match=r"Tensor.to: expected 'cpu' or 'cuda', got 'tpu'"):
        t(2).to("tpu")


# --------------------------------------------------------------------------
# Modules and state dicts
# --------------------------------------------------------------------------


def _net():
    mr.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Linear(4, 3))


def test_load_state_dict_missing_keys():
    net = _net()
    state = dict(net.state_dict())
    del state["1.running_var"], state["0.bias"]
    with pytest.raises(RuntimeError, match=r"for Sequential: missing keys: 0\.bias"):
        net.load_state_dict(state)
    with pytest.raises(RuntimeError, match=r"1\.running_var"):
        net.load_state_dict(state)


def test_load_state_dict_unexpected_keys():
    net = _net()
    state = dict(net.state_dict())
    state["2.weight"] = np.ones(3)
    with pytest.raises(RuntimeError, match=r"unexpected keys: 2\.weight"):
        net.load_state_dict(state)


def test_load_state_dict_wrong_shape_changes_nothing():
    net = _net()
    before = {k: v.copy() for k, v in net.state_dict().items()}
    state = {k: np.full(np.shape(v), 9.0) for k, v in before.items()}
    state["3.weight"] = np.zeros((4, 3))  # transposed
    with pytest.raises(RuntimeError, match=r"3\.weight: expected shape \(3, 4\), got \(4, 3\)"):
        net.load_state_dict(state)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])  # all or nothing


def test_module_constructor_checks():
    with pytest.raises(ValueError, match=r"Conv2d: in_channels must be a positive int, got 0"):
        nn.Conv2d(0, 2, 3)
    with pytest.raises(ValueError, match=r"Linear: out_features must be a positive int, got -1"):
        nn.Linear(3, -1)
    with pytest.raises(ValueError, match=r"BatchNorm2d: num_features must be a positive int"):
        nn.BatchNorm2d(0)


def test_module_to_bad_targets():
    with pytest.raises(ValueError, match=r"Module.to: expected 'cpu', 'cuda' or a dtype"):
        _net().to("gpu0")
    with pytest.raises(TypeError, match=r"Module.to: expected a floating dtype, got int32"):
        _net().to(np.int32)


def test_register_buffer_rejects_tensors():
    with pytest.raises(TypeError, match=r"register_buffer: stats must be a plain array"):
        nn.Module().register_buffer("stats", t(3))
