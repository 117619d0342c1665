"""The convolution family (issue 15) against PyTorch in float64: ``F.conv2d`` with groups
(depthwise included), dilation, 'same'/'valid' and asymmetric padding, ``F.conv_transpose2d``
with output_padding, ``F.pad``'s modes, and the layers ``nn.Conv2d`` (padding modes, init,
state_dict) and ``nn.ConvTranspose2d`` (``output_size``): forward values and the gradients of
input, weight and bias, and second derivatives (a gradient penalty) against
``torch.autograd.grad(create_graph=True)``. Skipped cleanly when torch is not installed."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
TF = torch.nn.functional

import tinygrad_cnn as tc  # noqa: E402
import tinygrad_cnn.functional as F  # noqa: E402
import tinygrad_cnn.nn as nn  # noqa: E402
from tinygrad_cnn import Tensor  # noqa: E402

RTOL, ATOL = 1e-9, 1e-11


def _close(ours, theirs):
    theirs = theirs.detach().numpy()
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL)


def _arrays(shapes, seed):
    rng = np.random.default_rng(seed)
    return [None if s is None else rng.standard_normal(s) for s in shapes]


def _leaves(arrays):
    ours = [None if a is None else Tensor(a, requires_grad=True) for a in arrays]
    theirs = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]
    return ours, theirs


def _torch_padding(padding):
    """PyTorch's F.conv2d has no (top, bottom, left, right) form: pad explicitly, then none."""
    if isinstance(padding, tuple) and len(padding) == 4:
        top, bottom, left, right = padding
        return (lambda x: TF.pad(x, (left, right, top, bottom))), 0
    return (lambda x: x), padding


def _check_first_order(ours_fn, theirs_fn, shapes, seed):
    """Values and the gradients of every input (those of shape None are left out)."""
    ours, theirs = _leaves(_arrays(shapes, seed))
    ours, theirs = [t for t in ours if t is not None], [t for t in theirs if t is not None]
    out, ref = ours_fn(*ours), theirs_fn(*theirs)
    _close(out.numpy(), ref)
    g = np.random.default_rng(seed + 100).standard_normal(ref.shape)
    got = tc.grad(out, ours, Tensor(g))
    want = torch.autograd.grad(ref, theirs, torch.tensor(g))
    for a, b in zip(got, want):
        _close(a, b)


# (N, C_in, H, W), (C_out, kH, kW), stride, padding, dilation, groups: odd shapes, batch 1,
# non-square kernels, strides and paddings that do not divide evenly.
CONV_CASES = [
    ((1, 3, 7, 5), (4, 3, 2), 1, 0, 1, 1),
    ((2, 4, 9, 8), (6, 3, 3), (2, 3), (1, 2), 1, 2),          # grouped
    ((2, 6, 7, 7), (6, 3, 3), 1, 1, 1, 6),                    # depthwise
    ((1, 4, 8, 9), (8, 5, 3), (2, 1), 2, 1, 4),               # depthwise, channel multiplier 2
    ((2, 3, 11, 10), (5, 3, 3), 1, 2, 2, 1),                  # dilated
    ((1, 4, 12, 9), (4, 3, 2), (3, 2), (1, 0), (2, 3), 2),    # dilated, grouped, strided
    ((2, 3, 6, 7), (4, 2, 2), 1, "same", 1, 1),               # even kernel: the odd pixel bottom/right
    ((1, 2, 7, 6), (4, 4, 3), 1, "same", (2, 1), 2),          # 'same' with dilation and groups
    ((2, 3, 5, 6), (2, 3, 4), (2, 1), "valid", 1, 1),
    ((1, 2, 6, 7), (3, 3, 2), (2, 3), (0, 2, 1, 0), (1, 2), 1),  # ours: (top, bottom, left, right)
    ((2, 4, 5, 5), (4, 2, 3), 1, (2, 0, 0, 1), 1, 4),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's own note
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation, groups", CONV_CASES)
def test_conv2d_matches_torch(x_shape, w_shape, stride, padding, dilation, groups, bias):
    c_out, kh, kw = w_shape
    shapes = [x_shape, (c_out, x_shape[1] // groups, kh, kw), (c_out,) if bias else None]
    pre, tpad = _torch_padding(padding)
    _check_first_order(lambda x, w, b=None: F.conv2d(x, w, b, stride, padding, dilation, groups),
                       lambda x, w, b=None: TF.conv2d(pre(x), w, b, stride, tpad, dilation, groups),
                       shapes, seed=len(x_shape) + c_out)


# (N, C_in, H, W), (C_out/groups, kH, kW), stride, padding, output_padding, groups, dilation
TRANSPOSE_CASES = [
    ((1, 3, 4, 5), (2, 3, 3), 1, 0, 0, 1, 1),
    ((2, 4, 3, 4), (3, 3, 2), (2, 3), (1, 0), (1, 2), 2, 1),  # output_padding on both axes
    ((1, 6, 5, 3), (1, 3, 3), 2, 1, 1, 6, 1),                 # depthwise
    ((2, 2, 3, 3), (3, 2, 3), (1, 2), 0, (1, 0), 1, (2, 1)),  # output_padding >= stride, < dilation
    ((1, 2, 4, 4), (2, 4, 4), 3, (2, 1), (2, 0), 2, 2),       # output_padding > padding: zero rows at the end
    ((2, 3, 2, 5), (2, 1, 3), (3, 2), (0, 1), 0, 1, (1, 3)),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_shape, w_shape, stride, padding, output_padding, groups, dilation", TRANSPOSE_CASES)
def test_conv_transpose2d_matches_torch(x_shape, w_shape, stride, padding, output_padding, groups, dilation, bias):
    c_out_g, kh, kw = w_shape
    shapes = [x_shape, (x_shape[1], c_out_g, kh, kw), (c_out_g * groups,) if bias else None]
    _check_first_order(
        lambda x, w, b=None: F.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation),
        lambda x, w, b=None: TF.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation),
        shapes, seed=c_out_g * 7 + kh)


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("pads", [(1, 2, 0, 3), (2, 0, 1, 1), (0, 0, 3, 0)])
def test_pad_modes_match_torch(mode, pads):
    top, bottom, left, right = pads
    _check_first_order(lambda x: F.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode=mode),
                       lambda x: TF.pad(x, (left, right, top, bottom), mode=mode), [(2, 3, 4, 5)], seed=sum(pads))


# ------------------------------------------------------------------------------- layers


def _twin(ours, theirs):
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    assert list(ours.state_dict()) == list(theirs.state_dict())
    return theirs


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [1, (2, 1), "same"])
def test_conv2d_layer_padding_modes_match_torch(mode, padding):
    kwargs = dict(padding=padding, dilation=(1, 2), groups=2, padding_mode=mode)
    ours = nn.Conv2d(4, 6, (3, 2), **kwargs, dtype=np.float64)
    theirs = _twin(ours, torch.nn.Conv2d(4, 6, (3, 2), **kwargs).double())
    assert repr(ours) == repr(theirs)
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 6))
    X, tx = Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out, ref = ours(X), theirs(tx)
    _close(out.numpy(), ref)
    g = np.random.default_rng(2).standard_normal(ref.shape)
    out.backward(Tensor(g))
    ref.backward(torch.tensor(g))
    _close(X.grad, tx.grad)
    _close(ours.weight.grad, theirs.weight.grad)
    _close(ours.bias.grad, theirs.bias.grad)


def test_conv_transpose2d_layer_and_output_size_match_torch():
    ours = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2, dtype=np.float64)
    theirs = _twin(ours, torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2).double())
    assert repr(ours) == repr(theirs)
    x = np.random.default_rng(3).standard_normal((1, 4, 5, 5))
    for size in (None, (9, 10), (1, 6, 10, 9)):
        _close(ours(Tensor(x), output_size=size).numpy(), theirs(torch.tensor(x), output_size=size))


@pytest.mark.parametrize("make, fan_in", [
    (lambda m: m.Conv2d(16, 32, (3, 5), groups=4), 4 * 15),       # fan_in of one group
    (lambda m: m.Conv2d(12, 12, 3, groups=12), 9),                # depthwise
    (lambda m: m.ConvTranspose2d(8, 12, 3, groups=2), 6 * 9),     # PyTorch: weight.shape[1] * kH * kW
])
def test_conv_layers_init_matches_torch(make, fan_in):
    """Kaiming-uniform with a=sqrt(5) over the group's fan_in: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    for the weight and the bias, as PyTorch draws them."""
    bound = 1 / math.sqrt(fan_in)
    torch.manual_seed(0)
    theirs = make(torch.nn)
    ours = make(nn)
    assert ours.weight.shape == tuple(theirs.weight.shape) and ours.bias.shape == tuple(theirs.bias.shape)
    for p, q in ((ours.weight, theirs.weight), (ours.bias, theirs.bias)):
        their_max = float(q.detach().abs().max())
        assert np.abs(p.data).max() <= bound and their_max <= bound
        assert np.abs(p.data).max() > 0.8 * bound and their_max > 0.8 * bound
    w = ours.weight.data
    assert abs(w.std() - bound / math.sqrt(3)) < 0.1 * bound


# ------------------------------------------------------------------------ second order


SECOND_ORDER_CASES = [
    # x, weight, bias shapes; conv kwargs
    ((2, 4, 7, 6), (6, 2, 3, 2), (6,), dict(stride=(2, 1), padding=(1, 0, 2, 1), dilation=(2, 1), groups=2)),
    ((1, 3, 6, 6), (3, 1, 3, 3), (3,), dict(stride=1, padding="same", dilation=2, groups=3)),
]


@pytest.mark.parametrize("x_shape, w_shape, b_shape, kwargs", SECOND_ORDER_CASES)
def test_gradient_penalty_through_grouped_dilated_conv_matches_torch(x_shape, w_shape, b_shape, kwargs):
    """d/d(x, w, b) of ||d loss / dx||^2 + ||d loss / dw||^2, loss = sum(tanh(conv(x)) * y):
    double backprop through the grouped, dilated, asymmetrically padded conv (im2col, the
    batched matmul, col2im and back)."""
    x, w, b = _arrays([x_shape, w_shape, b_shape], seed=5)
    (X, W, B), (tx, tw, tb) = _leaves([x, w, b])
    pre, tpad = _torch_padding(kwargs["padding"])
    tkw = dict(kwargs, padding=tpad)
    out = F.conv2d(X, W, B, **kwargs).tanh()
    ref = TF.conv2d(pre(tx), tw, tb, **tkw).tanh()
    y = np.random.default_rng(6).standard_normal(ref.shape)
    loss, tloss = (out * Tensor(y)).sum(), (ref * torch.tensor(y)).sum()
    gx, gw = tc.grad(loss, [X, W], create_graph=True)
    tgx, tgw = torch.autograd.grad(tloss, [tx, tw], create_graph=True)
    _close(gx, tgx)
    _close(gw, tgw)
    penalty, tpenalty = (gx * gx).sum() + (gw * gw).sum(), (tgx * tgx).sum() + (tgw * tgw).sum()
    for a, c in zip(tc.grad(penalty, [X, W, B]), torch.autograd.grad(tpenalty, [tx, tw, tb])):
        _close(a, c)


def test_gradient_penalty_through_conv_transpose2d_matches_torch():
    x, w, b = _arrays([(2, 4, 3, 4), (4, 3, 3, 2), (6,)], seed=7)
    (X, W, B), (tx, tw, tb) = _leaves([x, w, b])
    kwargs = dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), groups=2, dilation=(1, 2))
    out, ref = F.conv_transpose2d(X, W, B, **kwargs).tanh(), TF.conv_transpose2d(tx, tw, tb, **kwargs).tanh()
    _close(out.numpy(), ref)
    (gx,) = tc.grad(out.sum(), [X], create_graph=True)
    (tgx,) = torch.autograd.grad(ref.sum(), [tx], create_graph=True)
    _close(gx, tgx)
    for a, c in zip(tc.grad((gx * gx).sum(), [X, W, B]), torch.autograd.grad((tgx * tgx).sum(), [tx, tw, tb])):
        _close(a, c)
