"""Sliding-window primitives on NCHW tensors: im2col, its adjoint col2im, and max-pooling.

Layout: ``im2col`` turns (N, C, H, W) into columns of shape (C*kH*kW, N*Ho*Wo): row
(c, i, j) holds input channel c shifted by kernel offset (i, j), for every output pixel
(n, ho, wo). Then a convolution is one GEMM, ``W.reshape(C_out, -1) @ cols``, in the
orientation that runs fastest for the skinny shapes of small CNNs, and each copy moves
whole image rows. Padding is folded in: out-of-range taps are left as zeros, so no padded
copy of the input is ever made. All loops run over the kH*kW kernel offsets only; each
iteration is one vectorised copy of every image and channel at once.
"""
from __future__ import annotations

import operator

import numpy as np

from ..backend import array_module, is_floating, parallel_ranges
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


def _taps(offset, pad, stride, size, out_size):
    """For kernel offset ``offset``: the output range [lo, hi) whose input tap is inside the
    image, and the matching input slice."""
    lo = max(0, -((offset - pad) // stride))
    hi = min(out_size, (size - 1 + pad - offset) // stride + 1)
    if lo >= hi:
        return lo, lo, None
    start = lo * stride + offset - pad
    return lo, hi, slice(start, start + (hi - lo - 1) * stride + 1, stride)


def _tap_plan(kernel, stride, padding, in_hw, out_hw):
    """For each kernel offset (i, j): (i, j, output rows, output cols, input rows, input cols)
    of the taps that land inside the image; taps entirely in the padding are left out."""
    (kh, kw), (sh, sw), (ph, pw), (H, W), (Ho, Wo) = kernel, stride, padding, in_hw, out_hw
    plan = []
    for i in range(kh):
        r0, r1, rows = _taps(i, ph, sh, H, Ho)
        for j in range(kw):
            c0, c1, cs = _taps(j, pw, sw, W, Wo)
            if rows is not None and cs is not None:
                plan.append((i, j, slice(r0, r1), slice(c0, c1), rows, cs))
    return plan


def im2col_array(x, kernel, stride, padding, out_hw):
    N, C, H, W = x.shape
    (kh, kw), _, (ph, pw), (Ho, Wo) = kernel, stride, padding, out_hw
    xp = array_module(x)
    cols = xp.empty((C, kh, kw, N, Ho, Wo), dtype=x.dtype)
    xt = x.transpose(1, 0, 2, 3)
    plan = _tap_plan(kernel, stride, padding, (H, W), out_hw)
    inside = {(i, j) for i, j, *_ in plan}
    outside = [(i, j) for i in range(kh) for j in range(kw) if (i, j) not in inside]

    def fill(c_lo, c_hi):
        block = cols[c_lo:c_hi]
        for i, j in outside:  # taps that only ever see padding
            block[:, i, j] = 0
        for i, j, o_r, o_c, rows, cs in plan:
            tap = block[:, i, j]
            tap[:, :, o_r, o_c] = xt[c_lo:c_hi, :, rows, cs]
            if ph or pw:  # zero the border where this tap falls into the padding
                tap[:, :, :o_r.start] = 0
                tap[:, :, o_r.stop:] = 0
                tap[:, :, o_r, :o_c.start] = 0
                tap[:, :, o_r, o_c.stop:] = 0

    parallel_ranges(C, fill, cols.size)
    return cols.reshape(C * kh * kw, N * Ho * Wo)


def col2im_array(cols, x_shape, kernel, stride, padding, out_hw):
    N, C, H, W = x_shape
    (kh, kw), (Ho, Wo) = kernel, out_hw
    xp = array_module(cols)
    c6 = cols.reshape(C, kh, kw, N, Ho, Wo)
    out = xp.empty((C, N, H, W), dtype=cols.dtype)
    plan = _tap_plan(kernel, stride, padding, (H, W), out_hw)
    # A tap that covers every input pixel once (stride 1, e.g. the centre of a "same" conv)
    # is assigned first, so the buffer needs no zero fill.
    full = next((t for t in plan if (t[4], t[5]) == (slice(0, H, 1), slice(0, W, 1))), None)

    def accumulate(c_lo, c_hi):
        if full is None:
            out[c_lo:c_hi] = 0
        else:
            i, j, o_r, o_c, _, _ = full
            out[c_lo:c_hi] = c6[c_lo:c_hi, i, j, :, o_r, o_c]
        for tap in plan:
            if tap is not full:
                i, j, o_r, o_c, rows, cs = tap
                out[c_lo:c_hi, :, rows, cs] += c6[c_lo:c_hi, i, j, :, o_r, o_c]

    parallel_ranges(C, accumulate, out.size * len(plan))
    return out.transpose(1, 0, 2, 3)


@register
class Im2col(Op):
    """(N, C, H, W) -> (C*kH*kW, N*Ho*Wo) patch columns; its VJP is col2im."""

    name = "im2col"

    def forward(self, x, kernel_size, stride=1, padding=0):
        self.geometry = window_geometry(self.name, x.shape, kernel_size, stride, padding)
        self.in_shape = x.shape
        return im2col_array(x, *self.geometry)

    def backward(self, g):
        return col2im_array(g, self.in_shape, *self.geometry)


@register
class Col2im(Op):
    """(C*kH*kW, N*Ho*Wo) columns -> (N, C, H, W), summing overlapping taps; its VJP is im2col."""

    name = "col2im"

    def forward(self, cols, input_shape, kernel_size, stride=1, padding=0):
        self.in_shape = tuple(int(n) for n in input_shape)
        self.geometry = window_geometry(self.name, self.in_shape, kernel_size, stride, padding)
        (kh, kw), _, _, (Ho, Wo) = self.geometry
        N, C = self.in_shape[:2]
        expected = (C * kh * kw, N * Ho * Wo)
        if cols.shape != expected:
            raise ValueError(f"col2im: columns of shape {cols.shape} do not fit input shape {self.in_shape} "
                             f"with kernel {(kh, kw)}: expected {expected}")
        return col2im_array(cols, self.in_shape, *self.geometry)

    def backward(self, g):
        return im2col_array(g, *self.geometry)


@register
class MaxPool2d(Op):
    """Max over each kH x kW window (padding counts as -inf). In the VJP each window's
    gradient goes to its first maximum in row-major order, so ties go to the first element,
    as in PyTorch. Forward is a running ``maximum`` over the kH*kW strided tap views; the
    argmax is not stored but recovered in backward by comparing each tap with the output.
    Both directions work on channel blocks, on several threads for large inputs."""

    name = "max_pool2d"

    def forward(self, x, kernel_size, stride=None, padding=0):
        if not is_floating(x.dtype):
            raise TypeError(f"max_pool2d: expects a floating-point tensor; got dtype {x.dtype}")
        stride = kernel_size if stride is None else stride
        (kh, kw), (sh, sw), (ph, pw), (Ho, Wo) = window_geometry(self.name, x.shape, kernel_size, stride, padding)
        if 2 * ph > kh or 2 * pw > kw:
            raise ValueError(f"max_pool2d: padding {(ph, pw)} must be at most half the kernel {(kh, kw)}")
        xp = array_module(x)
        src = x if not (ph or pw) else xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
        self.windows = [(slice(None), slice(None), slice(i, i + (Ho - 1) * sh + 1, sh),
                         slice(j, j + (Wo - 1) * sw + 1, sw)) for i in range(kh) for j in range(kw)]
        taps = [src[w] for w in self.windows]
        out = xp.empty_like(taps[0])  # keeps the input's memory layout (e.g. channel-major)

        def pool(lo, hi):
            o = out[:, lo:hi]
            if len(taps) == 1:
                o[...] = taps[0][:, lo:hi]
                return
            xp.maximum(taps[0][:, lo:hi], taps[1][:, lo:hi], out=o)
            for tap in taps[2:]:
                xp.maximum(o, tap[:, lo:hi], out=o)

        parallel_ranges(x.shape[1], pool, src.size)
        self.save(src, out)
        self.in_shape, self.pad = x.shape, (ph, pw)
        # windows that neither overlap nor leave gaps let backward write instead of accumulate
        self.tiles = (kh, kw) == (sh, sw) and not (ph or pw) and Ho * kh == x.shape[2] and Wo * kw == x.shape[3]
        return out

    def backward(self, g):
        src, out = self.saved
        xp = array_module(g)
        gx = xp.empty_like(src) if self.tiles else xp.zeros_like(src)
        parallel_ranges(src.shape[1], lambda lo, hi: self._route(xp, src[:, lo:hi], out[:, lo:hi],
                                                                  g[:, lo:hi], gx[:, lo:hi]), src.size)
        (ph, pw), (H, W) = self.pad, self.in_shape[2:]
        return gx if not (ph or pw) else gx[:, :, ph:ph + H, pw:pw + W]

    def _route(self, xp, src, out, g, gx):
        """Send each window's gradient to its first maximum (one block of channels)."""
        hits = [src[w] == out for w in self.windows]
        if self.tiles and sum(int(xp.count_nonzero(h)) for h in hits) == out.size:
            # every window has exactly one maximum (no ties, no NaN): write through the masks
            for w, hit in zip(self.windows, hits):
                xp.multiply(g, hit, out=gx[w])
            return
        unclaimed = None  # windows whose maximum has not been routed yet
        for w, hit in zip(self.windows, hits):
            if unclaimed is None:
                unclaimed = ~hit
            else:
                hit &= unclaimed
                unclaimed &= ~hit
            if self.tiles:
                xp.multiply(g, hit, out=gx[w])
            else:
                gx[w] += g * hit
