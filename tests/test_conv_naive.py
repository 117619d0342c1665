"""im2col, col2im, max_pool2d and max-pool's derivative primitives against straightforward
pixel loops.

The references (``naive_*`` in ``tinygrad_cnn.kernels.conv`` and ``kernels.pool``, beside the
kernels they check) loop over every output pixel and kernel tap, with no vectorisation and
no cleverness about padding, so they are easy to read and hard to get wrong.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import tinygrad_cnn.functional as F
import tinygrad_cnn as tc
from tinygrad_cnn import Tensor, no_grad, ops, threads
from tinygrad_cnn.kernels import conv as conv_kernels
from tinygrad_cnn.kernels import pool as pool_kernels
from tinygrad_cnn.kernels.conv import naive_col2im, naive_im2col
from tinygrad_cnn.kernels.pool import naive_max_pool2d, naive_max_pool2d_backward, naive_max_pool2d_gather

import strategies as S


# -------------------------------------------------------------------------------- tests

CORNERS = [
    S.geometry_example((1, 1, 1, 1), 5, 1, 2),          # only the centre tap ever lands
    S.geometry_example((2, 3, 5, 4), (3, 2), (3, 1), (2, 0)),
    S.geometry_example((1, 2, 7, 7), 5, 3, 2),
    S.geometry_example((1, 1, 2, 9), (1, 5), (2, 3), (2, 1)),
]


def _examples(examples, wrap):
    def deco(fn):
        for g in examples:
            fn = example(wrap(g))(fn)
        return fn
    return deco


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _with_array(g):
    return g, _rand(g["shape"])


def _cols_shape(g):
    (n, c, _, _), (kh, kw), (ho, wo) = g["shape"], g["kernel_hw"], g["out"]
    return (c * kh * kw, n * ho * wo)


@given(S.window_geometry(max_channels=3).flatmap(lambda g: st.tuples(st.just(g), S.arrays(g["shape"]))))
@_examples(CORNERS, _with_array)
def test_im2col_matches_loops(g_x):
    g, x = g_x
    got = F.im2col(Tensor(x), g["kernel"], g["stride"], g["padding"]).numpy()
    want = naive_im2col(x, g["kernel_hw"], g["stride_hw"], g["padding_hw"])
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)  # a pure copy: exact
    with_ones = F.im2col(Tensor(x), g["kernel"], g["stride"], g["padding"], ones_row=True).numpy()
    np.testing.assert_array_equal(with_ones, np.vstack([want, np.ones((1, want.shape[1]))]))


@given(S.window_geometry(max_channels=3).flatmap(
    lambda g: st.tuples(st.just(g), S.arrays(_cols_shape(g)))))
@_examples(CORNERS, lambda g: (g, _rand(_cols_shape(g))))
def test_col2im_matches_loops(g_cols):
    g, cols = g_cols
    got = F.col2im(Tensor(cols), g["shape"], g["kernel"], g["stride"], g["padding"]).numpy()
    want = naive_col2im(cols, g["shape"], g["kernel_hw"], g["stride_hw"], g["padding_hw"])
    assert got.shape == want.shape == g["shape"]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)  # sums in another order


@pytest.mark.parametrize("shape,kernel,padding", [
    ((2, 3, 5, 7), (3, 3), (1, 1)), ((1, 2, 4, 4), (1, 1), (0, 0)), ((3, 1, 6, 5), (5, 3), (2, 1)),
    ((2, 2, 1, 1), (5, 5), (2, 2)),  # kernel larger than the image: most taps see only padding
    ((2, 2, 2, 3), (5, 3), (2, 1)), ((4, 1, 3, 2), (3, 5), (1, 2))])
@pytest.mark.parametrize("threaded", [False, True])
def test_col2im_of_a_same_size_window(monkeypatch, shape, kernel, padding, threaded):
    """Stride 1 with the output grid equal to the input grid takes the flat-shift path
    (kernels.conv.col2im_same); it must match the loops and give the general path's bits."""
    if threaded:
        monkeypatch.setattr(threads, "_MIN_PARALLEL", 0)
        monkeypatch.setenv("TINYGRAD_CNN_THREADS", "3")
    n, c, h, w = shape
    cols = _rand((c * kernel[0] * kernel[1], n * h * w))
    got = F.col2im(Tensor(cols), shape, kernel, 1, padding).numpy()
    np.testing.assert_allclose(got, naive_col2im(cols, shape, kernel, (1, 1), padding), rtol=1e-12, atol=1e-12)
    rows = conv_kernels.col2im_rows(cols, shape, kernel, (1, 1), padding, shape[2:])
    np.testing.assert_array_equal(got, rows)


@pytest.mark.parametrize("shape,kernel,padding,dilation", [
    ((2, 3, 5, 7), (3, 3), (1, 1), (1, 1)), ((1, 2, 4, 4), (1, 1), (0, 0), (1, 1)),
    ((3, 1, 6, 5), (5, 3), (2, 1), (1, 1)), ((2, 2, 1, 1), (5, 5), (2, 2), (1, 1)),  # most taps see only padding
    ((2, 2, 2, 3), (5, 3), (2, 1), (1, 1)), ((4, 1, 3, 2), (3, 5), (1, 2), (1, 1)),
    ((2, 3, 5, 7), (3, 3), "same", (2, 2)), ((1, 2, 6, 6), (2, 2), "same", (1, 1)),  # no centre tap
    ((2, 1, 5, 4), (4, 3), "same", (1, 2)), ((1, 1, 2, 2), (3, 3), "same", (3, 3))])
@pytest.mark.parametrize("layout", ["nchw", "channel_major", "strided"])
@pytest.mark.parametrize("threaded", [False, True])
def test_im2col_of_a_same_size_window(monkeypatch, shape, kernel, padding, dilation, layout, threaded):
    """Stride 1 with the output grid equal to the input grid takes the flat-shift path
    (kernels.conv._im2col_same): shifted runs of each image plane (NCHW), of each whole
    channel (channel-major, as a convolution hands its output on), or, for an input whose
    planes are not contiguous, the row path. Always the loops' values, exactly."""
    if threaded:
        monkeypatch.setattr(threads, "_MIN_PARALLEL", 0)
        monkeypatch.setenv("TINYGRAD_CNN_THREADS", "3")
    g = S.conv_geometry_example(shape, kernel, 1, padding, dilation)
    assert g["out"] == shape[2:]
    x = _rand(shape)
    if layout == "channel_major":
        x = _channel_major(x)
    elif layout == "strided":
        x = np.repeat(x, 2, axis=3)[..., ::2]
    assert (conv_kernels._planes(x) is None) == (layout == "strided" and shape[3] > 1)  # short planes
    big = np.zeros((2, 2, 9, 9))  # an NCHW plane longer than _SHORT_PLANE: the row path
    assert conv_kernels._planes(big) is None and conv_kernels._planes(_channel_major(big)) is not None
    assert conv_kernels._planes(big, max_plane=None).shape == (2, 2, 81)
    got = F.im2col(Tensor(x), **_conv_window(g)).numpy()
    np.testing.assert_array_equal(got, naive_im2col(x, *_conv_reference(g)))


@given(S.window_geometry(max_channels=3).flatmap(
    lambda g: st.tuples(st.just(g), S.arrays(g["shape"]), S.arrays(_cols_shape(g)))))
@_examples(CORNERS, lambda g: (g, _rand(g["shape"]), _rand(_cols_shape(g), 1)))
def test_adjoint_identity(g_x_y):
    """<im2col(x), y> == <x, col2im(y)>: col2im is im2col's transpose (so each is the other's VJP)."""
    g, x, y = g_x_y
    k, s, p = g["kernel"], g["stride"], g["padding"]
    lhs = float(np.sum(F.im2col(Tensor(x), k, s, p).numpy() * y))
    rhs = float(np.sum(x * F.col2im(Tensor(y), g["shape"], k, s, p).numpy()))
    scale = float(np.sum(np.abs(x)) * np.max(np.abs(y), initial=0.0)) + 1.0
    assert abs(lhs - rhs) <= 1e-12 * scale


@st.composite
def pool_with_ties(draw):
    g = draw(S.window_geometry(max_channels=3, pool=True))
    stride = None if draw(st.booleans()) else g["stride"]
    if stride is None:
        g = S.geometry_example(g["shape"], g["kernel"], None, g["padding"])
    x = draw(S.tie_arrays(g["shape"]))
    grad = draw(S.arrays(g["shape"][:2] + g["out"]))
    return g, x, grad


POOL_CORNERS = [
    S.geometry_example((1, 1, 4, 4), 2, None, 0),
    S.geometry_example((2, 2, 5, 5), 3, 1, 1),          # overlapping windows: shared winners add
    S.geometry_example((1, 1, 5, 6), (5, 2), (2, 3), (2, 1)),
]


def _pool_example(g):
    x = np.zeros(g["shape"])  # all ties: every window's first real element wins
    return g, x, _rand(g["shape"][:2] + g["out"])


def _pool_geometry(g):
    return g["kernel_hw"], g["stride_hw"], g["padding_hw"], g["out"]


def _pool_params(g, x_shape):
    return dict(input_shape=x_shape, kernel_size=g["kernel"], stride=g["stride"], padding=g["padding"])


def _check_pool_to_third_order(x, grad, h, w, g):
    """max_pool2d, its VJP (max_pool2d_backward), that VJP's VJP (max_pool2d_gather) and the
    next (max_pool2d_backward again) against the loops, through the engine: exact, except
    where overlapping windows add a shared winner's gradients (in another order)."""
    kernel, stride, padding = g["kernel_hw"], g["stride_hw"], g["padding_hw"]
    want_out, where = naive_max_pool2d(x, kernel, stride, padding)
    t = Tensor(x, requires_grad=True)
    out = F.max_pool2d(t, g["kernel"], g["stride"], g["padding"])
    np.testing.assert_array_equal(out.numpy(), want_out)
    v = Tensor(grad, requires_grad=True)
    (gx,) = tc.grad(out, [t], v, create_graph=True)  # max_pool2d_backward(v)
    np.testing.assert_allclose(gx.numpy(), naive_max_pool2d_backward(grad, where, x.shape), rtol=1e-12, atol=1e-12)
    hv = Tensor(h, requires_grad=True)
    (gv,) = tc.grad(gx, [v], hv, create_graph=True)  # max_pool2d_gather(h)
    np.testing.assert_array_equal(gv.numpy(), naive_max_pool2d_gather(h, where))
    (gh,) = tc.grad(gv, [hv], w)  # max_pool2d_backward(w)
    np.testing.assert_allclose(gh.numpy(), naive_max_pool2d_backward(w, where, x.shape), rtol=1e-12, atol=1e-12)


@given(pool_with_ties())
@_examples(POOL_CORNERS, _pool_example)
def test_max_pool2d_and_its_derivatives_match_loops_with_ties(case):
    """Forward, backward, double and triple backward agree with the loops, ties (integer
    inputs) included: every order routes to, or reads at, the same first maximum."""
    g, x, grad = case
    rng = np.random.default_rng(0)
    _check_pool_to_third_order(x, grad, rng.standard_normal(x.shape), rng.standard_normal(grad.shape), g)


@given(pool_with_ties())
@_examples(POOL_CORNERS, _pool_example)
def test_max_pool2d_backward_and_gather_primitives_match_loops(case):
    """The two primitives called directly at the kernel's winners; the gather of the pooled
    input itself is the window maximum."""
    g, x, grad = case
    want_out, where = naive_max_pool2d(x, g["kernel_hw"], g["stride_hw"], g["padding_hw"])
    out, winners = pool_kernels.max_pool2d(x, *_pool_geometry(g))
    np.testing.assert_array_equal(out, want_out)
    params = _pool_params(g, x.shape)
    routed = ops.MaxPool2dBackward.apply(Tensor(grad), winners=winners, **params).numpy()
    np.testing.assert_allclose(routed, naive_max_pool2d_backward(grad, where, x.shape), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(ops.MaxPool2dGather.apply(Tensor(x), winners=winners, **params).numpy(), want_out)
    h = _rand(x.shape, 3)
    np.testing.assert_array_equal(ops.MaxPool2dGather.apply(Tensor(h), winners=winners, **params).numpy(),
                                  naive_max_pool2d_gather(h, where))


@given(pool_with_ties())
@_examples(POOL_CORNERS, _pool_example)
def test_max_pool2d_backward_and_gather_are_adjoint(case):
    """<backward(g), h> == <g, gather(h)>: each is the other's transpose (so each is the
    other's VJP)."""
    g, x, grad = case
    _, winners = pool_kernels.max_pool2d(x, *_pool_geometry(g))
    h = _rand(x.shape, 4)
    lhs = float(np.sum(pool_kernels.max_pool2d_backward(grad, winners, x.shape, *_pool_geometry(g)) * h))
    rhs = float(np.sum(grad * pool_kernels.max_pool2d_gather(h, winners, *_pool_geometry(g))))
    assert abs(lhs - rhs) <= 1e-12 * (float(np.sum(np.abs(grad)) * np.max(np.abs(h))) + 1.0)


def test_max_pool2d_first_maximum_wins():
    x = np.array([[[[1.0, 3.0, 3.0],
                    [3.0, 2.0, 3.0],
                    [0.0, 3.0, 1.0]]]])
    t = Tensor(x, requires_grad=True)
    out = F.max_pool2d(t, 3, 1, 0)
    out.backward(np.ones((1, 1, 1, 1)))
    assert out.numpy().item() == 3.0
    want = np.zeros_like(x)
    want[0, 0, 0, 1] = 1.0  # the first 3 in row-major order, not split among the four
    np.testing.assert_array_equal(np.asarray(t.grad), want)


def test_max_pool2d_derivative_primitives_reject_calls_that_do_not_fit():
    x = _rand((1, 2, 4, 4))
    _, winners = pool_kernels.max_pool2d(x, (2, 2), (2, 2), (0, 0), (2, 2))
    params = dict(input_shape=x.shape, kernel_size=2)
    with pytest.raises(TypeError, match=r"max_pool2d_backward: winners must be the Winners that max_pool2d's "
                                        r"kernel returned .*; got tuple"):
        ops.MaxPool2dBackward.apply(Tensor(_rand((1, 2, 2, 2))), winners=tuple(winners), **params)
    with pytest.raises(ValueError, match=r"max_pool2d_backward: a gradient of shape \(1, 2, 4, 4\) does not fit "
                                         r"max-pooling of shape \(1, 2, 4, 4\) with kernel \(2, 2\): "
                                         r"expected \(1, 2, 2, 2\)"):
        ops.MaxPool2dBackward.apply(Tensor(x), winners=winners, **params)
    with pytest.raises(ValueError, match=r"max_pool2d_gather: an input of shape \(1, 2, 2, 2\) does not fit"):
        ops.MaxPool2dGather.apply(Tensor(_rand((1, 2, 2, 2))), winners=winners, **params)
    with pytest.raises(ValueError, match=r"max_pool2d_gather: winners.cols of shape \(1, 2, 4, 2\) are not "
                                         r"this max-pooling's \(expected \(1, 2, 4, 1\)\)"):
        ops.MaxPool2dGather.apply(Tensor(_rand((1, 2, 4, 3))), winners=winners, input_shape=(1, 2, 4, 3),
                                  kernel_size=(2, 3), stride=(2, 3))
    with pytest.raises(ValueError, match=r"max_pool2d_gather: padding \(2, 2\) must be at most half the kernel"):
        ops.MaxPool2dGather.apply(Tensor(x), winners=winners, **params, padding=2)


def test_window_op_labels():
    """What a graph drawing prints under each window op (``Op.label``)."""
    x = Tensor(_rand((1, 2, 6, 6)), requires_grad=True)
    assert F.im2col(x, 3, 1, 1, ones_row=True)._ctx.label() == "k=3x3 s=1 p=1 +ones"
    assert F.im2col(x, (3, 2), (2, 1), 0)._ctx.label() == "k=3x2 s=2x1 p=0"
    assert F.col2im(Tensor(_rand((18, 36)), requires_grad=True), x.shape, 3, 1, 1)._ctx.label() == "k=3x3 s=1 p=1"
    out = F.max_pool2d(x, 2)
    assert out._ctx.label() == "k=2x2 s=2 p=0"
    (gx,) = tc.grad(out, [x], Tensor(_rand(out.shape), requires_grad=True), create_graph=True)
    assert gx._ctx.name == "max_pool2d_backward" and gx._ctx.label() == "k=2x2 s=2 p=0"
    gather = ops.MaxPool2dGather.apply(x, **gx._ctx.params)
    assert gather._ctx.label() == "k=2x2 s=2 p=0"


# ------------------------------------------------- the threaded paths, on channel-major inputs


@pytest.fixture
def threads_for_everything(monkeypatch):
    """Split even tiny inputs over 3 threads, and pooling into one-channel chunks, so the
    channel-block code runs in these tests."""
    monkeypatch.setattr(threads, "_MIN_PARALLEL", 0)
    monkeypatch.setattr(pool_kernels, "_CHUNK", 1)
    monkeypatch.setenv("TINYGRAD_CNN_THREADS", "3")


def _channel_major(x):
    """The same values as ``x``, stored (C, N, H, W) the way a convolution's output is."""
    return np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (2, 2, 0), (3, 2, 1), ((3, 2), (1, 2), (0, 1))])
def test_conv_primitives_threaded_on_channel_major_input(threads_for_everything, kernel, stride, padding):
    x = _channel_major(np.round(_rand((2, 5, 6, 7)) * 4))  # ties for the pool
    k, s, p = (kernel if isinstance(kernel, tuple) else (kernel, kernel)), \
        (stride if isinstance(stride, tuple) else (stride, stride)), \
        (padding if isinstance(padding, tuple) else (padding, padding))
    cols = F.im2col(Tensor(x), kernel, stride, padding).numpy()
    np.testing.assert_array_equal(cols, naive_im2col(x, k, s, p))
    y = _rand(cols.shape, 1)
    np.testing.assert_allclose(F.col2im(Tensor(y), x.shape, kernel, stride, padding).numpy(),
                               naive_col2im(y, x.shape, k, s, p), rtol=1e-12, atol=1e-12)
    if 2 * p[0] <= k[0] and 2 * p[1] <= k[1]:
        g = S.geometry_example(x.shape, kernel, stride, padding)
        out_shape = x.shape[:2] + g["out"]
        grad, h, w = _rand(out_shape, 2), _channel_major(_rand(x.shape, 3)), _rand(out_shape, 4)
        _check_pool_to_third_order(x, grad, h, w, g)


def test_max_pool2d_saves_one_byte_per_window_pass_not_the_input():
    x = Tensor(_rand((2, 3, 8, 8)), requires_grad=True)
    out = F.max_pool2d(x, 2)
    saved = [a for a in out._ctx.saved if hasattr(a, "nbytes")]  # the winners' two passes (and a layout flag)
    assert [a.dtype for a in saved] == [np.uint8, np.uint8]
    assert sum(a.nbytes for a in saved) == 2 * 3 * 8 * 4 + 2 * 3 * 4 * 4
    with no_grad():
        assert F.max_pool2d(x, 2)._ctx is None


def test_max_pool2d_first_order_backward_records_nothing():
    """With create_graph=False the VJP runs its primitive without recording: the gradient
    has no history and nothing more is kept."""
    x = Tensor(_rand((2, 3, 8, 8)), requires_grad=True)
    F.max_pool2d(x, 2).sum().backward()
    assert x.grad._ctx is None and not x.grad.requires_grad


# ------------------------------------ pooling's general geometry: dilation, ceil_mode, 4-padding


@st.composite
def general_pool_with_ties(draw, kind="max"):
    g = draw(S.pool_geometry(kind=kind, max_channels=3))
    x = draw(S.tie_arrays(g["shape"]) if kind == "max" else S.arrays(g["shape"]))
    return g, x, draw(S.arrays(g["shape"][:2] + g["out"]))


GENERAL_POOL_CORNERS = [
    S.pool_example((1, 1, 5, 5), 3, 2, 1, ceil_mode=True),                    # last window past the padding
    S.pool_example((2, 2, 6, 7), (2, 3), (3, 2), (1, 0, 0, 1), dilation=(2, 1), ceil_mode=True),
    S.pool_example((1, 1, 1, 1), 2, 2, 1, dilation=2),                          # a window of padding only
    S.pool_example((1, 2, 4, 4), 2),                                           # the plain path
    S.pool_example((1, 1, 7, 3), (3, 1), 2, (1, 0), dilation=(2, 1)),
]


def _general_geometry(g):
    return g["kernel_hw"], g["stride_hw"], g["padding4"], g["out"]


def _general_kw(g):
    return dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"], ceil_mode=g["ceil_mode"])


def test_output_sizes_agree_with_the_loop_rule():
    """ops.pool.output_size (PyTorch's formula) against the window-by-window loop rule."""
    from tinygrad_cnn.ops.pool import output_size
    for size in range(1, 9):
        for k in range(1, 5):
            for s in range(1, 4):
                for d in (1, 2):
                    for before in range(0, ((k - 1) * d + 1) // 2 + 1):
                        for after in range(0, ((k - 1) * d + 1) // 2 + 1):
                            for ceil in (False, True):
                                want = pool_kernels.naive_output_size(size, k, s, before, after, d, ceil)
                                assert max(0, output_size(size, k, s, before, after, d, ceil)) == want, \
                                    (size, k, s, before, after, d, ceil)


@given(general_pool_with_ties())
@_examples(GENERAL_POOL_CORNERS, lambda g: (g, np.zeros(g["shape"]), _rand(g["shape"][:2] + g["out"])))
def test_general_max_pool2d_and_its_derivatives_match_loops(case):
    """Dilation, ceil mode and asymmetric padding: the kernel's maxima, indices, routing and
    gather against the loops, ties included (integer inputs; all zeros in the examples)."""
    g, x, grad = case
    want_out, where = naive_max_pool2d(x, g["kernel_hw"], g["stride_hw"], g["padding4"], g["dilation_hw"],
                                       g["ceil_mode"])
    out, winners = pool_kernels.max_pool2d(x, *_general_geometry(g), dilation=g["dilation_hw"])
    np.testing.assert_array_equal(out, want_out)
    indices = pool_kernels.max_pool2d_indices(winners, x.shape, *_general_geometry(g), dilation=g["dilation_hw"])
    np.testing.assert_array_equal(indices, pool_kernels.naive_max_pool2d_indices(
        where, x.shape, g["kernel_hw"], g["stride_hw"], g["padding4"], g["dilation_hw"]))
    routed = pool_kernels.max_pool2d_backward(grad, winners, x.shape, *_general_geometry(g), dilation=g["dilation_hw"])
    np.testing.assert_allclose(routed, naive_max_pool2d_backward(grad, where, x.shape), rtol=1e-12, atol=1e-12)
    h = _rand(x.shape, 3)
    gathered = pool_kernels.max_pool2d_gather(h, winners, *_general_geometry(g), dilation=g["dilation_hw"])
    np.testing.assert_array_equal(gathered, naive_max_pool2d_gather(h, where))
    # <backward(grad), h> == <grad, gather(h)>
    assert abs(float(np.sum(routed * h)) - float(np.sum(grad * gathered))) <= \
        1e-12 * (float(np.sum(np.abs(grad)) * np.max(np.abs(h))) + 1.0)


@given(general_pool_with_ties())
@_examples(GENERAL_POOL_CORNERS[:2] + GENERAL_POOL_CORNERS[3:],
           lambda g: (g, np.zeros(g["shape"]), _rand(g["shape"][:2] + g["out"])))
def test_general_max_pool2d_through_the_engine_to_third_order(case):
    g, x, grad = case
    want_out, where = naive_max_pool2d(x, g["kernel_hw"], g["stride_hw"], g["padding4"], g["dilation_hw"],
                                       g["ceil_mode"])
    t = Tensor(x, requires_grad=True)
    out, indices = F.max_pool2d(t, g["kernel"], **_general_kw(g), return_indices=True)
    np.testing.assert_array_equal(out.numpy(), want_out)
    assert indices.dtype == np.int64 and not indices.requires_grad
    v = Tensor(grad, requires_grad=True)
    (gx,) = tc.grad(out, [t], v, create_graph=True)
    np.testing.assert_allclose(gx.numpy(), naive_max_pool2d_backward(grad, where, x.shape), rtol=1e-12, atol=1e-12)
    h = _rand(x.shape, 5)
    hv = Tensor(h, requires_grad=True)
    (gv,) = tc.grad(gx, [v], hv, create_graph=True)
    np.testing.assert_array_equal(gv.numpy(), naive_max_pool2d_gather(h, where))
    w = _rand(grad.shape, 6)
    (gh,) = tc.grad(gv, [hv], w)
    np.testing.assert_allclose(gh.numpy(), naive_max_pool2d_backward(w, where, x.shape), rtol=1e-12, atol=1e-12)


AVG_CORNERS = [
    S.pool_example((1, 1, 5, 5), 3, 2, 1, ceil_mode=True),
    S.pool_example((1, 1, 5, 5), 3, 2, 1, ceil_mode=True, count_include_pad=False),
    S.pool_example((2, 2, 6, 7), (2, 3), (3, 2), (1, 0, 0, 1), ceil_mode=True, divisor_override=5),
    S.pool_example((1, 2, 4, 6), 2),                                           # tiles: no zero fill
    S.pool_example((1, 1, 3, 8), (1, 4), (2, 3), (0, 2), ceil_mode=True, count_include_pad=False),
]


def _avg_naive_args(g):
    return (g["kernel_hw"], g["stride_hw"], g["padding4"], g["ceil_mode"], g["count_include_pad"],
            g["divisor_override"])


def _avg_kw(g):
    return dict(stride=g["stride"], padding=g["padding"], ceil_mode=g["ceil_mode"],
                count_include_pad=g["count_include_pad"], divisor_override=g["divisor_override"])


@given(general_pool_with_ties(kind="avg"))
@_examples(AVG_CORNERS, lambda g: (g, _rand(g["shape"]), _rand(g["shape"][:2] + g["out"], 1)))
def test_avg_pool2d_and_its_transpose_match_loops(case):
    """avg_pool2d and avg_pool2d_backward (through the engine, to third order) against the
    loops, PyTorch's divisor rules spelled out window by window; and <A x, g> == <x, A^T g>."""
    g, x, grad = case
    want = pool_kernels.naive_avg_pool2d(x, *_avg_naive_args(g))
    t = Tensor(x, requires_grad=True)
    out = F.avg_pool2d(t, g["kernel"], **_avg_kw(g))
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-12, atol=1e-12)
    v = Tensor(grad, requires_grad=True)
    (gx,) = tc.grad(out, [t], v, create_graph=True)  # avg_pool2d_backward(v)
    want_gx = pool_kernels.naive_avg_pool2d_backward(grad, x.shape, *_avg_naive_args(g))
    np.testing.assert_allclose(gx.numpy(), want_gx, rtol=1e-12, atol=1e-12)
    h = _rand(x.shape, 3)
    (gv,) = tc.grad(gx, [v], Tensor(h))  # avg_pool2d(h)
    np.testing.assert_allclose(gv.numpy(), pool_kernels.naive_avg_pool2d(h, *_avg_naive_args(g)),
                               rtol=1e-12, atol=1e-12)
    lhs, rhs = float(np.sum(want * grad)), float(np.sum(x * want_gx))
    assert abs(lhs - rhs) <= 1e-12 * (float(np.sum(np.abs(x)) * np.max(np.abs(grad))) + 1.0)


@pytest.mark.parametrize("g", GENERAL_POOL_CORNERS[:2] + GENERAL_POOL_CORNERS[3:], ids=str)
def test_general_pools_threaded_on_channel_major_input(threads_for_everything, g):
    """The channel-block paths, on a convolution-like (C, N, H, W) layout: both pools and
    their derivatives against the loops."""
    shape = (2, 5) + g["shape"][2:]
    g = S.pool_example(shape, g["kernel"], g["stride"], g["padding"], g["dilation"], g["ceil_mode"])
    x = _channel_major(np.round(_rand(shape) * 4))
    grad = _rand(shape[:2] + g["out"], 2)
    test_general_max_pool2d_and_its_derivatives_match_loops.hypothesis.inner_test((g, x, grad))
    test_general_max_pool2d_through_the_engine_to_third_order.hypothesis.inner_test((g, x, grad))
    ga = S.pool_example(shape, g["kernel"], g["stride"], g["padding"], 1, g["ceil_mode"], count_include_pad=False)
    if 2 * max(ga["padding4"][:2]) <= ga["kernel_hw"][0] and 2 * max(ga["padding4"][2:]) <= ga["kernel_hw"][1]:
        test_avg_pool2d_and_its_transpose_match_loops.hypothesis.inner_test(
            (ga, x, _rand(shape[:2] + ga["out"], 2)))


def test_max_pool2d_indices_are_pytorch_flat_indices():
    """Ties go to the first maximum in row-major order; indices index each (H, W) plane."""
    x = np.array([[[[1.0, 3.0, 3.0, 0.0],
                    [3.0, 2.0, 3.0, 5.0],
                    [0.0, 3.0, 1.0, 5.0]]]])
    out, indices = F.max_pool2d(Tensor(x), 2, 2, ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(out.numpy(), [[[[3.0, 5.0], [3.0, 5.0]]]])
    np.testing.assert_array_equal(indices.numpy(), [[[[1, 7], [9, 11]]]])


def test_pool_op_labels():
    """What a graph drawing prints under the pooling ops: the window, dilation, ceil mode
    and the divisor rule when not the default."""
    x = Tensor(_rand((1, 2, 7, 7)), requires_grad=True)
    assert F.max_pool2d(x, 3, 2, 1, dilation=2, ceil_mode=True)._ctx.label() == "k=3x3 s=2 p=1 d=2 ceil"
    out, _ = F.max_pool2d(x, (3, 2), padding=(1, 0, 0, 1), return_indices=True)
    assert out._ctx.label() == "k=3x2 s=3x2 p=1,0,0,1 +indices"
    assert F.avg_pool2d(x, 2)._ctx.label() == "k=2x2 s=2 p=0"
    avg = F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    assert avg._ctx.label() == "k=3x3 s=2 p=1 ceil exclude_pad"
    (gx,) = tc.grad(avg, [x], Tensor(_rand(avg.shape), requires_grad=True), create_graph=True)
    assert gx._ctx.name == "avg_pool2d_backward" and gx._ctx.label() == "k=3x3 s=2 p=1 ceil exclude_pad"
    assert F.avg_pool2d(x, 2, divisor_override=3)._ctx.label() == "k=2x2 s=2 p=0 div=3"


# ------------------------------------------- dilation and asymmetric padding (issue 15)

CONV_CORNERS = [
    S.conv_geometry_example((1, 1, 1, 1), 3, 1, "same", 2),              # only the centre tap lands
    S.conv_geometry_example((2, 3, 5, 4), (3, 2), (2, 1), (0, 2, 1, 0), (2, 3)),
    S.conv_geometry_example((1, 2, 6, 7), (2, 4), 1, "same", 1),          # even kernels: the odd pixel after
    S.conv_geometry_example((1, 1, 9, 3), (3, 1), (3, 2), (2, 1, 0, 2), (3, 1)),
    S.conv_geometry_example((2, 1, 4, 4), 2, 1, (1, 0, 0, 1), 1),         # stride 1, output = input, no centre
]


def _conv_window(g):
    return dict(kernel_size=g["kernel"], stride=g["stride"], padding=g["padding"], dilation=g["dilation"])


def _conv_reference(g):
    return g["kernel_hw"], g["stride_hw"], g["padding4"], g["dilation_hw"]


@given(S.conv_window_geometry(max_channels=3).flatmap(lambda g: st.tuples(st.just(g), S.arrays(g["shape"]))))
@_examples(CONV_CORNERS, _with_array)
def test_dilated_asymmetric_im2col_matches_loops(g_x):
    g, x = g_x
    got = F.im2col(Tensor(x), **_conv_window(g)).numpy()
    want = naive_im2col(x, *_conv_reference(g))
    assert got.shape == want.shape == _cols_shape(g)
    np.testing.assert_array_equal(got, want)
    with_ones = F.im2col(Tensor(x), ones_row=True, **_conv_window(g)).numpy()
    np.testing.assert_array_equal(with_ones, np.vstack([want, np.ones((1, want.shape[1]))]))


@given(S.conv_window_geometry(max_channels=3).flatmap(
    lambda g: st.tuples(st.just(g), S.arrays(_cols_shape(g)))))
@_examples(CONV_CORNERS, lambda g: (g, _rand(_cols_shape(g))))
def test_dilated_asymmetric_col2im_matches_loops(g_cols):
    g, cols = g_cols
    got = F.col2im(Tensor(cols), g["shape"], **_conv_window(g)).numpy()
    want = naive_col2im(cols, g["shape"], *_conv_reference(g))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    if g["stride_hw"] == (1, 1) and g["out"] == g["shape"][2:]:  # the flat-shift path: the general path's bits
        rows = conv_kernels.col2im_rows(cols, g["shape"], g["kernel_hw"], (1, 1), g["padding4"], g["out"],
                                        g["dilation_hw"])
        np.testing.assert_array_equal(got, rows)


@given(S.conv_window_geometry(max_channels=3).flatmap(
    lambda g: st.tuples(st.just(g), S.arrays(g["shape"]), S.arrays(_cols_shape(g)))))
@_examples(CONV_CORNERS, lambda g: (g, _rand(g["shape"]), _rand(_cols_shape(g), 1)))
def test_dilated_asymmetric_adjoint_identity(g_x_y):
    g, x, y = g_x_y
    lhs = float(np.sum(F.im2col(Tensor(x), **_conv_window(g)).numpy() * y))
    rhs = float(np.sum(x * F.col2im(Tensor(y), g["shape"], **_conv_window(g)).numpy()))
    assert abs(lhs - rhs) <= 1e-12 * (float(np.sum(np.abs(x)) * np.max(np.abs(y), initial=0.0)) + 1.0)


@pytest.mark.parametrize("shape,kernel,padding,dilation", [
    ((2, 3, 5, 7), (3, 3), "same", (2, 2)), ((1, 2, 6, 6), (2, 2), "same", (1, 1)),
    ((2, 1, 5, 4), (4, 3), "same", (1, 2)), ((3, 2, 4, 5), (3, 2), (2, 0, 0, 1), (1, 1)),
    ((1, 1, 2, 2), (3, 3), "same", (3, 3))])   # dilated taps that land wholly outside
@pytest.mark.parametrize("threaded", [False, True])
def test_col2im_of_a_same_size_dilated_or_asymmetric_window(monkeypatch, shape, kernel, padding, dilation, threaded):
    """The flat-shift path with dilated taps, and with asymmetric padding (even kernels'
    'same', which has no centre tap to start from): the loops' values, the general path's bits."""
    if threaded:
        monkeypatch.setattr(threads, "_MIN_PARALLEL", 0)
        monkeypatch.setenv("TINYGRAD_CNN_THREADS", "3")
    g = S.conv_geometry_example(shape, kernel, 1, padding, dilation)
    assert g["out"] == shape[2:]
    cols = _rand(_cols_shape(g))
    got = F.col2im(Tensor(cols), shape, **_conv_window(g)).numpy()
    np.testing.assert_allclose(got, naive_col2im(cols, shape, *_conv_reference(g)), rtol=1e-12, atol=1e-12)
    rows = conv_kernels.col2im_rows(cols, shape, kernel, (1, 1), g["padding4"], shape[2:], dilation)
    np.testing.assert_array_equal(got, rows)


@pytest.mark.parametrize("g", CONV_CORNERS[1:4])
def test_dilated_asymmetric_windows_threaded_on_channel_major_input(threads_for_everything, g):
    x = _channel_major(_rand(g["shape"][:1] + (5,) + g["shape"][2:]))
    cols = F.im2col(Tensor(x), **_conv_window(g)).numpy()
    np.testing.assert_array_equal(cols, naive_im2col(x, *_conv_reference(g)))
    y = _rand(cols.shape, 1)
    np.testing.assert_allclose(F.col2im(Tensor(y), x.shape, **_conv_window(g)).numpy(),
                               naive_col2im(y, x.shape, *_conv_reference(g)), rtol=1e-12, atol=1e-12)


def test_dilated_and_asymmetric_window_labels():
    x = Tensor(_rand((1, 2, 6, 6)), requires_grad=True)
    assert F.im2col(x, 3, 1, (0, 1, 2, 0), dilation=2)._ctx.label() == "k=3x3 s=1 p=0,1,2,0 d=2"
    assert F.im2col(x, (3, 2), 1, "same", dilation=(1, 2))._ctx.label() == "k=3x2 s=1 p=same d=1x2"
    assert F.col2im(Tensor(_rand((18, 1)), requires_grad=True), x.shape, 3, 2, 0, 2)._ctx.label() == \
        "k=3x3 s=2 p=0 d=2"
    # a plain window's parameters and label are what they were before dilation existed
    assert "dilation" not in F.im2col(x, 3, 1, 1)._ctx.params


# ------------------------------- the conv2d primitive that keeps only its input (issue 18)


def _weight(g, c_out, seed=2):
    return _rand((c_out, g["shape"][1]) + g["kernel_hw"], seed)


@pytest.mark.parametrize("block_bytes", [None, 1])  # one block, and one image per block
@given(S.conv_window_geometry(max_channels=3).flatmap(lambda g: st.tuples(st.just(g), S.arrays(g["shape"]))))
@_examples(CONV_CORNERS, _with_array)
def test_conv2d_kernels_match_loops(block_bytes, g_x):
    """kernels.conv.conv2d (with and without bias) and conv2d_weight against the loops, in
    one block and in blocks of one image."""
    g, x = g_x
    geometry = (g["kernel_hw"], g["stride_hw"], g["padding4"], g["out"], g["dilation_hw"], block_bytes)
    reference = (g["kernel_hw"], g["stride_hw"], g["padding4"], g["dilation_hw"])
    w, b = _weight(g, 2), _rand((2,), 3)
    for bias in (None, b):
        got = conv_kernels.conv2d(x, w, bias, *geometry)
        np.testing.assert_allclose(got, conv_kernels.naive_conv2d(x, w, bias, *reference), rtol=1e-10, atol=1e-10)
    grad = _rand(g["shape"][:1] + (2,) + g["out"], 4)
    np.testing.assert_allclose(conv_kernels.conv2d_weight(x, grad, *geometry),
                               conv_kernels.naive_conv2d_weight(x, grad, *reference), rtol=1e-10, atol=1e-10)


def test_image_blocks_cover_the_batch_once():
    assert conv_kernels.image_blocks(10, 100, block_bytes=350) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert conv_kernels.image_blocks(3, 1000, block_bytes=1) == [(0, 1), (1, 2), (2, 3)]  # one image at least
    assert conv_kernels.image_blocks(4, 10, block_bytes=10 ** 6) == [(0, 4)]


def test_conv2d_primitive_keeps_its_input_not_its_columns():
    """What the graph keeps for backward: the composite keeps the columns (kH*kW times the
    input), the primitive only the input and the weight."""
    from benchmarks.step import saved_bytes

    x = Tensor(_rand((4, 8, 16, 16)), requires_grad=True)
    w = Tensor(_rand((8, 8, 3, 3), 1), requires_grad=True)
    kept = saved_bytes(ops.Conv2d.apply(x, w, kernel_size=3, padding=1).sum())
    assert kept <= x.data.nbytes + w.data.nbytes + 8 * 4 * 16 * 16 * 8
    cols = saved_bytes(F.im2col(x, 3, 1, 1).sum())
    assert cols >= 9 * x.data.nbytes


@pytest.mark.parametrize("kernel, stride, padding, shape", [
    (2, 2, 0, (2, 3, 5, 5)),        # tiled windows, an odd edge left out
    (3, 2, 1, (2, 3, 6, 7)),        # overlapping windows: shared winners accumulate
    ((3, 1), (1, 1), (1, 0), (1, 2, 5, 4)),
    (2, 1, 0, (1, 2, 4, 4)),
])
def test_max_pool_routes_inf_and_nan_only_to_the_winner(kernel, stride, padding, shape):
    """Regression: routing multiplied g by a 0/1 mask, so an inf in g put inf * 0 = NaN on
    the window's other elements (PyTorch leaves them 0), with a RuntimeWarning. Now a g with
    non-finite values is routed by masked copies: exactly the loops' result."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    _, where = naive_max_pool2d(x, (kh, kw), (sh, sw), (ph, pw))
    t = Tensor(x, requires_grad=True)
    out = F.max_pool2d(t, kernel, stride, padding)
    g = rng.integers(-3, 4, out.shape).astype(np.float64)  # small integers: sums are exact in any order
    g.flat[[0, 3, 5]] = [np.inf, np.nan, -np.inf]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value encountered in multiply"
        out.backward(g)
    np.testing.assert_array_equal(t.grad.numpy(), naive_max_pool2d_backward(g, where, x.shape))
