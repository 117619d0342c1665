"""GELU's kernels (``kernels.special.gelu``/``gelu_backward``) against their plain-loop
references and the float64 GELU, on every layout and dtype they meet, threaded and blocked;
and the float32 primitive against PyTorch's float32 GELU, first and second order. (The
float64 gradchecks are in test_ops_gradcheck.py's CASES, the float64 PyTorch oracles of both
forms in test_torch_oracle_ops.py.)"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_cnn as tc
import tinygrad_cnn.functional as F
from tinygrad_cnn import Tensor, ops, threads
from tinygrad_cnn.kernels import special as K

FORMS = ["none", "tanh"]


def _floats(dtype, lo=-8.0, hi=8.0):
    return st.floats(lo, hi, allow_nan=False, allow_subnormal=False, width=8 * np.dtype(dtype).itemsize)


def _gelu64(x, approximate):
    """GELU and its derivative in float64 (Cody's erfc, float64 rounding)."""
    x = np.asarray(x, dtype=np.float64)
    if approximate == "none":
        phi = np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)
        cdf = 0.5 * K.erfc(-x / np.sqrt(2))
        return x * cdf, cdf + x * phi
    k = np.sqrt(2 / np.pi)
    t = np.tanh(k * (x + 0.044715 * x ** 3))
    return 0.5 * x * (1 + t), 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x)


@pytest.mark.parametrize("approximate", FORMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_kernels_match_the_plain_loops(approximate, dtype, data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=4, max_side=5))
    x = data.draw(hnp.arrays(dtype, shape, elements=_floats(dtype)))
    g = data.draw(hnp.arrays(dtype, shape, elements=_floats(dtype, -3.0, 3.0)))
    tol = dict(rtol=1e-13, atol=1e-15)
    if dtype == np.float32:  # the tanh form's 1 - tanh^2 cancels where tanh saturates (as PyTorch's)
        tol = dict(rtol=2e-6, atol=1e-6 if approximate == "none" else 3e-6)
    y, d = K.gelu(x, approximate), K.gelu_backward(g, x, approximate)
    assert y.dtype == dtype and d.dtype == dtype and y.shape == x.shape and d.shape == x.shape
    np.testing.assert_allclose(y, K.naive_gelu(x, approximate), **tol)
    np.testing.assert_allclose(d, K.naive_gelu_backward(g, x, approximate), **tol)


@pytest.mark.parametrize("approximate", FORMS)
def test_float32_is_accurate_to_float32_everywhere(approximate):
    """float32 math, yet within a few float32 roundings of the float64 GELU over the whole
    range (the exact form's erfc is Abramowitz-Stegun 7.1.26, |error| <= 1.5e-7); tails
    included: no overflow, 0 far left, x far right."""
    x = np.concatenate([np.linspace(-12, 12, 400_001), [-1e4, -90.0, 90.0, 1e4]]).astype(np.float32)
    y64, d64 = _gelu64(x, approximate)
    y, d = K.gelu(x, approximate), K.gelu_backward(np.ones_like(x), x, approximate)
    scale = np.maximum(1.0, np.abs(y64))
    assert np.max(np.abs(y - y64) / scale) < (4e-7 if approximate == "none" else 6e-7)
    assert np.max(np.abs(d - d64)) < (4e-7 if approximate == "none" else 2e-6)
    assert y[-4] == 0 and y[-1] == np.float32(1e4) and d[-4] == 0 and d[-1] == 1


@pytest.mark.parametrize("approximate", FORMS)
def test_layouts_blocks_and_threads(approximate, monkeypatch):
    """A channel-major permutation keeps its layout; a strided view and a gradient in another
    layout are read correctly; sizes that straddle blocks, with the threaded path forced on."""
    monkeypatch.setattr(K, "_GELU_BLOCK", 1000)
    monkeypatch.setattr(threads, "_MIN_PARALLEL", 0)
    rng = np.random.default_rng(0)
    base = (rng.standard_normal((6, 5, 7, 9)) * 3).astype(np.float32)
    channel_major = base.transpose(1, 0, 2, 3)
    strided = base[:, ::2, :, 1:]
    for x in (channel_major, strided, base):
        g = np.ascontiguousarray(rng.standard_normal(x.shape).astype(np.float32))
        y, d = K.gelu(x, approximate), K.gelu_backward(g, x, approximate)
        y64, d64 = _gelu64(x, approximate)
        np.testing.assert_allclose(y, y64, rtol=2e-6, atol=1e-6)
        np.testing.assert_allclose(d, g * d64, rtol=2e-6, atol=2e-6)
        if x is channel_major:
            assert y.strides == x.strides  # the consumer sees the layout the producer made
        assert d.strides == g.strides


def test_narrower_floats_are_computed_in_float32():
    x = np.linspace(-4, 4, 101).astype(np.float16)
    y = K.gelu(x)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float64), _gelu64(x, "none")[0], rtol=1e-3, atol=1e-3)


def test_nan_and_inf_propagate_as_torch():
    import torch

    x = np.array([np.nan, -np.inf, np.inf, 0.0], dtype=np.float32)
    for approximate in FORMS:
        theirs = torch.nn.functional.gelu(torch.from_numpy(x), approximate=approximate).numpy()
        np.testing.assert_array_equal(K.gelu(x, approximate), theirs)


@pytest.mark.parametrize("approximate", FORMS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@given(data=st.data())
def test_the_kept_slope_gives_the_same_bits(approximate, dtype, data):
    """gelu(x, slope=True) returns gelu(x) unchanged and GELU'(x), and g * that slope is bit for
    bit what gelu_backward computes from x, in g's layout; the slope is never written."""
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=4, max_side=5))
    x = data.draw(hnp.arrays(dtype, shape, elements=_floats(dtype)))
    g = data.draw(hnp.arrays(dtype, shape, elements=_floats(dtype, -3.0, 3.0)))
    if x.ndim == 4 and data.draw(st.booleans()):
        x = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)  # channel-major
    y, slope = K.gelu(x, approximate, slope=True)
    np.testing.assert_array_equal(y, K.gelu(x, approximate))
    assert slope.shape == x.shape and slope.dtype == (np.float64 if dtype == np.float64 else np.float32)
    same_layout = [a * x.itemsize == b * slope.itemsize for a, b, n in zip(slope.strides, y.strides, x.shape) if n > 1]
    assert all(same_layout)  # the slope is laid out as the output (a channel-major one too)
    kept = slope.copy()
    d = K.gelu_backward(g, x, approximate, slope=slope)
    np.testing.assert_array_equal(d, K.gelu_backward(g, x, approximate))
    assert d.dtype == dtype and d.strides == K.gelu_backward(g, x, approximate).strides
    np.testing.assert_array_equal(slope, kept)


@pytest.mark.parametrize("approximate", FORMS)
def test_the_slope_straddles_blocks_and_threads(approximate, monkeypatch):
    monkeypatch.setattr(K, "_GELU_BLOCK", 1000)
    monkeypatch.setattr(threads, "_MIN_PARALLEL", 0)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((5, 6, 7, 9)) * 3).astype(np.float32).transpose(1, 0, 2, 3)
    g = rng.standard_normal(x.shape).astype(np.float32)
    y, slope = K.gelu(x, approximate, slope=True)
    np.testing.assert_array_equal(y, K.gelu(x, approximate))
    np.testing.assert_array_equal(K.gelu_backward(g, x, approximate, slope=slope), K.gelu_backward(g, x, approximate))
    np.testing.assert_allclose(slope, _gelu64(x, approximate)[1], rtol=2e-6, atol=2e-6)


def test_recording_keeps_the_slope_and_inference_keeps_nothing():
    x = Tensor(np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4), requires_grad=True)
    y = F.gelu(x)
    assert y._ctx.name == "gelu" and y._ctx.label() == "approximate=none"
    (slope,) = y._ctx.saved
    np.testing.assert_allclose(slope, _gelu64(x.data, "none")[1], rtol=1e-6, atol=1e-6)
    (g,) = tc.grad(y.sum(), [x], create_graph=True)
    np.testing.assert_array_equal(g.data, K.gelu_backward(np.ones(y.shape, np.float32), x.data))
    assert repr(g._ctx) == "gelu_backward(approximate='none', slope=float32[3x4])"  # not the slope's values
    with tc.no_grad():
        assert F.gelu(x)._ctx is None
    assert F.gelu(Tensor(x.data))._ctx is None  # nothing requires grad: nothing recorded


def test_a_slope_of_another_shape_is_refused():
    x = Tensor(np.zeros(3))
    with pytest.raises(ValueError, match=r"gelu_backward: slope must be GELU'\(x\), an array of x's shape \(3,\); "
                                         r"got \(2,\)"):
        ops.GeluBackward.apply(x, x, slope=np.zeros(2))


@pytest.mark.parametrize("op", ["gelu", "gelu_backward"])
def test_errors_name_the_op(op):
    fn = ((lambda x, a: ops.Gelu.apply(x, approximate=a)) if op == "gelu"
          else (lambda x, a: ops.GeluBackward.apply(x, x, approximate=a)))
    with pytest.raises(ValueError, match=f"{op}: approximate must be 'none' or 'tanh'; got 'fast'"):
        fn(Tensor(np.zeros(2)), "fast")
    with pytest.raises(TypeError, match=f"{op}: expects a floating-point tensor; got dtype int64"):
        fn(Tensor(np.zeros(2, np.int64)), "none")
    with pytest.raises(ValueError, match="gelu_backward: expects g and x of one shape; got \\(2,\\) and \\(3,\\)"):
        ops.GeluBackward.apply(Tensor(np.zeros(2)), Tensor(np.zeros(3)))


@pytest.mark.parametrize("approximate", FORMS)
def test_float32_against_torch_first_and_second_order(approximate):
    """The float32 primitive against PyTorch's float32 GELU: values, gradients, and a
    Hessian-vector product (create_graph), to float32 accuracy."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 3, 5, 4)) * 2.5).astype(np.float32)
    w = rng.standard_normal(x.shape).astype(np.float32)
    v = rng.standard_normal(x.shape).astype(np.float32)
    ours = Tensor(x, requires_grad=True)
    y = F.gelu(ours, approximate=approximate)
    (g,) = tc.grad((y * Tensor(w)).sum(), [ours], create_graph=True)
    (h,) = tc.grad((g * Tensor(v)).sum(), [ours])
    theirs = torch.from_numpy(x.copy()).requires_grad_()
    ty = torch.nn.functional.gelu(theirs, approximate=approximate)
    (tg,) = torch.autograd.grad((ty * torch.from_numpy(w)).sum(), theirs, create_graph=True)
    (th,) = torch.autograd.grad((tg * torch.from_numpy(v)).sum(), theirs)
    assert y.dtype == g.dtype == h.dtype == np.float32
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g.data, tg.detach().numpy(), rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(h.data, th.numpy(), rtol=1e-4, atol=1e-5)
