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


def window_pairs(name, kernel_size, stride, dilation):
    """A sliding window's kernel size, stride and dilation as positive pairs, or a clear error
    (``stride`` None: the kernel, as pooling's default). Convolutions and pooling share it."""
    kh, kw = as_pair(name, "kernel_size", kernel_size)
    sh, sw = (kh, kw) if stride is None else as_pair(name, "stride", stride)
    dh, dw = as_pair(name, "dilation", dilation)
    if kh < 1 or kw < 1:
        raise ValueError(f"{name}: kernel_size must be positive; got {(kh, kw)}")
    if sh < 1 or sw < 1:
        raise ValueError(f"{name}: stride must be positive; got {(sh, sw)}")
    if dh < 1 or dw < 1:
        raise ValueError(f"{name}: dilation must be positive; got {(dh, dw)}")
    return (kh, kw), (sh, sw), (dh, dw)


def conv_padding(name, padding, kernel=None, stride=None, dilation=None):
    """A convolution's padding as (top, bottom, left, right): from an int, an (h, w) pair, our
    4-tuple ``(top, bottom, left, right)``, or PyTorch's strings. ``'valid'`` is no padding;
    ``'same'`` pads ``dilation * (kernel - 1)`` in all, half before and the rest (the odd
    one) after, as PyTorch does, and needs stride 1 (``kernel``/``stride``/``dilation`` pairs)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError(f"{name}: padding must be an int, a pair, a (top, bottom, left, right) tuple, "
                             f"'same' or 'valid'; got {padding!r}")
        if tuple(stride) != (1, 1):
            raise ValueError(f"{name}: padding='same' needs stride 1 (as in PyTorch); got stride {tuple(stride)}: "
                             f"give the padding as numbers instead")
        (th, tw) = (dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1))
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    try:
        if isinstance(padding, (tuple, list)) and len(padding) == 4:
            pads = shown = tuple(operator.index(v) for v in padding)
        else:
            shown = ph, pw = as_pair(name, "padding", padding)
            pads = (ph, ph, pw, pw)
    except TypeError:
        raise TypeError(f"{name}: padding must be an int, a pair, a (top, bottom, left, right) tuple of ints, "
                        f"'same' or 'valid'; got {padding!r}") from None
    if min(pads) < 0:
        raise ValueError(f"{name}: padding must be non-negative; got {shown}")
    return pads


def conv_geometry(name, x_shape, kernel_size, stride, padding, dilation=1):
    """Validate a convolution's window over the last two axes (padding as ``conv_padding``
    takes it, dilation too); return (kernel, stride, padding, dilation, out_hw) with the
    padding as (top, bottom, left, right) and the others as pairs."""
    if len(x_shape) != 4:
        raise ValueError(f"{name}: expects a 4-d NCHW tensor; got shape {tuple(x_shape)}")
    (kh, kw), (sh, sw), (dh, dw) = window_pairs(name, kernel_size, stride, dilation)
    pads = conv_padding(name, padding, (kh, kw), (sh, sw), (dh, dw))
    pt, pb, pl, pr = pads
    H, W = x_shape[2], x_shape[3]
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1  # the window's extent, dilated
    if eh > H + pt + pb or ew > W + pl + pr:
        dilated = "" if (dh, dw) == (1, 1) else f" (dilation {(dh, dw)}: {eh}x{ew} pixels)"
        shown = (pt, pl) if (pt, pl) == (pb, pr) else pads
        raise ValueError(f"{name}: kernel {kh}x{kw}{dilated} is larger than the padded input "
                         f"{H + pt + pb}x{W + pl + pr} (input {H}x{W}, padding {shown})")
    out_hw = ((H + pt + pb - eh) // sh + 1, (W + pl + pr - ew) // sw + 1)
    return (kh, kw), (sh, sw), pads, (dh, dw), out_hw


def window_label(params, default_stride) -> str:
    """``k=3x3 s=1 p=1`` (and ``+ones`` for im2col's row of ones): a window op's label."""
    def pair(v, always_two=False):
        if isinstance(v, (tuple, list)):
            return str(v[0]) if len(v) == 2 and v[0] == v[1] and not always_two else "x".join(map(str, v))
        return f"{v}x{v}" if always_two else str(v)

    k, s, p = params.get("kernel_size"), params.get("stride", default_stride), params.get("padding", 0)
    p = ",".join(map(str, p)) if isinstance(p, (tuple, list)) and len(p) == 4 else p if isinstance(p, str) else pair(p)
    text = f"k={pair(k, always_two=True)} s={pair(k if s is None else s)} p={p}"
    d = params.get("dilation", 1)
    if d not in (1, (1, 1), [1, 1]):
        text += f" d={pair(d)}"
    return text + (" +ones" if params.get("ones_row") else "")


# ------------------------------------------------------------------------ im2col, col2im


@register
class Im2col(Op):
    """(N, C, H, W) -> (C*kH*kW, N*Ho*Wo) patch columns; its VJP is col2im. With
    ``ones_row`` a last row of ones is appended, so that a bias can ride in the convolution's
    GEMM as one more weight column (and its gradient falls out of the weight-gradient GEMM).
    ``padding`` is an int, a pair or (top, bottom, left, right) (or 'same'/'valid');
    ``dilation`` spaces the taps apart (tap (i, j) reads pixel (ho*sh + i*dh - top, ...))."""

    name = "im2col"
    reads = ()

    def forward(self, x, kernel_size, stride=1, padding=0, ones_row=False, dilation=1):
        kernel, stride_, pads, dil, out_hw = conv_geometry(self.name, x.shape, kernel_size, stride, padding, dilation)
        return conv_kernels.im2col(x, kernel, stride_, pads, out_hw, ones_row=bool(ones_row), dilation=dil)

    def backward(self, g):
        p = self.params
        return Col2im.apply(g[:-1] if p.get("ones_row") else g, input_shape=self.parents[0].shape,
                            kernel_size=p["kernel_size"], stride=p.get("stride", 1), padding=p.get("padding", 0),
                            dilation=p.get("dilation", 1))

    def label(self):
        return window_label(self.params, 1)


@register
class Col2im(Op):
    """(C*kH*kW, N*Ho*Wo) columns -> (N, C, H, W), summing overlapping taps; its VJP is im2col.
    The window's parameters are im2col's (padding and dilation included)."""

    name = "col2im"
    reads = ()

    def forward(self, cols, input_shape, kernel_size, stride=1, padding=0, dilation=1):
        in_shape = tuple(int(n) for n in input_shape)
        kernel, stride_, pads, dil, (Ho, Wo) = conv_geometry(self.name, in_shape, kernel_size, stride, padding,
                                                             dilation)
        (kh, kw) = kernel
        expected = (in_shape[1] * kh * kw, in_shape[0] * Ho * Wo)
        if cols.shape != expected:
            raise ValueError(f"col2im: columns of shape {cols.shape} do not fit input shape {in_shape} "
                             f"with kernel {(kh, kw)}: expected {expected}")
        return conv_kernels.col2im(cols, in_shape, kernel, stride_, pads, (Ho, Wo), dilation=dil)

    def backward(self, g):
        p = self.params
        return Im2col.apply(g, kernel_size=p["kernel_size"], stride=p.get("stride", 1), padding=p.get("padding", 0),
                            dilation=p.get("dilation", 1))

    def label(self):
        return window_label(self.params, 1)


# ------------------------------------------------- conv2d that keeps only its input (issue 18)


def _conv_window(params):
    return dict(kernel_size=params["kernel_size"], stride=params.get("stride", 1),
                padding=params.get("padding", 0), dilation=params.get("dilation", 1))


def conv2d_input_grad(g, w, input_shape, window):
    """The gradient of a convolution's input (N, C, H, W) for an output gradient ``g`` and
    weight ``w``, as Tensor code: ``col2im(W.T @ g)`` (a transposed convolution; matmul and
    col2im, so differentiable to any order)."""
    c_out = w.shape[0]
    gm = g.permute(1, 0, 2, 3).reshape(c_out, -1)          # free for a channel-major gradient
    return Col2im.apply(w.reshape(c_out, -1).T @ gm, input_shape=tuple(input_shape), **window)


def _check_conv(name, x, w, bias=None):
    if x.ndim != 4 or w.ndim != 4 or x.shape[1] != w.shape[1]:
        raise ValueError(f"{name}: expects an (N, C, H, W) input and a (C_out, C, kH, kW) weight; got "
                         f"{x.shape} and {w.shape}")
    if bias is not None and bias.shape != (w.shape[0],):
        raise ValueError(f"{name}: bias must have shape ({w.shape[0]},); got {bias.shape}")


@register
class Conv2d(Op):
    """A convolution (groups 1) that keeps only its input for backward, not its columns.

    The composite im2col -> matmul keeps the columns for the weight gradient: kH*kW times
    the input (airbench's step kept 7.1 GB, most of it columns). Here the forward makes the
    columns one block of images at a time (``kernels.conv.conv2d``) and keeps none; the VJP
    is Tensor code: the input gradient is ``col2im(W.T @ g)`` (matmul and col2im, as the
    composite's), the weight gradient ``conv2d_weight(x, g)``, which makes the columns again
    block by block, and the bias gradient a sum. Inputs: x, weight[, bias]."""

    name = "conv2d"
    reads = ("inputs",)

    def forward(self, x, w, *bias, kernel_size, stride=1, padding=0, dilation=1):
        b = bias[0] if bias else None
        _check_conv(self.name, x, w, b)
        if tuple(w.shape[2:]) != tuple(as_pair(self.name, "kernel_size", kernel_size)):
            raise ValueError(f"{self.name}: kernel_size {kernel_size!r} is not the weight's {tuple(w.shape[2:])}")
        kernel, stride_, pads, dil, out_hw = conv_geometry(self.name, x.shape, kernel_size, stride, padding, dilation)
        return conv_kernels.conv2d(x, w, b, kernel, stride_, pads, out_hw, dil)

    def backward(self, g):
        x, w = self.parents[0], self.parents[1]
        need = self.needs_input_grad
        window = _conv_window(self.params)
        gx = conv2d_input_grad(g, w, x.shape, window) if need[0] else None
        gw = Conv2dWeight.apply(x, g, **window) if need[1] else None
        if len(self.parents) == 2:
            return gx, gw
        return gx, gw, (g.sum(axis=(0, 2, 3)) if need[2] else None)

    def label(self):
        return window_label(self.params, 1)


@register
class Conv2dWeight(Op):
    """(x (N, C, H, W), g (N, C_out, Ho, Wo)) -> the weight gradient (C_out, C, kH, kW) of the
    convolution of x with that window: ``g @ im2col(x).T``, the columns made block by block
    and dropped (``kernels.conv.conv2d_weight``). Linear in each input: its VJP for a
    weight-shaped ``gw`` is ``col2im(gw.T @ g)`` for x and ``conv2d(x, gw)`` for g."""

    name = "conv2d_weight"
    reads = ("inputs",)

    def forward(self, x, g, kernel_size, stride=1, padding=0, dilation=1):
        kernel, stride_, pads, dil, out_hw = conv_geometry(self.name, x.shape, kernel_size, stride, padding, dilation)
        if g.ndim != 4 or g.shape[0] != x.shape[0] or tuple(g.shape[2:]) != tuple(out_hw):
            raise ValueError(f"{self.name}: a gradient of shape {g.shape} does not fit the convolution of {x.shape} "
                             f"with kernel {kernel}: expected ({x.shape[0]}, C_out, {out_hw[0]}, {out_hw[1]})")
        return conv_kernels.conv2d_weight(x, g, kernel, stride_, pads, out_hw, dil)

    def backward(self, gw):
        x, g = self.parents
        need = self.needs_input_grad
        window = _conv_window(self.params)
        gx = conv2d_input_grad(g, gw, x.shape, window) if need[0] else None
        gg = Conv2d.apply(x, gw, **window) if need[1] else None
        return gx, gg

    def label(self):
        return window_label(self.params, 1)
