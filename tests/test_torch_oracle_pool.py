"""PyTorch as the oracle for the pooling family: max_pool2d (dilation, ceil_mode, indices),
avg_pool2d (ceil_mode, count_include_pad, divisor_override), the adaptive pools and their
nn layers. Forward values, gradients and indices in float64 on small odd shapes (batch 1,
non-square kernels, strides and paddings that do not divide evenly), ties included for the
max; and gradient penalties through avg_pool2d and a dilated ceil-mode max_pool2d against
``torch.autograd.grad(create_graph=True)``. Skipped cleanly when torch is not installed.

PyTorch has no asymmetric padding: a (top, bottom, left, right) padding is checked against
torch on an input padded explicitly (``F.pad`` with -inf for the max, and with the
padding-aware divisor for the mean only where the divisor does not depend on it)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
TF = torch.nn.functional

import tinygrad_cnn as tc  # noqa: E402
import tinygrad_cnn.functional as F  # noqa: E402
import tinygrad_cnn.nn as nn  # noqa: E402
from tinygrad_cnn import Tensor  # noqa: E402

import strategies as S  # noqa: E402

RTOL, ATOL = 1e-10, 1e-12


def _close(ours, theirs, rtol=RTOL, atol=ATOL):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _symmetric(g):
    t, b, left, r = g["padding4"]
    return t == b and left == r


def _torch_padding(g):
    t, _, left, _ = g["padding4"]
    return (t, left)


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# --------------------------------------------------------------------------- max_pool2d


@st.composite
def max_case(draw, ties):
    g = draw(S.pool_geometry(max_channels=3, max_extra=4).filter(_symmetric))
    return g, draw(S.tie_arrays(g["shape"]) if ties else S.arrays(g["shape"]))


def _max_example(shape, kernel, stride=None, padding=0, dilation=1, ceil_mode=False, x=None):
    g = S.pool_example(shape, kernel, stride, padding, dilation, ceil_mode)
    return g, (np.zeros(shape) if x is None else x)


def _check_max(g, x):
    xt = Tensor(x, requires_grad=True)
    xr = torch.tensor(x, requires_grad=True)
    ours, idx = F.max_pool2d(xt, g["kernel"], g["stride"], g["padding"], g["dilation"], g["ceil_mode"],
                             return_indices=True)
    stride = None if g["stride"] is None else _pair(g["stride"])
    theirs, t_idx = TF.max_pool2d(xr, _pair(g["kernel"]), stride, _torch_padding(g), _pair(g["dilation"]),
                                  ceil_mode=g["ceil_mode"], return_indices=True)
    _close(ours, theirs)
    np.testing.assert_array_equal(idx.numpy(), t_idx.numpy())
    assert idx.dtype == np.int64
    finite = np.isfinite(theirs.detach().numpy())  # a window of padding only: -inf, no gradient to compare
    grad = np.where(finite, _rand(ours.shape, 6), 0.0)
    ours.backward(grad)
    theirs.backward(torch.tensor(grad))
    _close(xt.grad, xr.grad)


@given(max_case(ties=False))
@example(_max_example((2, 3, 9, 7), (3, 2), (2, 1), (1, 1), 1, True, _rand((2, 3, 9, 7))))
@example(_max_example((1, 2, 8, 9), (2, 3), (3, 2), (1, 1), (2, 3), True, _rand((1, 2, 8, 9))))
def test_max_pool2d(case):
    _check_max(*case)


@given(max_case(ties=True))
@example(_max_example((1, 1, 4, 4), 3, 1, 1))                      # all zeros: overlapping windows, all ties
@example(_max_example((2, 2, 5, 5), 2, None, 1, ceil_mode=True))
@example(_max_example((1, 1, 7, 6), 2, 2, 1, dilation=2, ceil_mode=True))
@example(_max_example((1, 1, 1, 1), 2, 2, 1, dilation=2))          # a window of padding only
def test_max_pool2d_with_ties_and_indices(case):
    """Integer-valued inputs tie often: both frameworks pick the first maximum, for the
    gradient and for ``return_indices``."""
    _check_max(*case)


def test_max_pool2d_asymmetric_padding_is_padding_then_pooling():
    """(top, bottom, left, right) padding, which PyTorch lacks, equals -inf padding and no
    padding. (Not in ceil mode: there a window may not start in the right padding, which
    explicit padding would turn into input.)"""
    x = _rand((2, 3, 7, 6))
    xt, xr = Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ours = F.max_pool2d(xt, (3, 2), (2, 3), (1, 0, 0, 1), dilation=(1, 2))
    theirs = TF.max_pool2d(TF.pad(xr, (0, 1, 1, 0), value=-np.inf), (3, 2), (2, 3), 0, (1, 2))
    _close(ours, theirs)
    grad = _rand(ours.shape, 1)
    ours.backward(grad)
    theirs.backward(torch.tensor(grad))
    _close(xt.grad, xr.grad)


# --------------------------------------------------------------------------- avg_pool2d


def _check_avg(g, x):
    xt = Tensor(x, requires_grad=True)
    xr = torch.tensor(x, requires_grad=True)
    ours = F.avg_pool2d(xt, g["kernel"], g["stride"], g["padding"], g["ceil_mode"], g["count_include_pad"],
                        g["divisor_override"])
    stride = None if g["stride"] is None else _pair(g["stride"])
    theirs = TF.avg_pool2d(xr, _pair(g["kernel"]), stride, _torch_padding(g), g["ceil_mode"],
                           g["count_include_pad"], g["divisor_override"])
    _close(ours, theirs)
    grad = _rand(ours.shape, 7)
    ours.backward(grad)
    theirs.backward(torch.tensor(grad))
    _close(xt.grad, xr.grad)


def _avg_example(shape, kernel, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
    g = S.pool_example(shape, kernel, stride, padding, 1, ceil_mode, count_include_pad, divisor_override)
    return g, _rand(shape, 1)


@given(S.pool_geometry(kind="avg", max_channels=3, max_extra=4).filter(_symmetric).flatmap(
    lambda g: st.tuples(st.just(g), S.arrays(g["shape"]))))
@example(_avg_example((1, 1, 5, 5), 3, 2, 1, ceil_mode=True))                         # ceil window past the pad
@example(_avg_example((1, 1, 5, 5), 3, 2, 1, ceil_mode=True, count_include_pad=False))
@example(_avg_example((2, 3, 7, 6), (3, 2), (2, 3), (1, 1), ceil_mode=True, divisor_override=4))
@example(_avg_example((1, 2, 8, 8), 2))                                               # the plain 2x2 path
@example(_avg_example((1, 1, 6, 9), (2, 4), (3, 2), (1, 2), ceil_mode=False, count_include_pad=False))
def test_avg_pool2d(case):
    _check_avg(*case)


def test_avg_pool2d_asymmetric_padding_counting_only_real_elements():
    """With count_include_pad=False the divisor ignores padding, so zero padding plus
    PyTorch's unpadded average with that divisor is the oracle; with the default the
    divisor is the window's size wherever windows stay inside the padding."""
    x = _rand((2, 3, 7, 6))
    padded = TF.pad(torch.tensor(x), (0, 1, 1, 0))
    ones = TF.pad(torch.ones(1, 1, 7, 6, dtype=torch.float64), (0, 1, 1, 0))
    sums = TF.avg_pool2d(padded, (3, 2), (2, 3), 0, divisor_override=1)
    counts = TF.avg_pool2d(ones, (3, 2), (2, 3), 0, divisor_override=1)
    ours = F.avg_pool2d(Tensor(x), (3, 2), (2, 3), (1, 0, 0, 1), count_include_pad=False)
    _close(ours, sums / counts)
    _close(F.avg_pool2d(Tensor(x), (3, 2), (2, 3), (1, 0, 0, 1)), TF.avg_pool2d(padded, (3, 2), (2, 3), 0))


# ------------------------------------------------------------------------ adaptive pools


ADAPTIVE = [((2, 3, 7, 9), (3, 4)), ((1, 2, 8, 8), 1), ((2, 2, 8, 6), (4, 3)), ((1, 3, 5, 5), (None, 2)),
            ((1, 1, 6, 7), (4, 5)), ((2, 2, 5, 7), (5, 7)), ((1, 2, 3, 2), (5, 4)), ((3, 4, 6), 4)]


@pytest.mark.parametrize("shape, size", ADAPTIVE, ids=str)
@pytest.mark.parametrize("name", ["adaptive_avg_pool2d", "adaptive_max_pool2d"])
def test_adaptive_pools(name, shape, size):
    """Global, divisible, uneven and overlapping bins, output larger than the input, None,
    an unbatched input; ties for the max (rounded values)."""
    x = np.round(_rand(shape, 2) * 2)
    xt, xr = Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ours, theirs = getattr(F, name)(xt, size), getattr(TF, name)(xr, size)
    _close(ours, theirs)
    grad = _rand(ours.shape, 3)
    ours.backward(grad)
    theirs.backward(torch.tensor(grad))
    _close(xt.grad, xr.grad)
    if name == "adaptive_max_pool2d":
        (_, idx), (_, t_idx) = F.adaptive_max_pool2d(Tensor(x), size, True), TF.adaptive_max_pool2d(
            torch.tensor(x), size, True)
        np.testing.assert_array_equal(idx.numpy(), t_idx.numpy())


# -------------------------------------------------------------------------------- layers


@pytest.mark.parametrize("ours, theirs", [
    (nn.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True), torch.nn.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True)),
    (nn.AvgPool2d((3, 2), (2, 1), (1, 0), ceil_mode=True, count_include_pad=False),
     torch.nn.AvgPool2d((3, 2), (2, 1), (1, 0), ceil_mode=True, count_include_pad=False)),
    (nn.AvgPool2d(2, divisor_override=3), torch.nn.AvgPool2d(2, divisor_override=3)),
    (nn.AdaptiveAvgPool2d((3, None)), torch.nn.AdaptiveAvgPool2d((3, None))),
    (nn.AdaptiveAvgPool2d(1), torch.nn.AdaptiveAvgPool2d(1)),
    (nn.AdaptiveMaxPool2d((2, 3)), torch.nn.AdaptiveMaxPool2d((2, 3))),
], ids=lambda m: type(m).__name__)
def test_layers(ours, theirs):
    x = _rand((2, 3, 9, 7), 4)
    xt, xr = Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out, t_out = ours(xt), theirs(xr)
    _close(out, t_out)
    out.sum().backward()
    t_out.sum().backward()
    _close(xt.grad, xr.grad)


def test_max_pool_layers_return_indices():
    x = np.round(_rand((1, 2, 7, 7), 5))
    (o, i), (to, ti) = nn.MaxPool2d(3, 2, return_indices=True)(Tensor(x)), \
        torch.nn.MaxPool2d(3, 2, return_indices=True)(torch.tensor(x))
    _close(o, to)
    np.testing.assert_array_equal(i.numpy(), ti.numpy())
    (o, i), (to, ti) = nn.AdaptiveMaxPool2d(3, return_indices=True)(Tensor(x)), \
        torch.nn.AdaptiveMaxPool2d(3, return_indices=True)(torch.tensor(x))
    np.testing.assert_array_equal(i.numpy(), ti.numpy())


# ------------------------------------------------------------------------- second order


def _distinct(shape, seed):
    n = int(np.prod(shape))
    return ((np.random.default_rng(seed).permutation(n) + 0.5 - n / 2) / n * 3).reshape(shape)


PENALTY = {
    "avg_pool2d": (
        lambda x, w: F.avg_pool2d(F.conv2d(x, w, padding=1).tanh(), 3, 2, 1, ceil_mode=True,
                                  count_include_pad=False).reshape(x.shape[0], -1),
        lambda x, w: TF.avg_pool2d(torch.tanh(TF.conv2d(x, w, padding=1)), 3, 2, 1, ceil_mode=True,
                                   count_include_pad=False).reshape(x.shape[0], -1)),
    "max_pool2d_dilated_ceil": (
        lambda x, w: F.max_pool2d(F.conv2d(x, w, padding=1), (2, 3), 2, 1, dilation=2, ceil_mode=True)
        .sigmoid().reshape(x.shape[0], -1),
        lambda x, w: torch.sigmoid(TF.max_pool2d(TF.conv2d(x, w, padding=1), (2, 3), 2, 1, dilation=2,
                                                 ceil_mode=True)).reshape(x.shape[0], -1)),
    "adaptive_avg_pool2d": (
        lambda x, w: F.adaptive_avg_pool2d(F.conv2d(x, w, padding=1).tanh(), (4, 3)).reshape(x.shape[0], -1),
        lambda x, w: TF.adaptive_avg_pool2d(torch.tanh(TF.conv2d(x, w, padding=1)), (4, 3)).reshape(x.shape[0], -1)),
}


@pytest.mark.parametrize("name", sorted(PENALTY))
def test_gradient_penalty_through_pooling_matches_torch(name):
    """loss + 3 ||d loss / d x||^2, differentiated with respect to the weights and the input."""
    ours_fn, torch_fn = PENALTY[name]
    x, w = _distinct((3, 2, 7, 6), 0), _distinct((4, 2, 3, 3), 1) * 0.4
    labels = np.array([1, 0, 3])
    ox, ow = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)

    logits = ours_fn(ox, ow)[:, :4]
    loss = F.cross_entropy(logits, labels)
    (gx,) = tc.grad(loss, [ox], create_graph=True)
    ours = tc.grad(loss + (gx * gx).sum() * 3.0, [ox, ow])

    t_logits = torch_fn(tx, tw)[:, :4]
    t_loss = TF.cross_entropy(t_logits, torch.tensor(labels))
    (tgx,) = torch.autograd.grad(t_loss, [tx], create_graph=True)
    theirs = torch.autograd.grad(t_loss + (tgx * tgx).sum() * 3.0, [tx, tw])

    _close(gx, tgx, 1e-9, 1e-11)
    for a, b in zip(ours, theirs):
        _close(a, b, 1e-9, 1e-11)
