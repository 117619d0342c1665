"""Max-pooling on arrays: the forward, which remembers each window's winner in one byte per
output and pass; the routing of a gradient to those winners (max-pool's VJP); and its
transpose, the gather of an input-shaped array at the winners (the VJP's VJP).

The max is taken in two separable passes: along each row over the kW column taps, then over
the kH rows of those row maxima. Each pass keeps, as one byte per output, which tap won (the
first of equals), so the first maximum of a row followed by the first row holding the
window's maximum is exactly the row-major first maximum, as in PyTorch. Routing and
gathering walk back through the same two passes, one multiply or one masked copy per tap,
and never need the input. Everything works on channel blocks, on several threads for large
inputs. Padding counts as -inf in the max.

Geometry arguments are already validated and resolved to pairs (``ops.conv.pool_geometry``):
``kernel``, ``stride`` and ``padding`` as (h, w) pairs, ``out_hw`` the output grid (Ho, Wo).
``naive_max_pool2d``, ``naive_max_pool2d_backward`` and ``naive_max_pool2d_gather`` are the
same maps as plain loops over windows: the reference the tests hold the fast code to.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..threads import parallel_ranges
from ..xp import array_module

_CHUNK = 1 << 18  # elements per pooling block: big enough that per-call overhead is small


class Winners(NamedTuple):
    """Which element won each window of a max-pool, as ``max_pool2d`` found it.

    ``cols``: (N, C, rows_used, Wo), for each input row a window reads, the column tap
    (0..kW-1) holding that row's maximum; None for a one-column kernel. ``rows``:
    (N, C, Ho, Wo), the row tap (0..kH-1) whose row maximum is the window's; None for a
    one-row kernel. Both of the smallest unsigned type that holds the taps (one byte for
    any kernel up to 256). ``channel_major``: the (padded) input was stored channel by
    channel, as a convolution's output is; the routed gradient is laid out the same way."""

    cols: object
    rows: object
    channel_major: bool


def _plan(x_shape, kernel, stride, padding, out_hw):
    """The two passes' views: (padded input shape, row-maxima shape, column taps, row taps).
    Column tap j reads every used input row at columns j, j+sw, ...; row tap i reads rows
    i, i+sh, ... of the row maxima."""
    N, C, H, W = x_shape
    (kh, kw), (sh, sw), (ph, pw), (Ho, Wo) = kernel, stride, padding, out_hw
    rows_used = (Ho - 1) * sh + kh  # input rows that some window reads
    col_taps = [(slice(None), slice(None), slice(0, rows_used), slice(j, j + (Wo - 1) * sw + 1, sw))
                for j in range(kw)]
    row_taps = [(slice(None), slice(None), slice(i, i + (Ho - 1) * sh + 1, sh)) for i in range(kh)]
    return (N, C, H + 2 * ph, W + 2 * pw), (N, C, rows_used, Wo), col_taps, row_taps


def max_pool2d(x, kernel, stride, padding, out_hw, winners=True):
    """(N, C, H, W) -> ((N, C, Ho, Wo) window maxima, their ``Winners`` or None if not
    ``winners``). The output keeps a channel-major input's layout (the next op's)."""
    (kh, kw), _, (ph, pw), (Ho, Wo) = kernel, stride, padding, out_hw
    xp = array_module(x)
    src = x if not (ph or pw) else xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    _, rows_shape, col_taps, row_taps = _plan(x.shape, kernel, stride, padding, out_hw)
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


def max_pool2d_backward(g, winners, x_shape, kernel, stride, padding, out_hw):
    """(N, C, Ho, Wo) -> (N, C, H, W): each output's ``g`` added to its window's winner, zero
    elsewhere (max_pool2d's VJP)."""
    col_win, row_win, channel_major = winners
    (kh, kw), (sh, sw), (ph, pw), (H, W) = kernel, stride, padding, x_shape[2:]
    src_shape, rows_shape, col_taps, row_taps = _plan(x_shape, kernel, stride, padding, out_hw)
    xp = array_module(g)
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
                   [g_rows[t] for t in row_taps], sh >= kh)
            _route(xp, g_rows, None if col_win is None else col_win[block],
                   [gx[t][block] for t in col_taps], sw >= kw)

    parallel_ranges(src_shape[1], route, int(np.prod(src_shape)))
    return gx if not (ph or pw) else gx[:, :, ph:ph + H, pw:pw + W]


def max_pool2d_gather(h, winners, kernel, stride, padding, out_hw):
    """(N, C, H, W) -> (N, C, Ho, Wo): for each window, ``h`` at its winner (padding reads as
    zero). The transpose of ``max_pool2d_backward``; on max-pool's own input it gives the
    window maxima. Pure copies, so exact."""
    (ph, pw) = padding
    xp = array_module(h)
    src = h if not (ph or pw) else xp.pad(h, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    _, rows_shape, col_taps, row_taps = _plan(h.shape, kernel, stride, padding, out_hw)
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


def _select(xp, taps, winner, out):
    """``out = taps[winner]`` elementwise (``taps[0]`` when there is no ``winner``): the
    transpose of ``_route``."""
    out[...] = taps[0]
    for k, view in enumerate(taps[1:], start=1):
        xp.copyto(out, view, where=winner == k)


# ----------------------------------------------------------------- references: plain loops


def naive_max_pool2d(x, kernel, stride, padding):
    """Max-pooling by loops: (window maxima, ``where``). Padding is -inf; within a window taps
    are visited in row-major order and a later tap wins only when strictly greater, so the
    first maximum wins ties. ``where[n, c, ho, wo]`` is the winner's (row, column) in ``x``
    (outside the image when a padding tap won: only a window of -inf values)."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    out = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    where = np.empty((N, C, Ho, Wo, 2), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for ho in range(Ho):
                for wo in range(Wo):
                    best, at = -np.inf, None
                    for i in range(kh):
                        for j in range(kw):
                            r, s = ho * sh + i - ph, wo * sw + j - pw
                            v = x[n, c, r, s] if (0 <= r < H and 0 <= s < W) else -np.inf
                            if at is None or v > best:
                                best, at = v, (r, s)
                    out[n, c, ho, wo] = best
                    where[n, c, ho, wo] = at
    return out, where


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
