"""Inputs a user gets wrong give a clear error naming the function and argument (never a
ZeroDivisionError or an attribute error from deep inside), and edge cases numpy and PyTorch
define (the mean loss of an empty batch) give their answer, not a silent 0."""
from __future__ import annotations

import math

import numpy as np
import pytest

import tinygrad_cnn.functional as F
from tinygrad_cnn import Tensor, nn


def grad_of(t):
    """A gradient's numbers, whether ``.grad`` is an ndarray or a Tensor."""
    return t.grad.data if isinstance(t.grad, Tensor) else np.asarray(t.grad)


def f32(*shape):
    return Tensor(np.ones(shape, dtype=np.float32))


# ------------------------------------------------------------------------------ layers


@pytest.mark.parametrize("make, arg", [
    (lambda v: nn.Linear(v, 3), "in_features"), (lambda v: nn.Linear(3, v), "out_features"),
    (lambda v: nn.Conv2d(v, 4, 3), "in_channels"), (lambda v: nn.Conv2d(3, v, 3), "out_channels"),
    (lambda v: nn.Conv2d(3, 4, v), "kernel_size"), (lambda v: nn.Conv2d(3, 4, (3, v)), "kernel_size"),
    (lambda v: nn.Conv2d(3, 4, 3, stride=v), "stride"), (lambda v: nn.BatchNorm2d(v), "num_features"),
    (lambda v: nn.MaxPool2d(v), "kernel_size"), (lambda v: nn.MaxPool2d(2, stride=v), "stride"),
])
@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_layer_sizes_must_be_positive_integers(make, arg, value):
    with pytest.raises(ValueError, match=rf"{arg} must be a positive integer; got {value!r}"):
        make(value)


def test_layer_paddings_and_batchnorm_settings_are_checked():
    with pytest.raises(ValueError, match=r"Conv2d: padding must be a non-negative integer; got -1"):
        nn.Conv2d(3, 4, 3, padding=-1)
    with pytest.raises(ValueError, match=r"MaxPool2d: padding must be a non-negative integer; got 0.5"):
        nn.MaxPool2d(2, padding=0.5)
    with pytest.raises(ValueError, match=r"BatchNorm2d: eps must be a positive number; got 0"):
        nn.BatchNorm2d(4, eps=0)
    with pytest.raises(ValueError, match=r"BatchNorm2d: momentum must lie in \[0, 1\]; got nan"):
        nn.BatchNorm2d(4, momentum=float("nan"))
    with pytest.raises(TypeError, match=r"Flatten: start_dim must be an int; got 1.5"):
        nn.Flatten(1.5)
    # the sizes users write still work, numpy integers included
    assert nn.Conv2d(np.int64(3), 4, (3, 5), stride=(1, 2), padding=(0, 1)).weight.shape == (4, 3, 3, 5)
    assert nn.Linear(np.int32(2), 3).weight.shape == (3, 2)


@pytest.mark.parametrize("bad", [None, [("weight", np.zeros((3, 2)))], "weights.npz", np.zeros(3)])
def test_load_state_dict_of_a_non_mapping_is_a_type_error(bad):
    with pytest.raises(TypeError, match=r"load_state_dict: Linear: expects a mapping of names to arrays.*got a"):
        nn.Linear(2, 3).load_state_dict(bad)


# ------------------------------------------------------------------------------ functional


@pytest.mark.parametrize("width", [1.5, (1, 2.0), ((1.5, 1), (0, 0)), ((1, 1), (0, np.float32(1))), "1",
                                   None, True, ((1, 1), (0, False))])
def test_pad_widths_must_be_integers(width):
    with pytest.raises(TypeError, match=r"pad: pad_width must be an int or one \(before, after\) pair of ints"):
        F.pad(f32(2, 2), width)


def test_pad_accepts_numpy_integers():
    assert F.pad(f32(2, 2), np.int64(1)).shape == (4, 4)
    assert F.pad(f32(2, 2), [np.int32(1), (0, np.int64(2))]).shape == (4, 4)


@pytest.mark.parametrize("call, name", [
    (lambda: F.mse_loss(np.ones(3), np.ones(3)), "mse_loss"),
    (lambda: F.mse_loss(np.ones(3), Tensor(np.ones(3))), "mse_loss"),
    (lambda: F.flatten(np.ones((2, 3, 4))), "flatten"),
])
def test_composites_refuse_ndarrays_by_name(call, name):
    with pytest.raises(TypeError, match=rf"{name}: input must be a Tensor; got ndarray"):
        call()


def test_eval_batch_norm_needs_running_statistics():
    for mean, var in ((None, None), (np.zeros(2), None), (None, np.ones(2))):
        with pytest.raises(ValueError, match=r"batch_norm: evaluation \(training=False\).*got None"):
            F.batch_norm(f32(2, 2, 3), mean, var, training=False)
    assert F.batch_norm(f32(2, 2, 3), None, None, training=True).shape == (2, 2, 3)  # batch statistics


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_])
def test_batch_norm_of_integers_is_refused_in_both_modes(training, dtype):
    """Eval mode used to cast the running statistics to the input's integer dtype (all zeros)."""
    x = Tensor(np.arange(8).reshape(2, 2, 2).astype(dtype))
    with pytest.raises(TypeError, match=r"batch_norm: expects a floating-point tensor; got dtype"):
        F.batch_norm(x, np.array([0.5, 0.5]), np.array([2.0, 2.0]), training=training)


@pytest.mark.parametrize("loss", [
    lambda x, t: F.cross_entropy(x, t), lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1),
    lambda x, t: F.nll_loss(F.log_softmax(x), t), lambda x, t: F.mse_loss(x, np.zeros(x.shape, np.float32)),
])
def test_mean_loss_of_an_empty_batch_is_nan_and_backward_still_runs(loss):
    x = Tensor(np.zeros((0, 3), np.float32), requires_grad=True)
    out = loss(x, np.zeros(0, np.int64))
    assert math.isnan(out.item()) and out.dtype == np.float32
    out.backward()
    assert grad_of(x).shape == (0, 3)


def test_summed_loss_of_an_empty_batch_is_zero():
    x = Tensor(np.zeros((0, 3), np.float32))
    assert F.cross_entropy(x, np.zeros(0, np.int64), reduction="sum").item() == 0.0
    assert F.cross_entropy(x, np.zeros(0, np.int64), reduction="none").shape == (0,)


def test_empty_batch_losses_match_torch():
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    empty, labels = torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)
    ours = Tensor(np.zeros((0, 3), np.float32))
    for kw in ({}, {"label_smoothing": 0.1}, {"reduction": "sum"}):
        a = F.cross_entropy(ours, np.zeros(0, np.int64), **kw).item()
        b = tf.cross_entropy(empty, labels, **kw).item()
        assert (math.isnan(a) and math.isnan(b)) or a == b, kw


@pytest.mark.parametrize("make, message", [
    (lambda: nn.MaxPool2d(2, dilation=0), r"MaxPool2d: dilation must be a positive integer; got 0"),
    (lambda: nn.MaxPool2d(2, padding=(1, 0, -1, 0)), r"MaxPool2d: padding must be a non-negative integer; got -1"),
    (lambda: nn.AvgPool2d(0), r"AvgPool2d: kernel_size must be a positive integer; got 0"),
    (lambda: nn.AvgPool2d(2, padding=-1), r"AvgPool2d: padding must be a non-negative integer; got -1"),
    (lambda: nn.AvgPool2d(2, divisor_override=0),
     r"AvgPool2d: divisor_override must be a non-zero integer or None; got 0"),
    (lambda: nn.AdaptiveAvgPool2d(0), r"AdaptiveAvgPool2d: output_size must be a positive integer; got 0"),
    (lambda: nn.AdaptiveAvgPool2d((2, 2, 2)),
     r"AdaptiveAvgPool2d: output_size must be an int or an \(h, w\) pair; got \(2, 2, 2\)"),
    (lambda: nn.AdaptiveMaxPool2d((None, 0)), r"AdaptiveMaxPool2d: output_size must be a positive integer; got 0"),
])
def test_pooling_layers_check_their_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("make, message", [
    (lambda: nn.Conv2d(4, 6, 3, groups=4), r"Conv2d: out_channels \(6\) must be divisible by groups \(4\)"),
    (lambda: nn.Conv2d(3, 6, 3, groups=2), r"Conv2d: in_channels \(3\) must be divisible by groups \(2\)"),
    (lambda: nn.Conv2d(3, 6, 3, groups=0), r"Conv2d: groups must be a positive integer; got 0"),
    (lambda: nn.Conv2d(3, 6, 3, dilation=0), r"Conv2d: dilation must be a positive integer; got 0"),
    (lambda: nn.Conv2d(3, 6, 3, stride=2, padding="same"), r"Conv2d: padding='same' needs stride 1"),
    (lambda: nn.Conv2d(3, 6, 3, padding="full"), r"Conv2d: padding must be 'same', 'valid', an int, .*got 'full'"),
    (lambda: nn.Conv2d(3, 6, 3, padding=(1, 0, -1, 0)), r"Conv2d: padding must be a non-negative integer; got -1"),
    (lambda: nn.Conv2d(3, 6, 3, padding_mode="mirror"),
     r"Conv2d: padding_mode must be one of 'zeros', 'reflect', 'replicate', 'circular'; got 'mirror'"),
    (lambda: nn.ConvTranspose2d(3, 6, 3, stride=2, output_padding=2),
     r"ConvTranspose2d: output_padding \(2, 2\) must be smaller than either the stride \(2, 2\) or the dilation"),
    (lambda: nn.ConvTranspose2d(3, 6, 3, padding_mode="reflect"),
     r"ConvTranspose2d: only padding_mode='zeros' is supported \(as in PyTorch\); got 'reflect'"),
    (lambda: nn.ConvTranspose2d(4, 6, 3, groups=4), r"ConvTranspose2d: out_channels \(6\) must be divisible by groups"),
])
def test_conv_layer_arguments_are_checked(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_conv_transpose2d_output_size_out_of_reach():
    layer = nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1)
    with pytest.raises(ValueError, match=r"ConvTranspose2d: output_size \(12, 9\) is out of reach for input "
                                         r"\(1, 2, 5, 5\): H must lie in \[9, 10\]"):
        layer(f32(1, 2, 5, 5), output_size=(12, 9))


def test_reflect_padding_larger_than_the_input_names_pad():
    with pytest.raises(ValueError, match=r"pad: reflect padding \(3, 3\) of axis 2 must be smaller than its size 3"):
        nn.Conv2d(1, 1, 3, padding=3, padding_mode="reflect")(f32(1, 1, 3, 3))
