"""Every error names the op and the offending shapes or values."""
from __future__ import annotations

import numpy as np
import pytest

import tinygrad_cnn.functional as F
from tinygrad_cnn import Tensor


def t(*shape, dtype=np.float64, grad=False):
    return Tensor(np.zeros(shape, dtype=dtype), requires_grad=grad)


# ------------------------------------------------------------------------------ shapes


def test_matmul_shape_mismatch():
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(4, 5\) are not aligned.*\(3\).*\(4\)"):
        t(2, 3) @ t(4, 5)
    with pytest.raises(ValueError, match=r"matmul: shapes \(3,\) and \(2,\)"):
        t(3) @ t(2)
    with pytest.raises(ValueError, match=r"matmul: batch shapes \(2,\) and \(3,\)"):
        t(2, 1, 4) @ t(3, 4, 1)
    with pytest.raises(ValueError, match=r"matmul: operands must be at least 1-d.*\(\).*\(3,\)"):
        t() @ t(3)


@pytest.mark.parametrize("op, name", [
    (lambda a, b: a + b, "add"), (lambda a, b: a - b, "sub"), (lambda a, b: a * b, "mul"),
    (lambda a, b: a / b, "div"), (lambda a, b: a.maximum(b), "maximum"),
])
def test_broadcasting_mismatch(op, name):
    with pytest.raises(ValueError, match=rf"{name}: shapes \(2, 3\) and \(4,\) do not broadcast"):
        op(t(2, 3), t(4))


def test_conv2d_channel_mismatch():
    with pytest.raises(ValueError, match=r"conv2d: input has 3 channels \(shape \(1, 3, 5, 5\)\).*\(4, 2, 3, 3\)"):
        F.conv2d(t(1, 3, 5, 5), t(4, 2, 3, 3))


def test_conv2d_bad_ranks_and_bias():
    with pytest.raises(ValueError, match=r"conv2d: expects a 4-d NCHW input; got shape \(3, 5, 5\)"):
        F.conv2d(t(3, 5, 5), t(4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"conv2d: weight must be 4-d.*\(4, 3, 3\)"):
        F.conv2d(t(1, 3, 5, 5), t(4, 3, 3))
    with pytest.raises(ValueError, match=r"conv2d: bias must have shape \(4,\); got \(3,\)"):
        F.conv2d(t(1, 3, 5, 5), t(4, 3, 3, 3), t(3))


def test_reshape_size_mismatch():
    with pytest.raises(ValueError, match=r"reshape: cannot view a tensor of shape \(2, 3\) \(6 elements\) as shape \(4, 2\)"):
        t(2, 3).reshape(4, 2)


def test_transpose_bad_axes():
    with pytest.raises(ValueError, match=r"transpose: axes \(0, 0\) are not a permutation.*\(2, 3\)"):
        t(2, 3).permute(0, 0)


def test_getitem_out_of_range():
    with pytest.raises(IndexError, match=r"getitem: index 5 is invalid for a tensor of shape \(3,\)"):
        t(3)[5]


@pytest.mark.parametrize("fn, name", [
    (lambda x, a: x.sum(axis=a), "sum"), (lambda x, a: x.max(axis=a), "max"),
    (lambda x, a: x.log_softmax(axis=a), "log_softmax"),
])
def test_reduction_axis_out_of_range(fn, name):
    with pytest.raises(ValueError, match=rf"{name}: axis 2 is out of range for a 2-d tensor"):
        fn(t(2, 3), 2)


def test_linear_feature_mismatch():
    with pytest.raises(ValueError, match=r"linear: input of shape \(2, 3\) has 3 features.*\(4, 5\) expects 5"):
        F.linear(t(2, 3), t(4, 5))


def test_col2im_columns_do_not_fit():
    with pytest.raises(ValueError, match=r"col2im: columns of shape \(5, 4\) do not fit input shape "
                                         r"\(1, 1, 3, 3\) with kernel \(2, 2\): expected \(4, 4\)"):
        F.col2im(t(5, 4), (1, 1, 3, 3), 2)


# ---------------------------------------------------------------- window hyper-parameters


@pytest.mark.parametrize("name, call", [
    ("im2col", lambda x, **kw: F.im2col(x, 2, **kw)),
    ("max_pool2d", lambda x, **kw: F.max_pool2d(x, 2, **kw)),
    ("conv2d", lambda x, **kw: F.conv2d(x, t(1, 1, 2, 2), **kw)),
])
def test_negative_padding(name, call):
    with pytest.raises(ValueError, match=rf"{name}: padding must be non-negative; got \(-1, -1\)"):
        call(t(1, 1, 4, 4), padding=-1)


def test_negative_padding_in_pad():
    with pytest.raises(ValueError, match=r"pad: padding must be non-negative; got \(\(0, -1\),\)"):
        F.pad(t(3), ((0, -1),))


@pytest.mark.parametrize("name, call", [
    ("im2col", lambda x, **kw: F.im2col(x, 2, **kw)),
    ("col2im", lambda x, **kw: F.col2im(t(4, 9), x.shape, 2, **kw)),
    ("max_pool2d", lambda x, **kw: F.max_pool2d(x, 2, **kw)),
    ("conv2d", lambda x, **kw: F.conv2d(x, t(1, 1, 2, 2), **kw)),
])
def test_zero_stride(name, call):
    with pytest.raises(ValueError, match=rf"{name}: stride must be positive; got \(1, 0\)"):
        call(t(1, 1, 4, 4), stride=(1, 0))


@pytest.mark.parametrize("name, call", [
    ("im2col", lambda x: F.im2col(x, (6, 2), padding=(1, 0))),
    ("max_pool2d", lambda x: F.max_pool2d(x, (6, 2), padding=(1, 0))),
    ("conv2d", lambda x: F.conv2d(x, t(1, 1, 6, 2), padding=(1, 0))),
])
def test_kernel_larger_than_padded_input(name, call):
    with pytest.raises(ValueError, match=rf"{name}: kernel 6x2 is larger than the padded input 5x3 "
                                         rf"\(input 3x3, padding \(1, 0\)\)"):
        call(t(1, 1, 3, 3))


def test_max_pool2d_padding_over_half_the_kernel():
    with pytest.raises(ValueError, match=r"max_pool2d: padding \(2, 2\) must be at most half the kernel \(3, 3\)"):
        F.max_pool2d(t(1, 1, 5, 5), 3, padding=2)


def test_windows_need_nchw():
    with pytest.raises(ValueError, match=r"im2col: expects a 4-d NCHW tensor; got shape \(3, 4, 4\)"):
        F.im2col(t(3, 4, 4), 2)


@pytest.mark.parametrize("name, call", [
    ("max_pool2d", lambda x: F.max_pool2d(x, 2)),
    ("avg_pool2d", lambda x: F.avg_pool2d(x, 2)),
    ("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, 2)),
    ("adaptive_max_pool2d", lambda x: F.adaptive_max_pool2d(x, 2)),
])
def test_pools_need_nchw_or_chw(name, call):
    """As PyTorch's, the pools take an unbatched (C, H, W) input too, but nothing else."""
    with pytest.raises(ValueError, match=rf"{name}: expects a 4-d NCHW or 3-d CHW tensor; got shape \(4, 4\)"):
        call(t(4, 4))
    assert call(t(3, 4, 4)).shape == (3, 2, 2)


def test_kernel_size_must_be_ints():
    with pytest.raises(TypeError, match=r"im2col: kernel_size must be an int or a pair of ints; got 2.5"):
        F.im2col(t(1, 1, 4, 4), 2.5)


# ------------------------------------------------------------------------------ dtypes


def test_requires_grad_on_an_int_tensor():
    with pytest.raises(TypeError, match="only floating-point tensors can require grad; got dtype int64"):
        Tensor(np.arange(3), requires_grad=True)
    with pytest.raises(TypeError, match="requires_grad_: only floating-point.*int32"):
        Tensor(np.arange(3, dtype=np.int32)).requires_grad_()


def test_max_pool2d_on_ints():
    with pytest.raises(TypeError, match="max_pool2d: expects a floating-point tensor; got dtype int64"):
        F.max_pool2d(Tensor(np.zeros((1, 1, 4, 4), dtype=np.int64)), 2)


def test_cast_to_an_int_dtype_through_the_op():
    from tinygrad_cnn import ops
    with pytest.raises(TypeError, match="cast: converts between floating dtypes only; got float64 -> int64"):
        ops.Cast.apply(t(2), dtype=np.int64)


def test_pow_needs_a_number_or_tensor_exponent():
    with pytest.raises(TypeError, match="pow: the exponent must be a number or a tensor; got str"):
        t(2) ** "2"
    with pytest.raises(TypeError, match="pow: a number raised to a tensor needs a positive"):
        (-2.0) ** t(2)


# ------------------------------------------------------------------------ cross_entropy


def test_cross_entropy_targets_out_of_range():
    with pytest.raises(ValueError, match=r"cross_entropy: target classes must lie in \[0, 3\); got values from 0 to 3"):
        F.cross_entropy(t(2, 3), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"cross_entropy: target classes must lie in \[0, 3\); got values from -1 to 1"):
        F.cross_entropy(t(2, 3), np.array([-1, 1]))


def test_cross_entropy_targets_wrong_shape():
    with pytest.raises(ValueError, match=r"cross_entropy: targets must have shape \(2,\) for logits of shape "
                                         r"\(2, 3\); got \(2, 1\)"):
        F.cross_entropy(t(2, 3), np.array([[0], [1]]))


def test_cross_entropy_float_targets():
    with pytest.raises(TypeError, match="cross_entropy: targets must be integer class indices; got dtype float64"):
        F.cross_entropy(t(2, 3), np.array([0.0, 1.0]))


def test_cross_entropy_bad_arguments():
    with pytest.raises(ValueError, match=r"cross_entropy: targets must have shape \(2, 4\) for logits of shape "
                                         r"\(2, 3, 4\); got \(2,\)"):
        F.cross_entropy(t(2, 3, 4), np.array([0, 1]))  # (N, C, d) logits take (N, d) targets
    with pytest.raises(ValueError, match=r"cross_entropy: expects logits of shape \(N, C\), \(N, C, d1, ...\) or "
                                         r"\(C,\); got a 0-d tensor"):
        F.cross_entropy(t(), np.array(0))
    with pytest.raises(ValueError, match="cross_entropy: reduction must be 'mean', 'sum' or 'none'; got 'avg'"):
        F.cross_entropy(t(2, 3), np.array([0, 1]), reduction="avg")
    with pytest.raises(ValueError, match=r"cross_entropy: label_smoothing must lie in \[0, 1\]; got 1.5"):
        F.cross_entropy(t(2, 3), np.array([0, 1]), label_smoothing=1.5)


# --------------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.max_pool2d(t(1, 1, 4, 4), 2, dilation=0), ValueError,
     r"max_pool2d: dilation must be positive; got \(0, 0\)"),
    (lambda: F.max_pool2d(t(1, 1, 4, 4), 2, padding=(1, -1, 0, 0)), ValueError,
     r"max_pool2d: padding must be non-negative; got \(1, -1, 0, 0\)"),
    (lambda: F.max_pool2d(t(1, 1, 4, 4), 2, padding=(1, 0, 1)), TypeError,
     r"max_pool2d: padding must be an int, an \(h, w\) pair or a \(top, bottom, left, right\) tuple of ints; "
     r"got \(1, 0, 1\)"),
    (lambda: F.max_pool2d(t(1, 1, 9, 9), 3, padding=(0, 2, 0, 0)), ValueError,
     r"max_pool2d: padding \(0, 2, 0, 0\) must be at most half the kernel \(3, 3\)"),
    (lambda: F.max_pool2d(t(1, 1, 9, 9), 3, padding=1, dilation=3), ValueError,  # PyTorch's rule: the kernel
     None),
    (lambda: F.max_pool2d(t(1, 1, 4, 4), 3, dilation=2), ValueError,
     r"max_pool2d: kernel 3x3 with dilation \(2, 2\) \(spanning 5x5\) is larger than the padded input 4x4 "
     r"\(input 4x4, padding \(0, 0\)\)"),
    (lambda: F.avg_pool2d(t(1, 1, 4, 4), 3, padding=2), ValueError,
     r"avg_pool2d: padding \(2, 2\) must be at most half the kernel \(3, 3\)"),
    (lambda: F.avg_pool2d(t(1, 1, 2, 5), (4, 2)), ValueError,
     r"avg_pool2d: kernel 4x2 is larger than the padded input 2x5 \(input 2x5, padding \(0, 0\)\)"),
    (lambda: F.avg_pool2d(t(1, 1, 4, 4), 2, divisor_override=0), ValueError,
     r"avg_pool2d: divisor_override must be non-zero; got 0"),
    (lambda: F.avg_pool2d(t(1, 1, 4, 4), 2, divisor_override=2.5), TypeError,
     r"avg_pool2d: divisor_override must be an int or None; got 2.5"),
    (lambda: F.avg_pool2d(t(1, 1, 4, 4), 2, stride=(0, 1)), ValueError,
     r"avg_pool2d: stride must be positive; got \(0, 1\)"),
    (lambda: F.avg_pool2d(Tensor(np.zeros((1, 1, 4, 4), dtype=np.int64)), 2), TypeError,
     r"avg_pool2d: expects a floating-point tensor; got dtype int64"),
    (lambda: F.adaptive_avg_pool2d(t(1, 1, 4, 4), 0), ValueError,
     r"adaptive_avg_pool2d: output_size must be positive integers \(or None to keep a side\); got 0"),
    (lambda: F.adaptive_max_pool2d(t(1, 1, 4, 4), (2, -1)), ValueError,
     r"adaptive_max_pool2d: output_size must be positive integers \(or None to keep a side\); got \(2, -1\)"),
    (lambda: F.adaptive_avg_pool2d(t(1, 1, 4, 4), (1, 2, 3)), ValueError,
     r"adaptive_avg_pool2d: output_size must be an int or an \(h, w\) pair \(None keeps a side\); got \(1, 2, 3\)"),
    (lambda: F.adaptive_avg_pool2d(t(1, 1, 4, 4), 1.5), ValueError,
     r"adaptive_avg_pool2d: output_size must be positive integers"),
    (lambda: F.adaptive_avg_pool2d(t(1, 1, 0, 4), 2), ValueError,
     r"adaptive_avg_pool2d: expects a non-empty input; got shape \(1, 1, 0, 4\)"),
])
def test_pooling_errors_name_the_function_and_argument(call, error, message):
    if message is None:  # allowed: padding up to half the undilated kernel, as PyTorch
        assert call().shape == (1, 1, 2, 2)
        return


# ------------------------------------------------------- the convolution family (issue 15)


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.conv2d(t(1, 4, 5, 5), t(5, 2, 3, 3), groups=2), ValueError,
     r"conv2d: out_channels \(weight.shape\[0\]\) \(5\) must be divisible by groups \(2\)"),
    (lambda: F.conv2d(t(1, 5, 5, 5), t(4, 2, 3, 3), groups=2), ValueError,
     r"conv2d: in_channels \(input.shape\[1\]\) \(5\) must be divisible by groups \(2\)"),
    (lambda: F.conv2d(t(1, 4, 5, 5), t(6, 1, 3, 3), groups=2), ValueError,
     r"conv2d: input has 4 channels .* expects 1 per group x 2 groups = 2"),
    (lambda: F.conv2d(t(1, 4, 5, 5), t(6, 2, 3, 3), groups=0), ValueError,
     r"conv2d: groups must be a positive integer; got 0"),
    (lambda: F.conv2d(t(1, 1, 5, 5), t(1, 1, 3, 3), stride=2, padding="same"), ValueError,
     r"conv2d: padding='same' needs stride 1 \(as in PyTorch\); got stride \(2, 2\)"),
    (lambda: F.conv2d(t(1, 1, 5, 5), t(1, 1, 3, 3), padding="full"), ValueError,
     r"conv2d: padding must be an int, a pair, a \(top, bottom, left, right\) tuple, 'same' or 'valid'; got 'full'"),
    (lambda: F.conv2d(t(1, 1, 5, 5), t(1, 1, 3, 3), padding=(0, 1, -1, 0)), ValueError,
     r"conv2d: padding must be non-negative; got \(0, 1, -1, 0\)"),
    (lambda: F.conv2d(t(1, 1, 5, 5), t(1, 1, 3, 3), padding=(0, 1, 2)), TypeError,
     r"conv2d: padding must be an int, a pair, a \(top, bottom, left, right\) tuple of ints, 'same' or "
     r"'valid'; got \(0, 1, 2\)"),
    (lambda: F.conv2d(t(1, 1, 5, 5), t(1, 1, 3, 3), dilation=0), ValueError,
     r"conv2d: dilation must be positive; got \(0, 0\)"),
    (lambda: F.conv2d(t(1, 1, 5, 5), t(1, 1, 3, 3), dilation=3), ValueError,
     r"conv2d: kernel 3x3 \(dilation \(3, 3\): 7x7 pixels\) is larger than the padded input 5x5"),
    (lambda: F.conv2d(t(1, 1, 5, 5), t(1, 1, 3, 3), t(1, 1)), ValueError, r"conv2d: bias must have shape \(1,\)"),
    (lambda: F.conv_transpose2d(t(1, 4, 3, 3), t(4, 2, 3, 3), groups=3), ValueError,
     r"conv_transpose2d: in_channels \(weight.shape\[0\]\) \(4\) must be divisible by groups \(3\)"),
    (lambda: F.conv_transpose2d(t(1, 3, 3, 3), t(4, 2, 3, 3)), ValueError,
     r"conv_transpose2d: input has 3 channels \(shape \(1, 3, 3, 3\)\) but the weight \(4, 2, 3, 3\) expects 4"),
    (lambda: F.conv_transpose2d(t(1, 1, 3, 3), t(1, 1, 3, 3), stride=2, output_padding=2), ValueError,
     r"conv_transpose2d: output_padding \(2, 2\) must be non-negative and smaller than either the stride "
     r"\(2, 2\) or the dilation \(1, 1\)"),
    (lambda: F.conv_transpose2d(t(1, 1, 3, 3), t(1, 1, 3, 3), padding=-1), ValueError,
     r"conv_transpose2d: padding must be non-negative; got -1"),
    (lambda: F.conv_transpose2d(t(1, 1, 1, 1), t(1, 1, 1, 1), padding=1), ValueError,
     r"conv_transpose2d: the output would be -1x-1 for input 1x1 .*: reduce the padding"),
    (lambda: F.conv_transpose2d(t(1, 2, 3, 3), t(2, 1, 3, 3), t(3)), ValueError,
     r"conv_transpose2d: bias must have shape \(1,\); got \(3,\)"),
    (lambda: F.pad(t(1, 1, 3, 3), 1, mode="mirror"), ValueError,
     r"pad: mode must be one of 'constant', 'reflect', 'replicate', 'circular'; got 'mirror'"),
    (lambda: F.pad(t(1, 1, 3, 3), ((0, 0), (0, 0), (3, 0), (0, 0)), mode="reflect"), ValueError,
     r"pad: reflect padding \(3, 0\) of axis 2 must be smaller than its size 3 \(input shape \(1, 1, 3, 3\)\)"),
    (lambda: F.pad(t(1, 1, 3, 3), ((0, 0), (0, 0), (0, 0), (0, 4)), mode="circular"), ValueError,
     r"pad: circular padding \(0, 4\) of axis 3 must be at most its size 3"),
])
def test_convolution_family_errors_name_the_function_and_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
