"""Sliding-window primitives on NCHW tensors: im2col and its adjoint col2im (a convolution is
im2col, then one GEMM). Pooling is in ``ops/pool.py``.

Each forward is one call into ``tinygrad_cnn.kernels.conv`` (the fast array code, with
plain-loop references beside it); each VJP is Tensor code, so both are differentiable to any
order. The VJP chain closes on itself:

    im2col -> col2im -> im2col -> ...                       (each the other's transpose)
"""
from __future__ import annotations

import operator

from ..kernels import conv as conv_kernels
from . import Op, register


def as_pair(name, what, value):
    """An int or a pair of ints as a pair of ints, or a clear error."""
    try:
        if isinstance(value, (tuple, list)):
            if len(value) != 2:
                raise TypeError
            return operator.index(value[0]), operator.index(value[1])
        v = operator.index(value)
        return v, v
    except TypeError:
        raise TypeError(f"{name}: {what} must be an int or a pair of ints; got {value!r}") from None


def window_geometry(name, x_shape, kernel_size, stride, padding):
    """Validate a sliding window over the last two axes; return (kernel, stride, padding, out_hw)."""
    if len(x_shape) != 4:
        raise ValueError(f"{name}: expects a 4-d NCHW tensor; got shape {tuple(x_shape)}")
    kh, kw = as_pair(name, "kernel_size", kernel_size)
    sh, sw = as_pair(name, "stride", stride)
    ph, pw = as_pair(name, "padding", padding)
    if kh < 1 or kw < 1:
        raise ValueError(f"{name}: kernel_size must be positive; got {(kh, kw)}")
    if sh < 1 or sw < 1:
        raise ValueError(f"{name}: stride must be positive; got {(sh, sw)}")
    if ph < 0 or pw < 0:
        raise ValueError(f"{name}: padding must be non-negative; got {(ph, pw)}")
    H, W = x_shape[2], x_shape[3]
    if kh > H + 2 * ph or kw > W + 2 * pw:
        raise ValueError(f"{name}: kernel {kh}x{kw} is larger than the padded input "
                         f"{H + 2 * ph}x{W + 2 * pw} (input {H}x{W}, padding {(ph, pw)})")
    out_hw = ((H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1)
    return (kh, kw), (sh, sw), (ph, pw), out_hw


def window_label(params, default_stride) -> str:
    """``k=3x3 s=1 p=1`` (and ``+ones`` for im2col's row of ones): a window op's label."""
    def pair(v, always_two=False):
        if isinstance(v, (tuple, list)):
            return str(v[0]) if len(v) == 2 and v[0] == v[1] and not always_two else "x".join(map(str, v))
        return f"{v}x{v}" if always_two else str(v)

    k, s = params.get("kernel_size"), params.get("stride", default_stride)
    text = f"k={pair(k, always_two=True)} s={pair(k if s is None else s)} p={pair(params.get('padding', 0))}"
    return text + (" +ones" if params.get("ones_row") else "")


# ------------------------------------------------------------------------ im2col, col2im


@register
class Im2col(Op):
    """(N, C, H, W) -> (C*kH*kW, N*Ho*Wo) patch columns; its VJP is col2im. With
    ``ones_row`` a last row of ones is appended, so that a bias can ride in the convolution's
    GEMM as one more weight column (and its gradient falls out of the weight-gradient GEMM)."""

    name = "im2col"
    reads = ()

    def forward(self, x, kernel_size, stride=1, padding=0, ones_row=False):
        geometry = window_geometry(self.name, x.shape, kernel_size, stride, padding)
        return conv_kernels.im2col(x, *geometry, ones_row=bool(ones_row))

    def backward(self, g):
        p = self.params
        return Col2im.apply(g[:-1] if p.get("ones_row") else g, input_shape=self.parents[0].shape,
                            kernel_size=p["kernel_size"], stride=p.get("stride", 1), padding=p.get("padding", 0))

    def label(self):
        return window_label(self.params, 1)


@register
class Col2im(Op):
    """(C*kH*kW, N*Ho*Wo) columns -> (N, C, H, W), summing overlapping taps; its VJP is im2col."""

    name = "col2im"
    reads = ()

    def forward(self, cols, input_shape, kernel_size, stride=1, padding=0):
        in_shape = tuple(int(n) for n in input_shape)
        geometry = window_geometry(self.name, in_shape, kernel_size, stride, padding)
        (kh, kw), _, _, (Ho, Wo) = geometry
        expected = (in_shape[1] * kh * kw, in_shape[0] * Ho * Wo)
        if cols.shape != expected:
            raise ValueError(f"col2im: columns of shape {cols.shape} do not fit input shape {in_shape} "
                             f"with kernel {(kh, kw)}: expected {expected}")
        return conv_kernels.col2im(cols, in_shape, *geometry)

    def backward(self, g):
        p = self.params
        return Im2col.apply(g, kernel_size=p["kernel_size"], stride=p.get("stride", 1), padding=p.get("padding", 0))

    def label(self):
        return window_label(self.params, 1)
