"""GEMM operands and results whose rows would start a multiple of 4 KiB apart are stored
with one cache line of padding per row (``kernels.gemm.empty_matrix``): im2col's columns and
large matmul results. Every op downstream must read such strided views exactly as it reads
contiguous arrays: these tests force the padding onto small shapes and compare with it off."""
import numpy as np
import pytest

import tinygrad_cnn.functional as F
from tinygrad_cnn import Tensor
from tinygrad_cnn.kernels import conv as conv_kernels
from tinygrad_cnn.kernels import gemm
from tinygrad_cnn.kernels import norm as norm_ops
from tinygrad_cnn.ops.conv import conv_geometry


def _padded(a):
    """True when ``a`` is a matrix view whose rows lie further apart than its columns span."""
    return a.ndim == 2 and a.strides[1] == a.itemsize and a.strides[0] > a.shape[1] * a.itemsize


@pytest.fixture
def pad_everything(monkeypatch):
    """Pad every matrix whose rows are a multiple of 4 KiB long, however small or few."""
    monkeypatch.setattr(gemm, "_MIN_PADDED_BYTES", 0)
    monkeypatch.setattr(conv_kernels, "_MANY_ROWS", 0)


@pytest.mark.parametrize("rows,cols,dtype,padded", [
    (64, 4096, np.float32, True),     # 16 KiB rows, 1 MiB in all
    (32, 4096, np.float64, False),    # float64 products gained nothing from padding
    (64, 4000, np.float32, False),    # rows not a multiple of 4 KiB
    (4, 1024, np.float32, False),     # 16 KiB in all: sits in cache
    (1, 1 << 20, np.float32, False),  # one row: nothing to collide with
])
def test_empty_matrix_pads_rows_a_multiple_of_4k_apart(rows, cols, dtype, padded):
    m = gemm.empty_matrix(np, rows, cols, dtype)
    assert m.shape == (rows, cols) and m.dtype == dtype
    assert _padded(m) == padded
    if padded:
        assert m.strides[0] == cols * m.itemsize + 64  # one cache line more
    m[...] = np.arange(rows * cols, dtype=dtype).reshape(rows, cols)  # rows do not overlap
    np.testing.assert_array_equal(m, np.arange(rows * cols, dtype=dtype).reshape(rows, cols))


def test_a_large_product_is_padded_and_the_weight_gradient_keeps_its_fast_orientation():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 72), dtype=np.float32)
    cols = gemm.empty_matrix(np, 72, 4096, np.float32)
    cols[...] = rng.standard_normal((72, 4096), dtype=np.float32)
    assert _padded(cols)
    out = gemm.product(w, cols)
    assert _padded(out)
    np.testing.assert_allclose(out, w @ np.ascontiguousarray(cols), rtol=1e-5, atol=1e-4)
    # g @ cols.T with padded cols is still computed as (cols @ g.T).T (kernels/gemm.py)
    g = rng.standard_normal((64, 4096), dtype=np.float32)
    dw = gemm.product(g, cols.T)
    assert dw.strides[0] == dw.itemsize, "the weight gradient lost its faster GEMM orientation"
    np.testing.assert_allclose(dw, g @ np.ascontiguousarray(cols).T, rtol=1e-4, atol=1e-3)


def _conv_net_grads(x, params):
    """conv -> batch norm -> relu -> max-pool -> conv -> sum of squares: values and gradients."""
    w1, b1, gamma, beta, w2 = (Tensor(p, requires_grad=True) for p in params)
    xt = Tensor(x, requires_grad=True)
    h = F.conv2d(xt, w1, b1, padding=1)
    h = F.relu(F.max_pool2d(F.batch_norm(h, None, None, gamma, beta, training=True), 2))
    out = F.conv2d(h, w2, None, stride=1, padding=1)
    loss = (out * out).sum()
    loss.backward()
    return [out.numpy().copy()] + [np.array(t.grad) for t in (xt, w1, b1, gamma, beta, w2)]


def test_a_conv_net_on_padded_rows_matches_contiguous(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 32, 32), dtype=np.float32)  # rows of 4 x 32 x 32, then 4 x 16 x 16 pixels
    params = [rng.standard_normal(s, dtype=np.float32) for s in ((8, 3, 3, 3), (8,), (8,), (8,), (4, 8, 3, 3))]
    plain = _conv_net_grads(x, params)
    monkeypatch.setattr(gemm, "_MIN_PADDED_BYTES", 0)
    monkeypatch.setattr(conv_kernels, "_MANY_ROWS", 0)
    seen = []
    orig = conv_kernels.im2col
    monkeypatch.setattr(conv_kernels, "im2col", lambda *a, **k: seen.append(orig(*a, **k)) or seen[-1])
    padded = _conv_net_grads(x, params)
    assert len(seen) == 2 and all(_padded(c) for c in seen), "a convolution's columns were not padded"
    for got, want in zip(padded, plain):  # float32, and BLAS may block a padded product differently
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (2, 2, 0), (3, 2, 1)])
def test_col2im_reads_padded_columns(pad_everything, kernel, stride, padding):
    shape = (2, 3, 16, 32)
    kernel_hw, stride_hw, pads, dilation, (ho, wo) = conv_geometry("test", shape, kernel, stride, padding)
    rows, n = shape[1] * kernel * kernel, shape[0] * ho * wo
    cols = gemm.empty_matrix(np, rows, n, np.float32)
    cols[...] = np.random.default_rng(2).standard_normal((rows, n), dtype=np.float32)
    geometry = kernel_hw, stride_hw, pads, (ho, wo), dilation
    got = conv_kernels.col2im(cols, shape, *geometry)
    want = conv_kernels.col2im(np.ascontiguousarray(cols), shape, *geometry)
    assert _padded(cols) == (n * 4 % 4096 == 0)
    np.testing.assert_array_equal(got, want)


def test_batch_norm_takes_channel_dots_on_padded_channels_without_a_copy():
    rng = np.random.default_rng(3)
    m = gemm.empty_matrix(np, 8, 2 * 32 * 32, np.float32)  # a convolution's (C, N*H*W) output
    m[...] = rng.standard_normal(m.shape, dtype=np.float32)
    x = m.reshape(8, 2, 32, 32).transpose(1, 0, 2, 3)     # (N, C, H, W), channel-major, padded
    rows = norm_ops._rows(x)
    assert rows is not None and np.shares_memory(rows, m), "each channel is one run: no copy needed"
    np.testing.assert_allclose(norm_ops._channel_dot(np, x, x), (x.astype(np.float64) ** 2).sum(axis=(0, 2, 3)),
                               rtol=1e-5)
    assert norm_ops._rows(np.ascontiguousarray(x)) is None  # NCHW: a channel is N separate runs
