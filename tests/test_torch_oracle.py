"""PyTorch as an oracle: forward values and gradients of conv2d, max_pool2d, log_softmax and
cross_entropy, in float64 with tight tolerances. Skipped cleanly when torch is not installed."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
TF = torch.nn.functional

import tinygrad_cnn.functional as F  # noqa: E402
from tinygrad_cnn import Tensor  # noqa: E402

import strategies as S  # noqa: E402

RTOL, ATOL = 1e-10, 1e-12


def _close(ours, theirs):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
    ours = ours.numpy() if isinstance(ours, Tensor) else ours
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _leaves(*arrays):
    ours = [None if a is None else Tensor(a, requires_grad=True) for a in arrays]
    theirs = [None if a is None else torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    return ours, theirs


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# -------------------------------------------------------------------------------- conv2d


@st.composite
def conv_case(draw):
    g = draw(S.window_geometry(max_channels=3, max_extra=4))
    c_out = draw(st.integers(1, 3))
    x = draw(S.arrays(g["shape"]))
    w = draw(S.arrays((c_out, g["shape"][1]) + g["kernel_hw"]))
    b = draw(st.none() | S.arrays((c_out,)))
    return g, x, w, b


def _conv_example(shape, c_out, kernel, stride, padding, bias=True):
    g = S.geometry_example(shape, kernel, stride, padding)
    w_shape = (c_out, shape[1]) + g["kernel_hw"]
    return g, _rand(shape), _rand(w_shape, 1), (_rand((c_out,), 2) if bias else None)


@given(conv_case())
@example(_conv_example((1, 3, 7, 5), 2, (3, 5), (2, 1), (1, 2)))
@example(_conv_example((2, 2, 6, 6), 4, 5, 3, 2, bias=False))
@example(_conv_example((1, 1, 1, 1), 1, 5, 1, 2))
def test_conv2d(case):
    g, x, w, b = case
    (xt, wt, bt), (xr, wr, br) = _leaves(x, w, b)
    ours = F.conv2d(xt, wt, bt, stride=g["stride"], padding=g["padding"])
    theirs = TF.conv2d(xr, wr, br, stride=_pair(g["stride"]), padding=_pair(g["padding"]))
    _close(ours, theirs)
    grad = np.random.default_rng(5).standard_normal(ours.shape)
    ours.backward(grad)
    theirs.backward(torch.tensor(grad))
    _close(xt.grad, xr.grad)
    _close(wt.grad, wr.grad)
    if b is not None:
        _close(bt.grad, br.grad)


# ---------------------------------------------------------------------------- max_pool2d


@st.composite
def pool_case(draw, ties):
    g = draw(S.window_geometry(max_channels=3, max_extra=4, pool=True))
    if draw(st.booleans()):
        g = S.geometry_example(g["shape"], g["kernel"], None, g["padding"])
    x = draw(S.tie_arrays(g["shape"]) if ties else S.arrays(g["shape"]))
    return g, x


def _pool_example(shape, kernel, stride, padding, x=None):
    g = S.geometry_example(shape, kernel, stride, padding)
    return g, (np.zeros(shape) if x is None else x)


def _check_pool(g, x):
    (xt,), (xr,) = _leaves(x)
    ours = F.max_pool2d(xt, g["kernel"], g["stride"], g["padding"])
    stride = None if g["stride"] is None else _pair(g["stride"])
    theirs = TF.max_pool2d(xr, _pair(g["kernel"]), stride, _pair(g["padding"]))
    _close(ours, theirs)
    grad = np.random.default_rng(6).standard_normal(ours.shape)
    ours.backward(grad)
    theirs.backward(torch.tensor(grad))
    _close(xt.grad, xr.grad)


@given(pool_case(ties=False))
@example(_pool_example((2, 3, 9, 7), (3, 2), (2, 1), (1, 1), _rand((2, 3, 9, 7))))
def test_max_pool2d(case):
    _check_pool(*case)


@given(pool_case(ties=True))
@example(_pool_example((1, 1, 4, 4), 3, 1, 1))          # all zeros: overlapping windows, all ties
@example(_pool_example((2, 2, 5, 5), 2, None, 1))
def test_max_pool2d_with_ties(case):
    """Integer-valued inputs tie often: both frameworks give the gradient to the first maximum."""
    _check_pool(*case)


# ------------------------------------------------------------------- log_softmax and loss


@given(S.shapes(min_dims=1, max_dims=3, max_side=5).flatmap(
    lambda s: st.tuples(S.arrays(s, -30.0, 30.0), st.integers(-len(s), len(s) - 1))))
def test_log_softmax(x_axis):
    x, axis = x_axis
    (xt,), (xr,) = _leaves(x)
    ours, theirs = F.log_softmax(xt, axis=axis), TF.log_softmax(xr, dim=axis)
    _close(ours, theirs)
    grad = np.random.default_rng(7).standard_normal(x.shape)
    ours.backward(grad)
    theirs.backward(torch.tensor(grad))
    _close(xt.grad, xr.grad)


@given(S.cross_entropy_cases(6, 6, 10.0, [0.0, 0.1, 0.3, 1.0]))
def test_cross_entropy(case):
    logits, targets, reduction, smoothing = case
    (zt,), (zr,) = _leaves(logits)
    ours = F.cross_entropy(zt, targets, reduction=reduction, label_smoothing=smoothing)
    theirs = TF.cross_entropy(zr, torch.tensor(targets), reduction=reduction, label_smoothing=smoothing)
    _close(ours, theirs)
    grad = np.random.default_rng(8).standard_normal(ours.shape)
    ours.backward(grad)
    theirs.backward(torch.tensor(grad))
    _close(zt.grad, zr.grad)
