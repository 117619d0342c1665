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

from ..backend import array_module, empty_matrix, is_floating, parallel_ranges
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


def im2col_array(x, kernel, stride, padding, out_hw, ones_row=False):
    N, C, H, W = x.shape
    (kh, kw), _, (ph, pw), (Ho, Wo) = kernel, stride, padding, out_hw
    xp = array_module(x)
    rows = C * kh * kw
    if rows >= _MANY_ROWS:  # the GEMM's operand, its rows laid out for BLAS (see empty_matrix)
        out = empty_matrix(xp, rows + ones_row, N * Ho * Wo, x.dtype)
    else:
        out = xp.empty((rows + ones_row, N * Ho * Wo), dtype=x.dtype)
    if ones_row:
        out[rows] = 1
    cols = out[:rows].reshape(C, kh, kw, N, Ho, Wo)
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
    return out


# Columns with fewer rows than this (a first layer's 27 or 28) are left unpadded: their GEMM
# gained ~4% from padding, and their weight gradient is a product small enough to go to
# ``dot`` (ops/linalg.py), which copies a padded operand first (+30% there).
_MANY_ROWS = 64


def col2im_array(cols, x_shape, kernel, stride, padding, out_hw):
    if stride == (1, 1) and tuple(out_hw) == tuple(x_shape[2:]):
        return _col2im_same(cols, x_shape, kernel, padding)
    return _col2im_rows(cols, x_shape, kernel, stride, padding, out_hw)


def _col2im_rows(cols, x_shape, kernel, stride, padding, out_hw):
    """col2im for any window: each tap is added to every image and channel at once, one
    image row at a time."""
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


def _col2im_same(cols, x_shape, kernel, padding):
    """col2im for a stride-1 window whose output grid is the input grid (a "same"
    convolution, e.g. 3x3 with padding 1): every kernel offset is then one constant shift
    of a channel's pixels flattened over all images, so each tap is added with one long
    contiguous add instead of an add per image row (2.5-3.5x faster here). The shift also
    carries each row's (and each image's) edge over to the next one; nothing of this tap
    belongs in the pixels it lands on there (the band of ``|di|`` rows / ``|dj|`` columns on
    the far side), so they are saved before the add and put back after it. Same sums in
    the same order as the row-wise path, so the same bits."""
    N, C, H, W = x_shape
    (kh, kw), (ph, pw) = kernel, padding
    xp = array_module(cols)
    n = N * H * W
    taps = cols.reshape(C, kh * kw, n)
    out = xp.empty((C, N, H, W), dtype=cols.dtype)
    flat = out.reshape(C, n)
    plan = _tap_plan(kernel, (1, 1), padding, (H, W), (H, W))
    # the centre tap covers every pixel once: assigned first, so no zero fill is needed
    offsets = sorted(((i - ph, j - pw, i * kw + j) for i, j, *_ in plan), key=lambda o: o[:2] != (0, 0))

    def accumulate(c_lo, c_hi):
        o, o4, t = flat[c_lo:c_hi], out[c_lo:c_hi], taps[c_lo:c_hi]
        o[...] = t[:, offsets[0][2]]
        for di, dj, k in offsets[1:]:
            shift = di * W + dj
            bands = [b for b in (o4[..., W + dj:] if dj < 0 else o4[..., :dj] if dj > 0 else None,
                                 o4[:, :, H + di:] if di < 0 else o4[:, :, :di] if di > 0 else None)
                     if b is not None]
            kept = [b.copy() for b in bands]
            if shift >= 0:
                o[:, shift:] += t[:, k, :n - shift]
            else:
                o[:, :n + shift] += t[:, k, -shift:]
            for b, v in zip(bands, kept):
                b[...] = v

    parallel_ranges(C, accumulate, out.size * len(offsets))
    return out.transpose(1, 0, 2, 3)


@register
class Im2col(Op):
    """(N, C, H, W) -> (C*kH*kW, N*Ho*Wo) patch columns; its VJP is col2im. With
    ``ones_row`` a last row of ones is appended, so that a bias can ride in the convolution's
    GEMM as one more weight column (and its gradient falls out of the weight-gradient GEMM)."""

    name = "im2col"

    def forward(self, x, kernel_size, stride=1, padding=0, ones_row=False):
        self.geometry = window_geometry(self.name, x.shape, kernel_size, stride, padding)
        self.in_shape, self.ones_row = x.shape, bool(ones_row)
        return im2col_array(x, *self.geometry, ones_row=self.ones_row)

    def backward(self, g):
        p = self.params
        return Col2im.apply(g[:-1] if self.ones_row else g, input_shape=self.in_shape,
                            kernel_size=p["kernel_size"], stride=p.get("stride", 1), padding=p.get("padding", 0))


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
        p = self.params
        return Im2col.apply(g, kernel_size=p["kernel_size"], stride=p.get("stride", 1), padding=p.get("padding", 0))


@register
class MaxPool2d(Op):
    """Max over each kH x kW window (padding counts as -inf). In the VJP each window's
    gradient goes to its first maximum in row-major order, so ties go to the first element,
    as in PyTorch.

    The max is taken in two separable passes: along each row over the kW column taps, then
    over the kH rows of those row maxima. Each pass keeps, as one byte per output, which tap
    won (the first of equals), so the first maximum of a row followed by the first row holding
    the window's maximum is exactly the row-major first maximum. Backward routes the gradient
    back through the two passes with one multiply per tap and never stores the input. Both
    directions work on channel blocks, on several threads for large inputs.
    """

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
        rows_used = (Ho - 1) * sh + kh  # input rows that some window reads
        self.col_taps = [(slice(None), slice(None), slice(0, rows_used), slice(j, j + (Wo - 1) * sw + 1, sw))
                         for j in range(kw)]
        self.row_taps = [(slice(None), slice(None), slice(i, i + (Ho - 1) * sh + 1, sh)) for i in range(kh)]
        keep = self._record
        channel_major = src.strides[1] > src.strides[0]  # e.g. a convolution's output
        rows_shape = src[self.col_taps[0]].shape  # the row maxima: (N, C, rows_used, Wo)
        out = _empty(xp, rows_shape[:2] + (Ho, Wo), x.dtype, channel_major)
        index_dtype = np.min_scalar_type(max(kh, kw) - 1)
        col_win = _empty(xp, rows_shape, index_dtype, channel_major) if keep and kw > 1 else None
        row_win = _empty(xp, out.shape, index_dtype, channel_major) if keep and kh > 1 else None

        def pool(lo, hi):
            for block in _blocks(lo, hi, src.shape[0], src.shape[2] * src.shape[3]):
                taps = [src[t][block] for t in self.col_taps]
                rows = _empty(xp, taps[0].shape, x.dtype, channel_major)  # one block's, in cache
                _running_max(xp, taps, rows, None if col_win is None else col_win[block])
                _running_max(xp, [rows[t] for t in self.row_taps], out[block],
                             None if row_win is None else row_win[block])

        parallel_ranges(x.shape[1], pool, src.size)
        self.save(col_win, row_win)
        self.geometry = (src.shape, rows_shape, (ph, pw), x.shape[2:], channel_major)
        return out

    def backward(self, g):
        from ..tensor import Tensor  # TEMPORARY until the routing primitive lands
        return Tensor._wrap(self._route(g.data), False)

    def _route(self, g):
        col_win, row_win = self.saved
        src_shape, rows_shape, (ph, pw), (H, W), channel_major = self.geometry
        xp = array_module(g)
        kh, sh = len(self.row_taps), self.row_taps[0][2].step
        kw, sw = len(self.col_taps), self.col_taps[0][3].step
        # The gradient of the row maxima, then of the input. Where windows do not overlap a
        # pass writes each tap's share; where they overlap it accumulates. Buffers start at
        # zero unless the windows cover every element.
        covered = sw == kw and rows_shape[2] == src_shape[2] and rows_shape[3] * kw == src_shape[3]
        gx = _empty(xp, src_shape, g.dtype, channel_major, zero=not covered)

        def route(lo, hi):
            for block in _blocks(lo, hi, src_shape[0], src_shape[2] * src_shape[3]):
                g_block = g[block]
                g_rows = _empty(xp, g_block.shape[:2] + rows_shape[2:], g.dtype, channel_major, zero=sh != kh)
                _route(xp, g_block, None if row_win is None else row_win[block],
                       [g_rows[t] for t in self.row_taps], sh >= kh)
                _route(xp, g_rows, None if col_win is None else col_win[block],
                       [gx[t][block] for t in self.col_taps], sw >= kw)

        parallel_ranges(src_shape[1], route, int(np.prod(src_shape)))
        return gx if not (ph or pw) else gx[:, :, ph:ph + H, pw:pw + W]


_CHUNK = 1 << 18  # elements per pooling block: big enough that per-call overhead is small


def _blocks(lo, hi, n, per_image):
    """Index tuples covering channels [lo, hi) and all ``n`` images in blocks of about
    ``_CHUNK`` elements: several channels of a small batch, or part of one channel's images."""
    per_channel = n * per_image
    if per_channel >= _CHUNK:
        step = max(1, _CHUNK // max(1, per_image))
        for c in range(lo, hi):
            for i in range(0, n, step):
                yield slice(i, min(i + step, n)), slice(c, c + 1)
    else:
        step = _CHUNK // max(1, per_channel)
        for c in range(lo, hi, step):
            yield slice(None), slice(c, min(c + step, hi))


def _empty(xp, shape, dtype, channel_major, zero=False):
    """An (N, C, ...) buffer, stored channel-major when the input was (the next op's layout)."""
    make = xp.zeros if zero else xp.empty
    if not channel_major:
        return make(shape, dtype)
    return make((shape[1], shape[0]) + tuple(shape[2:]), dtype).swapaxes(0, 1)


def _running_max(xp, taps, out, winner):
    """out = max over ``taps``; ``winner`` (if given) = index of the first tap holding it.
    Each tap is first copied to a contiguous scratch buffer: numpy copies strided views
    quickly, but its comparisons and maxima on them run several times slower."""
    out[...] = taps[0]
    if len(taps) == 1:
        return
    tap = xp.empty_like(out)
    for k, view in enumerate(taps[1:], start=1):
        tap[...] = view
        if winner is not None:
            if k == 1:
                xp.greater(tap, out, out=winner.view(bool))  # 0 or 1: ties stay with tap 0
            else:
                xp.copyto(winner, k, where=tap > out)  # only a strictly larger value takes over
        xp.maximum(out, tap, out=out)


def _route(xp, g, winner, targets, tiles):
    """Send ``g`` to the tap that won: ``targets[k] (+)= g * (winner == k)``; ``tiles``
    means the targets do not overlap, so each can be written instead of accumulated."""
    if winner is None:  # a single tap takes everything
        if tiles:
            targets[0][...] = g
        else:
            targets[0] += g
        return
    mask = xp.empty_like(g)
    for k, target in enumerate(targets):
        xp.equal(winner, k, out=mask)
        if tiles:
            xp.multiply(g, mask, out=target)
        else:
            mask *= g
            target += mask
