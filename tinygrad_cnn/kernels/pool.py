"""Pooling on arrays: max-pooling, which remembers each window's winner in one byte per
output and pass; the routing of a gradient to those winners (max-pool's VJP) and its
transpose, the gather of an input-shaped array at the winners (the VJP's VJP); and
average pooling with its transpose (each the other's VJP: both are linear).

Both poolings run in two separable passes: along each row over the kW column taps, then
over the kH rows of those row results. Max-pooling keeps, as one byte per output and pass,
which tap won (the first of equals), so the first maximum of a row followed by the first
row holding the window's maximum is exactly the row-major first maximum, as in PyTorch.
Routing and gathering walk back through the same two passes, one multiply or one masked
copy per tap, and never need the input. Average pooling sums the taps the same way (strided
adds, each tap only over the outputs it reaches inside the input, so padding is never
materialised) and scales each output by one over its divisor. Everything works on
channel blocks, on several threads for large inputs.

Geometry arguments are already validated and resolved (``ops.pool.pool_geometry``):
``kernel``, ``stride`` and ``dilation`` (h, w) pairs; ``padding`` (top, bottom, left,
right) (an (h, w) pair is accepted too); ``out_hw`` the output grid (Ho, Wo), which also
says how far the windows reach: in ceil mode the last ones may run past the bottom or right
padding, and those taps count as padding (-inf for the max, 0 for the sum). The ``naive_*``
functions are the same maps as plain loops over windows: the reference the tests hold the
fast code to.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..threads import parallel_ranges
from ..xp import array_module

_CHUNK = 1 << 18  # elements per pooling block: big enough that per-call overhead is small


class Winners(NamedTuple):
    """Which element won each window of a max-pool, as ``max_pool2d`` found it.

    ``cols``: (N, C, rows_used, Wo), for each padded input row the windows reach, the column
    tap (0..kW-1) holding that row's maximum; None for a one-column kernel. ``rows``:
    (N, C, Ho, Wo), the row tap (0..kH-1) whose row maximum is the window's; None for a
    one-row kernel. Both of the smallest unsigned type that holds the taps (one byte for
    any kernel up to 256). ``channel_major``: the (padded) input was stored channel by
    channel, as a convolution's output is; the routed gradient is laid out the same way."""

    cols: object
    rows: object
    channel_major: bool


def padding4(padding):
    """(top, bottom, left, right) from an (h, w) pair or a 4-tuple."""
    padding = tuple(padding)
    return (padding[0], padding[0], padding[1], padding[1]) if len(padding) == 2 else padding


def reach(size, kernel, stride, dilation, out):
    """How many padded positions along one axis the windows read: the last window's last tap + 1."""
    return (out - 1) * stride + (kernel - 1) * dilation + 1


def _plan(x_shape, kernel, stride, padding, out_hw, dilation):
    """The two passes' views: (padded input shape, row-results shape, column taps, row taps).
    Column tap j reads every used padded row at columns j*dW, j*dW+sW, ...; row tap i reads
    rows i*dH, i*dH+sH, ... of the row results. The padded input is as large as the windows
    reach (beyond the bottom/right padding in ceil mode) and holds the whole input."""
    N, C, H, W = x_shape
    (kh, kw), (sh, sw), (dh, dw), (Ho, Wo) = kernel, stride, dilation, out_hw
    top, _, left, _ = padding4(padding)
    rows_used, cols_used = reach(H, kh, sh, dh, Ho), reach(W, kw, sw, dw, Wo)
    col_taps = [(slice(None), slice(None), slice(0, rows_used), slice(j * dw, j * dw + (Wo - 1) * sw + 1, sw))
                for j in range(kw)]
    row_taps = [(slice(None), slice(None), slice(i * dh, i * dh + (Ho - 1) * sh + 1, sh)) for i in range(kh)]
    src_shape = (N, C, max(rows_used, top + H), max(cols_used, left + W))
    return src_shape, (N, C, rows_used, Wo), col_taps, row_taps


def _pad(xp, x, padding, src_shape, fill):
    """``x`` inside a ``src_shape`` frame of ``fill`` at offset (top, left); ``x`` itself if none."""
    top, _, left, _ = padding4(padding)
    H, W = x.shape[2:]
    bottom, right = src_shape[2] - top - H, src_shape[3] - left - W
    if not (top or bottom or left or right):
        return x
    return xp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=fill)


def _crop(gx, padding, x_shape):
    top, _, left, _ = padding4(padding)
    H, W = x_shape[2:]
    if gx.shape[2:] == (H, W):
        return gx
    return gx[:, :, top:top + H, left:left + W]


def _overlap_free(kernel, stride, dilation):
    """The windows along an axis are disjoint (each tap of each window writes its own place)."""
    return stride >= (kernel - 1) * dilation + 1


def _tiled(kernel, stride, dilation):
    """The windows along an axis are disjoint and leave no gap: every position is written once."""
    return dilation == 1 and stride == kernel


# ------------------------------------------------------------------------ max-pooling


def max_pool2d(x, kernel, stride, padding, out_hw, winners=True, dilation=(1, 1)):
    """(N, C, H, W) -> ((N, C, Ho, Wo) window maxima, their ``Winners`` or None if not
    ``winners``). The output keeps a channel-major input's layout (the next op's)."""
    (kh, kw), (Ho, Wo) = kernel, out_hw
    xp = array_module(x)
    src_shape, rows_shape, col_taps, row_taps = _plan(x.shape, kernel, stride, padding, out_hw, dilation)
    src = _pad(xp, x, padding, src_shape, -np.inf)
    channel_major = src.strides[1] > src.strides[0]  # e.g. a convolution's output
    out = _empty(xp, rows_shape[:2] + (Ho, Wo), x.dtype, channel_major)
    index_dtype = np.min_scalar_type(max(kh, kw) - 1)
    col_win = _empty(xp, rows_shape, index_dtype, channel_major) if winners and kw > 1 else None
    row_win = _empty(xp, out.shape, index_dtype, channel_major) if winners and kh > 1 else None

    def pool(lo, hi):
        for block in _blocks(lo, hi, src.shape[0], src.shape[2] * src.shape[3]):
            taps = [src[t][block] for t in col_taps]
            rows = _empty(xp, taps[0].shape, x.dtype, channel_major)  # one block's, in cache
            _running_max(xp, taps, rows, None if col_win is None else col_win[block])
            _running_max(xp, [rows[t] for t in row_taps], out[block],
                         None if row_win is None else row_win[block])

    parallel_ranges(x.shape[1], pool, src.size)
    return out, (Winners(col_win, row_win, channel_major) if winners else None)


def max_pool2d_backward(g, winners, x_shape, kernel, stride, padding, out_hw, dilation=(1, 1)):
    """(N, C, Ho, Wo) -> (N, C, H, W): each output's ``g`` added to its window's winner, zero
    elsewhere (max_pool2d's VJP)."""
    col_win, row_win, channel_major = winners
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    src_shape, rows_shape, col_taps, row_taps = _plan(x_shape, kernel, stride, padding, out_hw, dilation)
    xp = array_module(g)
    # The gradient of the row maxima, then of the input. Where windows do not overlap a
    # pass writes each tap's share; where they overlap it accumulates. Buffers start at
    # zero unless the windows cover every element.
    covered = _tiled(kw, sw, dw) and rows_shape[2] == src_shape[2] and rows_shape[3] * kw == src_shape[3]
    gx = _empty(xp, src_shape, g.dtype, channel_major, zero=not covered)
    # Routing multiplies g by a 0/1 mask, one pass; an inf or NaN in g would make inf * 0 =
    # NaN at the window's other elements, where PyTorch leaves 0. One sum over g (a quarter
    # of gx for 2x2 windows) tells; then masked copies route it exactly.
    exact = not bool(xp.isfinite(g.sum()))

    def route(lo, hi):
        for block in _blocks(lo, hi, src_shape[0], src_shape[2] * src_shape[3]):
            g_block = g[block]
            g_rows = _empty(xp, g_block.shape[:2] + rows_shape[2:], g.dtype, channel_major,
                            zero=not _tiled(kh, sh, dh))
            _route(xp, g_block, None if row_win is None else row_win[block],
                   [g_rows[t] for t in row_taps], _overlap_free(kh, sh, dh), exact)
            _route(xp, g_rows, None if col_win is None else col_win[block],
                   [gx[t][block] for t in col_taps], _overlap_free(kw, sw, dw), exact)

    parallel_ranges(src_shape[1], route, int(np.prod(src_shape)))
    return _crop(gx, padding, x_shape)


def max_pool2d_gather(h, winners, kernel, stride, padding, out_hw, dilation=(1, 1)):
    """(N, C, H, W) -> (N, C, Ho, Wo): for each window, ``h`` at its winner (padding reads as
    zero). The transpose of ``max_pool2d_backward``; on max-pool's own input it gives the
    window maxima. Pure copies, so exact."""
    xp = array_module(h)
    src_shape, rows_shape, col_taps, row_taps = _plan(h.shape, kernel, stride, padding, out_hw, dilation)
    src = _pad(xp, h, padding, src_shape, 0)
    col_win, row_win, channel_major = winners
    out = _empty(xp, rows_shape[:2] + tuple(out_hw), h.dtype, channel_major)

    def gather(lo, hi):
        for block in _blocks(lo, hi, src.shape[0], src.shape[2] * src.shape[3]):
            taps = [src[t][block] for t in col_taps]
            rows = _empty(xp, taps[0].shape, h.dtype, channel_major)
            _select(xp, taps, None if col_win is None else col_win[block], rows)
            _select(xp, [rows[t] for t in row_taps], None if row_win is None else row_win[block], out[block])

    parallel_ranges(h.shape[1], gather, src.size)
    return out


def max_pool2d_indices(winners, x_shape, kernel, stride, padding, out_hw, dilation=(1, 1)):
    """(N, C, Ho, Wo) int64: each window's winner as a flat index into its (H, W) plane
    (PyTorch's ``return_indices``). Where padding won (a window whose real elements are all
    -inf, or that holds none), the window's first tap inside the input, as PyTorch gives."""
    col_win, row_win, _ = winners
    xp = array_module(col_win, row_win)
    (sh, sw), (dh, dw), (Ho, Wo) = stride, dilation, out_hw
    top, _, left, _ = padding4(padding)
    H, W = x_shape[2:]
    shape = tuple(x_shape[:2]) + (Ho, Wo)
    ho, wo = (xp.arange(Ho) * sh).reshape(Ho, 1), xp.arange(Wo) * sw  # each window's padded start
    row = xp.broadcast_to(ho, shape) if row_win is None else ho + row_win.astype(np.int64) * dh
    col = wo if col_win is None else wo + xp.take_along_axis(col_win, row, axis=2).astype(np.int64) * dw
    row, col = row - top, col - left
    index = row * W + col
    outside = (row < 0) | (row >= H) | (col < 0) | (col >= W)
    if outside.any():
        first = _first_inside(xp, ho - top, dh) * W + _first_inside(xp, wo - left, dw)
        index = xp.where(outside, first, index)
    return xp.ascontiguousarray(xp.broadcast_to(index, shape), dtype=np.int64)


def _first_inside(xp, start, dilation):
    """The first tap at a position >= 0 of windows starting at ``start`` (PyTorch's first index)."""
    behind = xp.maximum(-start, 0)
    return start - (-behind // dilation) * dilation


# --------------------------------------------------------------------- average pooling


def avg_pool2d_divisors(in_hw, kernel, stride, padding, out_hw, count_include_pad=True, divisor_override=None):
    """(Ho, Wo) float64: what each window's sum is divided by, by PyTorch's rule: with
    ``divisor_override``, that; with ``count_include_pad``, the window's size clipped to the
    padded input (a ceil-mode window past the bottom/right padding counts only up to it);
    otherwise the number of real elements it holds. Separable: (row count) x (column count)."""
    if divisor_override is not None:
        return np.full(out_hw, float(divisor_override))
    top, bottom, left, right = padding4(padding)
    counts = []
    for size, k, s, before, after, out in ((in_hw[0], kernel[0], stride[0], top, bottom, out_hw[0]),
                                           (in_hw[1], kernel[1], stride[1], left, right, out_hw[1])):
        start = np.arange(out) * s - before
        end = np.minimum(start + k, size + after)
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, size)
        counts.append((end - start).astype(np.float64))
    return np.multiply.outer(counts[0], counts[1])


def avg_pool2d(x, kernel, stride, padding, out_hw, scale):
    """(N, C, H, W) -> (N, C, Ho, Wo): each window's sum times ``scale`` (a number, or (Ho, Wo)
    of one over each window's divisor). Padding adds nothing, so it is never materialised:
    each tap adds only the outputs whose tap lands inside the input (strided adds). Keeps a
    channel-major layout."""
    (kh, kw), (sh, sw), (Ho, Wo) = kernel, stride, out_hw
    top, _, left, _ = padding4(padding)
    N, C, H, W = x.shape
    xp = array_module(x)
    col_taps, row_taps = _tap_ranges(W, kw, sw, left, Wo), _tap_ranges(H, kh, sh, top, Ho)
    channel_major = x.strides[1] > x.strides[0]
    out = _empty(xp, (N, C, Ho, Wo), x.dtype, channel_major)

    def pool(lo, hi):
        for block in _blocks(lo, hi, N, H * W):
            xb, o = x[block], out[block]
            rows = _empty(xp, xb.shape[:3] + (Wo,), x.dtype, channel_major)
            _sum_taps(xp, rows, xb, col_taps, Wo, lambda s: (Ellipsis, s))
            _sum_taps(xp, o, rows, row_taps, Ho, lambda s: (Ellipsis, s, slice(None)))
            o *= scale

    parallel_ranges(C, pool, x.size)
    return out


def avg_pool2d_backward(g, x_shape, kernel, stride, padding, out_hw, scale):
    """(N, C, Ho, Wo) -> (N, C, H, W): the transpose of ``avg_pool2d``: each output's ``g``
    times its ``scale``, added to every tap of its window that lands inside the input."""
    (kh, kw), (sh, sw), (Ho, Wo) = kernel, stride, out_hw
    top, _, left, _ = padding4(padding)
    N, C, H, W = x_shape
    xp = array_module(g)
    col_taps, row_taps = _tap_ranges(W, kw, sw, left, Wo), _tap_ranges(H, kh, sh, top, Ho)
    channel_major = g.strides[1] > g.strides[0]
    # Windows that do not overlap let each tap write its share instead of adding it; windows
    # that also leave no gap write every position, so the buffer needs no zero fill.
    cols_cover, rows_cover = sw == kw and Wo * kw - left >= W, sh == kh and Ho * kh - top >= H
    gx = _empty(xp, tuple(x_shape), g.dtype, channel_major, zero=not cols_cover)

    def spread(lo, hi):
        for block in _blocks(lo, hi, N, H * W):
            gb = g[block]
            gs = xp.multiply(gb, scale, out=_empty(xp, gb.shape, g.dtype, channel_major))
            g_rows = _empty(xp, gb.shape[:2] + (H, Wo), g.dtype, channel_major, zero=not rows_cover)
            _spread_taps(g_rows, gs, row_taps, sh >= kh, lambda s: (Ellipsis, s, slice(None)))
            _spread_taps(gx[block], g_rows, col_taps, sw >= kw, lambda s: (Ellipsis, s))

    parallel_ranges(C, spread, int(np.prod(x_shape)))
    return gx


def _tap_ranges(size, kernel, stride, before, out):
    """For each tap k of the windows along one axis: the outputs (a slice) whose tap k lands
    inside the input, and the input positions (a strided slice) they read. Taps that only
    ever land in padding are left out."""
    ranges = []
    for k in range(kernel):
        offset = k - before  # the input position of tap k in window 0
        lo = -(offset // stride) if offset < 0 else 0  # ceil(-offset / stride)
        hi = min(out, (size - 1 - offset) // stride + 1)
        if hi > lo:
            start = lo * stride + offset
            ranges.append((slice(lo, hi), slice(start, start + (hi - lo - 1) * stride + 1, stride)))
    return ranges


def _sum_taps(xp, out, src, taps, n_out, index):
    """out = the sum over ``taps`` (output slice, source slice) of src[source] placed at
    out[output], along the axis ``index`` builds. A tap that reaches every output is written
    first, so ``out`` needs no zero fill when one does."""
    full = next((k for k, (t, _) in enumerate(taps) if t.start == 0 and t.stop == n_out), None)
    if full is None:
        out[...] = 0
    else:
        t, f = taps[full]
        out[index(t)] = src[index(f)]
        taps = taps[:full] + taps[full + 1:]
    for t, f in taps:
        view = out[index(t)]
        xp.add(view, src[index(f)], out=view)


def _spread_taps(out, g, taps, apart, index):
    """The transpose of ``_sum_taps``: out[source] (+)= g[output] for each tap; ``apart``
    means the taps' targets do not overlap, so each is written instead of added."""
    for t, f in taps:
        if apart:
            out[index(f)] = g[index(t)]
        else:
            out[index(f)] += g[index(t)]


# -------------------------------------------------------------------------- shared parts


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


def _route(xp, g, winner, targets, tiles, exact=False):
    """Send ``g`` to the tap that won: ``targets[k] (+)= g * (winner == k)``; ``tiles``
    means the targets do not overlap, so each can be written instead of accumulated.
    ``exact``: copy g where the tap won and leave 0 elsewhere (for a g with infinities or
    NaNs, which the multiply by 0 would spread to the taps that lost)."""
    if winner is None:  # a single tap takes everything
        if tiles:
            targets[0][...] = g
        else:
            targets[0] += g
        return
    if exact:
        for k, target in enumerate(targets):
            won = winner == k
            if tiles:
                target[...] = 0
                xp.copyto(target, g, where=won)
            else:
                xp.add(target, g, out=target, where=won)
        return
    mask = xp.empty_like(g)
    for k, target in enumerate(targets):
        xp.equal(winner, k, out=mask)
        if tiles:
            xp.multiply(g, mask, out=target)
        else:
            mask *= g
            target += mask


def _select(xp, taps, winner, out):
    """``out = taps[winner]`` elementwise (``taps[0]`` when there is no ``winner``): the
    transpose of ``_route``."""
    out[...] = taps[0]
    for k, view in enumerate(taps[1:], start=1):
        xp.copyto(out, view, where=winner == k)


# ----------------------------------------------------------------- references: plain loops


def naive_output_size(size, kernel, stride, before, after, dilation=1, ceil_mode=False):
    """PyTorch's pooling output length along one axis, written out: windows start every
    ``stride`` from the first padded position; in floor mode the last one must end inside the
    padding, in ceil mode it may run past it but must start inside the input or the left
    padding."""
    span, length = (kernel - 1) * dilation + 1, before + size + after
    n = 0
    while True:
        start = n * stride
        if ceil_mode:  # ceil((length - span) / stride) + 1 windows, less any that starts in the right padding
            counted = start + span - stride < length and start < before + size
        else:
            counted = start + span <= length
        if not counted:
            return n
        n += 1


def naive_max_pool2d(x, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    """Max-pooling by loops: (window maxima, ``where``). Padding (and, in ceil mode, anything
    past it) is -inf; within a window taps are visited in row-major order and a later tap wins
    only when strictly greater, so the first maximum wins ties. ``where[n, c, ho, wo]`` is the
    winner's (row, column) in ``x`` (outside the image when a padding tap won: only a window
    of -inf values). ``padding`` is (h, w) or (top, bottom, left, right)."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    top, bottom, left, right = padding4(padding)
    Ho = naive_output_size(H, kh, sh, top, bottom, dh, ceil_mode)
    Wo = naive_output_size(W, kw, sw, left, right, dw, ceil_mode)
    out = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    where = np.empty((N, C, Ho, Wo, 2), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for ho in range(Ho):
                for wo in range(Wo):
                    best, at = -np.inf, None
                    for i in range(kh):
                        for j in range(kw):
                            r, s = ho * sh + i * dh - top, wo * sw + j * dw - left
                            v = x[n, c, r, s] if (0 <= r < H and 0 <= s < W) else -np.inf
                            if at is None or v > best:
                                best, at = v, (r, s)
                    out[n, c, ho, wo] = best
                    where[n, c, ho, wo] = at
    return out, where


def naive_max_pool2d_indices(where, x_shape, kernel, stride, padding, dilation=(1, 1)):
    """PyTorch's flat indices from ``where``: row * W + column of the winner; for a window
    that padding won, its first tap inside the input (scanning rows, then columns)."""
    H, W = x_shape[2:]
    (sh, sw), (dh, dw) = stride, dilation
    top, _, left, _ = padding4(padding)
    out = np.empty(where.shape[:4], dtype=np.int64)
    for n, c, ho, wo in np.ndindex(*out.shape):
        r, s = where[n, c, ho, wo]
        if not (0 <= r < H and 0 <= s < W):
            r, s = ho * sh - top, wo * sw - left
            while r < 0:
                r += dh
            while s < 0:
                s += dw
        out[n, c, ho, wo] = r * W + s
    return out


def naive_max_pool2d_backward(g, where, x_shape):
    """Each output's ``g`` added to the pixel that won its window (``where``, from
    ``naive_max_pool2d``); zeros elsewhere."""
    H, W = x_shape[2:]
    gx = np.zeros(x_shape, dtype=g.dtype)
    for (n, c, ho, wo), value in np.ndenumerate(g):
        r, s = where[n, c, ho, wo]
        if 0 <= r < H and 0 <= s < W:
            gx[n, c, r, s] += value
    return gx


def naive_max_pool2d_gather(h, where):
    """For each window, ``h`` at the pixel that won it (``where``); zero for a padding winner."""
    H, W = h.shape[2:]
    out = np.zeros(where.shape[:4], dtype=h.dtype)
    for n, c, ho, wo in np.ndindex(*out.shape):
        r, s = where[n, c, ho, wo]
        if 0 <= r < H and 0 <= s < W:
            out[n, c, ho, wo] = h[n, c, r, s]
    return out


def naive_avg_pool2d(x, kernel, stride, padding, ceil_mode=False, count_include_pad=True, divisor_override=None):
    """Average pooling by loops, PyTorch's divisor rule spelled out per window: the sum of the
    real elements (padding adds zero) over ``divisor_override`` if given, else over the
    window's size cut at the end of the padding (``count_include_pad``) or over the number of
    real elements it holds."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw) = kernel, stride
    top, bottom, left, right = padding4(padding)
    Ho = naive_output_size(H, kh, sh, top, bottom, 1, ceil_mode)
    Wo = naive_output_size(W, kw, sw, left, right, 1, ceil_mode)
    out = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    for n, c, ho, wo in np.ndindex(N, C, Ho, Wo):
        total, real, padded = 0.0, 0, 0
        for i in range(kh):
            for j in range(kw):
                r, s = ho * sh + i - top, wo * sw + j - left
                if 0 <= r < H and 0 <= s < W:
                    total += x[n, c, r, s]
                    real += 1
                if -top <= r < H + bottom and -left <= s < W + right:
                    padded += 1
        divisor = divisor_override if divisor_override is not None else padded if count_include_pad else real
        out[n, c, ho, wo] = total / divisor
    return out


def naive_avg_pool2d_backward(g, x_shape, kernel, stride, padding, ceil_mode=False, count_include_pad=True,
                              divisor_override=None):
    """The transpose of ``naive_avg_pool2d`` by loops: each output's gradient over its
    divisor, added to every real element of its window."""
    N, C, H, W = x_shape
    (kh, kw), (sh, sw) = kernel, stride
    top, bottom, left, right = padding4(padding)
    gx = np.zeros(x_shape, dtype=g.dtype)
    for n, c, ho, wo in np.ndindex(*g.shape):
        taps, real, padded = [], 0, 0
        for i in range(kh):
            for j in range(kw):
                r, s = ho * sh + i - top, wo * sw + j - left
                if 0 <= r < H and 0 <= s < W:
                    taps.append((r, s))
                    real += 1
                if -top <= r < H + bottom and -left <= s < W + right:
                    padded += 1
        divisor = divisor_override if divisor_override is not None else padded if count_include_pad else real
        for r, s in taps:
            gx[n, c, r, s] += g[n, c, ho, wo] / divisor
    return gx
