"""im2col, col2im and max_pool2d against straightforward pixel loops.

The references below loop over every output pixel and kernel tap, with no vectorisation
and no cleverness about padding, so they are easy to read and hard to get wrong.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import tinygrad_cnn.functional as F
from tinygrad_cnn import Tensor, backend, no_grad
from tinygrad_cnn.ops import conv as conv_ops

import strategies as S


# --------------------------------------------------------------------------- references


def _naive_taps(shape, kernel, stride, padding):
    """Every in-image tap as (cols row, cols column, n, c, r, s): column entry [row, col] of
    im2col holds pixel x[n, c, r, s]. Six plain loops: the reference the fast code is checked
    against."""
    N, C, H, W = shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for n in range(N):
                    for ho in range(Ho):
                        for wo in range(Wo):
                            r, s = ho * sh + i - ph, wo * sw + j - pw
                            if 0 <= r < H and 0 <= s < W:
                                yield row, (n * Ho + ho) * Wo + wo, n, c, r, s


def naive_im2col(x, kernel, stride, padding):
    """cols[(c, i, j), (n, ho, wo)] = x[n, c, ho*sh + i - ph, wo*sw + j - pw], or 0 outside."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    cols = np.zeros((C * kh * kw, N * Ho * Wo), dtype=x.dtype)
    for row, col, n, c, r, s in _naive_taps(x.shape, kernel, stride, padding):
        cols[row, col] = x[n, c, r, s]
    return cols


def naive_col2im(cols, shape, kernel, stride, padding):
    """The transpose of naive_im2col: every column entry is added back to its pixel."""
    x = np.zeros(shape, dtype=cols.dtype)
    for row, col, n, c, r, s in _naive_taps(shape, kernel, stride, padding):
        x[n, c, r, s] += cols[row, col]
    return x


def naive_max_pool2d(x, g, kernel, stride, padding):
    """Forward and backward of max-pooling by loops. Padding is -inf; within a window taps
    are visited in row-major order and a later tap wins only when strictly greater, so the
    first maximum wins ties. The backward routes each output's gradient to that winner."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    out = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    gx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for ho in range(Ho):
                for wo in range(Wo):
                    best, where = -np.inf, None
                    for i in range(kh):
                        for j in range(kw):
                            r, s = ho * sh + i - ph, wo * sw + j - pw
                            v = x[n, c, r, s] if (0 <= r < H and 0 <= s < W) else -np.inf
                            if where is None or v > best:
                                best, where = v, (r, s)
                    out[n, c, ho, wo] = best
                    gx[n, c, where[0], where[1]] += g[n, c, ho, wo]
    return out, gx


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
    (conv_ops._col2im_same); it must match the loops and give the general path's bits."""
    if threaded:
        monkeypatch.setattr(backend, "_MIN_PARALLEL", 0)
        monkeypatch.setenv("TINYGRAD_CNN_THREADS", "3")
    n, c, h, w = shape
    cols = _rand((c * kernel[0] * kernel[1], n * h * w))
    got = F.col2im(Tensor(cols), shape, kernel, 1, padding).numpy()
    np.testing.assert_allclose(got, naive_col2im(cols, shape, kernel, (1, 1), padding), rtol=1e-12, atol=1e-12)
    rows = conv_ops._col2im_rows(cols, shape, kernel, (1, 1), padding, shape[2:])
    np.testing.assert_array_equal(got, rows)


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


@given(pool_with_ties())
@_examples(POOL_CORNERS, _pool_example)
def test_max_pool2d_matches_loops_with_ties(case):
    """Forward and backward agree exactly with the loop, ties (integer inputs) included."""
    g, x, grad = case
    stride = g["stride"]
    t = Tensor(x, requires_grad=True)
    out = F.max_pool2d(t, g["kernel"], stride, g["padding"])
    out.backward(grad)
    want_out, want_grad = naive_max_pool2d(x, grad, g["kernel_hw"], g["stride_hw"], g["padding_hw"])
    np.testing.assert_array_equal(out.numpy(), want_out)
    np.testing.assert_allclose(t.grad, want_grad, rtol=1e-12, atol=1e-12)  # overlaps add in another order


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
    np.testing.assert_array_equal(t.grad, want)


# ------------------------------------------------- the threaded paths, on channel-major inputs


@pytest.fixture
def threads_for_everything(monkeypatch):
    """Split even tiny inputs over 3 threads, and pooling into one-channel chunks, so the
    channel-block code runs in these tests."""
    monkeypatch.setattr(backend, "_MIN_PARALLEL", 0)
    monkeypatch.setattr(conv_ops, "_CHUNK", 1)
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
        t = Tensor(x, requires_grad=True)
        out = F.max_pool2d(t, kernel, stride, padding)
        g = _rand(out.shape, 2)
        out.backward(g)
        want_out, want_grad = naive_max_pool2d(x, g, k, s, p)
        np.testing.assert_array_equal(out.numpy(), want_out)
        np.testing.assert_allclose(t.grad, want_grad, rtol=1e-12, atol=1e-12)


def test_max_pool2d_saves_one_byte_per_window_pass_not_the_input():
    x = Tensor(_rand((2, 3, 8, 8)), requires_grad=True)
    out = F.max_pool2d(x, 2)
    saved = [a for a in out._ctx.saved if a is not None]
    assert [a.dtype for a in saved] == [np.uint8, np.uint8]
    assert sum(a.nbytes for a in saved) == 2 * 3 * 8 * 4 + 2 * 3 * 4 * 4
    with no_grad():
        assert F.max_pool2d(x, 2)._ctx is None
