"""im2col and col2im on arrays: the copies that turn a convolution into one GEMM, and back.

Layout: ``im2col`` turns (N, C, H, W) into columns of shape (C*kH*kW, N*Ho*Wo): row
(c, i, j) holds input channel c shifted by kernel offset (i, j), for every output pixel
(n, ho, wo). Then a convolution is one GEMM, ``W.reshape(C_out, -1) @ cols``, in the
orientation that runs fastest for the skinny shapes of small CNNs, and each copy moves
whole image rows. Padding is folded in: out-of-range taps are left as zeros, so no padded
copy of the input is ever made. All loops run over the kH*kW kernel offsets only; each
iteration is one vectorised copy of every image and channel at once, on several threads
(channel blocks) for large inputs. ``col2im`` is the transpose: every column entry is added
back to the pixel it came from.

Geometry arguments are already validated and resolved (``ops.conv.conv_geometry``):
``kernel``, ``stride`` and ``dilation`` as (h, w) pairs, ``out_hw`` the output grid (Ho, Wo),
``padding`` as a symmetric (h, w) pair or as (top, bottom, left, right). Only the leading
padding (top, left) moves the taps; the trailing padding only lengthens the output grid,
which ``out_hw`` already says. Dilation spaces the kernel taps ``dilation`` pixels apart
(tap (i, j) reads pixel (ho*sh + i*dh - top, wo*sw + j*dw - left)): it changes only which
slice each tap copies, so dilated and asymmetric windows cost what plain ones do, with no
padded or dilated copy of anything. ``naive_im2col`` and ``naive_col2im`` are the same maps
as plain pixel loops: the reference the tests hold the fast code to.
"""
from __future__ import annotations

import numpy as np

from ..threads import parallel_ranges
from ..xp import array_module
from .gemm import empty_matrix, product

# Columns with fewer rows than this (a first layer's 27 or 28) are left unpadded: their GEMM
# gained ~4% from padding, and their weight gradient is a product small enough to go to
# ``dot`` (kernels/gemm.py), which copies a padded operand first (+30% there).
_MANY_ROWS = 64


def _taps(offset, pad, stride, size, out_size):
    """For kernel offset ``offset``: the output range [lo, hi) whose input tap is inside the
    image, and the matching input slice."""
    lo = max(0, -((offset - pad) // stride))
    hi = min(out_size, (size - 1 + pad - offset) // stride + 1)
    if lo >= hi:
        return lo, lo, None
    start = lo * stride + offset - pad
    return lo, hi, slice(start, start + (hi - lo - 1) * stride + 1, stride)


def leading(padding):
    """(top, left) of a padding given as a symmetric (h, w) pair or as (top, bottom, left, right)."""
    return (padding[0], padding[2]) if len(padding) == 4 else tuple(padding)


def padding4(padding):
    """(top, bottom, left, right) of a padding given as a symmetric (h, w) pair or as a 4-tuple."""
    return tuple(padding) if len(padding) == 4 else (padding[0], padding[0], padding[1], padding[1])


def tap_plan(kernel, stride, padding, in_hw, out_hw, dilation=(1, 1)):
    """For each kernel offset (i, j): (i, j, output rows, output cols, input rows, input cols)
    of the taps that land inside the image; taps entirely in the padding are left out."""
    (kh, kw), (sh, sw), (ph, pw), (H, W), (Ho, Wo) = kernel, stride, leading(padding), in_hw, out_hw
    dh, dw = dilation
    plan = []
    for i in range(kh):
        r0, r1, rows = _taps(i * dh, ph, sh, H, Ho)
        for j in range(kw):
            c0, c1, cs = _taps(j * dw, pw, sw, W, Wo)
            if rows is not None and cs is not None:
                plan.append((i, j, slice(r0, r1), slice(c0, c1), rows, cs))
    return plan


# --------------------------------------------------------------------------------- im2col


def im2col(x, kernel, stride, padding, out_hw, ones_row=False, dilation=(1, 1)):
    """(N, C, H, W) -> (C*kH*kW [+ 1], N*Ho*Wo) columns; with ``ones_row`` a last row of ones.
    A stride-1 window whose output grid is the input grid (a "same" convolution) takes a
    faster path (``_im2col_same``) for channel-major input and for short contiguous NCHW
    image planes; the values are the same."""
    N, C, H, W = x.shape
    (kh, kw), (Ho, Wo) = kernel, out_hw
    xp = array_module(x)
    rows = C * kh * kw
    if rows >= _MANY_ROWS:  # the GEMM's operand, its rows laid out for BLAS (see empty_matrix)
        out = empty_matrix(xp, rows + ones_row, N * Ho * Wo, x.dtype)
    else:
        out = xp.empty((rows + ones_row, N * Ho * Wo), dtype=x.dtype)
    if ones_row:
        out[rows] = 1
    src = _planes(x) if tuple(stride) == (1, 1) and tuple(out_hw) == (H, W) else None
    if src is not None:
        _im2col_same(x, out[:rows], kernel, padding, dilation, src)
    else:
        _im2col_rows(x, out[:rows], kernel, stride, padding, out_hw, dilation)
    return out


def _im2col_rows(x, out, kernel, stride, padding, out_hw, dilation):
    """im2col for any window into ``out`` (C*kH*kW, N*Ho*Wo): each tap copies every image
    and channel at once, one image row at a time."""
    N, C, H, W = x.shape
    (kh, kw), (Ho, Wo) = kernel, out_hw
    cols = out.reshape(C, kh, kw, N, Ho, Wo)
    xt = x.transpose(1, 0, 2, 3)
    plan = tap_plan(kernel, stride, padding, (H, W), out_hw, dilation)
    inside = {(i, j) for i, j, *_ in plan}
    outside = [(i, j) for i in range(kh) for j in range(kw) if (i, j) not in inside]

    def fill(c_lo, c_hi):
        block = cols[c_lo:c_hi]
        for i, j in outside:  # taps that only ever see padding
            block[:, i, j] = 0
        for i, j, o_r, o_c, rows, cs in plan:
            tap = block[:, i, j]
            tap[:, :, o_r, o_c] = xt[c_lo:c_hi, :, rows, cs]
            if (o_r.start, o_r.stop, o_c.start, o_c.stop) != (0, Ho, 0, Wo):  # zero where it reads padding
                tap[:, :, :o_r.start] = 0
                tap[:, :, o_r.stop:] = 0
                tap[:, :, o_r, :o_c.start] = 0
                tap[:, :, o_r, o_c.stop:] = 0

    parallel_ranges(C, fill, cols.size)


# NCHW image planes up to this many pixels take the shift path one plane at a time; larger
# ones ran at 0.96-1.20x the row path's time (benchmarks/im2col_paths.py), smaller ones 0.5-0.7x.
_SHORT_PLANE = 64


def _planes(x, max_plane=_SHORT_PLANE):
    """x (N, C, H, W) as a (C, G, L) view of contiguous runs for the shift path: (C, 1,
    N*H*W) when each channel is one block (a convolution's channel-major output), (C, N, H*W)
    when each image plane is and has at most ``max_plane`` pixels (None: any); None
    otherwise (then the row path)."""
    N, C, H, W = x.shape
    xt, item = x.transpose(1, 0, 2, 3), x.itemsize
    if W > 1 and xt.strides[3] != item or H > 1 and xt.strides[2] != W * item:
        return None
    if N == 1 or xt.strides[1] == H * W * item:
        return xt.reshape(C, 1, N * H * W)
    return xt.reshape(C, N, H * W) if max_plane is None or H * W <= max_plane else None


def _im2col_same(x, out, kernel, padding, dilation, src=None):
    """im2col of a stride-1 window whose output grid is the input grid, into ``out``: every
    kernel offset (di, dj) is then one constant shift of a channel's pixels (flattened over
    all images, or over each image), so each tap is one long contiguous copy instead of a
    copy per image row. The shift also carries pixels across each row's (and image's) edge;
    where a tap reads padding (a band of ``|di|`` rows and ``|dj|`` columns on one side) the
    columns are zeroed after the copy, which also covers the few entries the shift leaves
    unwritten at the ends. The transpose of ``col2im_same``. ``src``: ``_planes(x)``, or
    another of its views (a benchmark times each)."""
    N, C, H, W = x.shape
    (kh, kw), (ph, pw), (dh, dw) = kernel, leading(padding), dilation
    src = _planes(x) if src is None else src
    G, L = src.shape[1:]
    runs = out.reshape(C, kh * kw, G, L)
    pixels = out.reshape(C, kh * kw, N, H, W)
    inside = {i * kw + j for i, j, *_ in tap_plan(kernel, (1, 1), padding, (H, W), (H, W), dilation)}
    offsets = [(i * dh - ph, j * dw - pw, i * kw + j) for i in range(kh) for j in range(kw)]

    def fill(c_lo, c_hi):
        s = src[c_lo:c_hi]
        for di, dj, k in offsets:
            if k not in inside:  # a tap that only ever sees padding
                pixels[c_lo:c_hi, k] = 0
                continue
            shift, dst = di * W + dj, runs[c_lo:c_hi, k]
            if shift >= 0:
                dst[..., :L - shift] = s[..., shift:]
            else:
                dst[..., -shift:] = s[..., :L + shift]
            band = pixels[c_lo:c_hi, k]
            if di > 0:
                band[:, :, H - di:] = 0
            elif di < 0:
                band[:, :, :-di] = 0
            if dj > 0:
                band[..., W - dj:] = 0
            elif dj < 0:
                band[..., :-dj] = 0

    parallel_ranges(C, fill, out.size)


# --------------------------------------------------------------------------------- col2im


def col2im(cols, x_shape, kernel, stride, padding, out_hw, dilation=(1, 1)):
    """(C*kH*kW, N*Ho*Wo) columns -> (N, C, H, W), overlapping taps summed. A stride-1 window
    whose output grid is the input grid (a "same" convolution) takes a faster path with the
    same sums in the same order, so the same bits."""
    if tuple(stride) == (1, 1) and tuple(out_hw) == tuple(x_shape[2:]):
        return col2im_same(cols, x_shape, kernel, padding, dilation)
    return col2im_rows(cols, x_shape, kernel, stride, padding, out_hw, dilation)


def col2im_rows(cols, x_shape, kernel, stride, padding, out_hw, dilation=(1, 1)):
    """col2im for any window: each tap is added to every image and channel at once, one
    image row at a time."""
    N, C, H, W = x_shape
    (kh, kw), (Ho, Wo) = kernel, out_hw
    xp = array_module(cols)
    c6 = cols.reshape(C, kh, kw, N, Ho, Wo)
    out = xp.empty((C, N, H, W), dtype=cols.dtype)
    plan = tap_plan(kernel, stride, padding, (H, W), out_hw, dilation)
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


def col2im_same(cols, x_shape, kernel, padding, dilation=(1, 1)):
    """col2im for a stride-1 window whose output grid is the input grid (a "same"
    convolution, e.g. 3x3 with padding 1): every kernel offset is then one constant shift
    of a channel's pixels flattened over all images, so each tap is added with one long
    contiguous add instead of an add per image row (2.5-3.5x faster here). The shift also
    carries each row's (and each image's) edge over to the next one; nothing of this tap
    belongs in the pixels it lands on there (the band of ``|di|`` rows / ``|dj|`` columns on
    the far side), so they are saved before the add and put back after it. Same sums in
    the same order as the row-wise path, so the same bits."""
    N, C, H, W = x_shape
    (kh, kw), (ph, pw), (dh, dw) = kernel, leading(padding), dilation
    xp = array_module(cols)
    n = N * H * W
    taps = cols.reshape(C, kh * kw, n)
    out = xp.empty((C, N, H, W), dtype=cols.dtype)
    flat = out.reshape(C, n)
    plan = tap_plan(kernel, (1, 1), padding, (H, W), (H, W), dilation)
    # a centre tap covers every pixel once: assigned first, so no zero fill is needed (an
    # even kernel, or asymmetric padding, may have none: then the buffer starts at zero)
    offsets = sorted(((i * dh - ph, j * dw - pw, i * kw + j) for i, j, *_ in plan), key=lambda o: o[:2] != (0, 0))
    has_centre = bool(offsets) and offsets[0][:2] == (0, 0)

    def accumulate(c_lo, c_hi):
        o, o4, t = flat[c_lo:c_hi], out[c_lo:c_hi], taps[c_lo:c_hi]
        if has_centre:
            o[...] = t[:, offsets[0][2]]
        else:
            o[...] = 0
        for di, dj, k in offsets[1 if has_centre else 0:]:
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


# ------------------------------------------------ convolutions that do not keep their columns

# Images per block: as many as keep one block's columns under this many bytes (at least one
# image). The columns of a block are made, used by one GEMM and dropped, so nothing of their
# size outlives the call. Blocks only bound that transient for very large layers: measured,
# smaller blocks cost time (16 MiB blocks: forward 1.5x, weight gradient 1.5x one block's, at
# 256x64x15x15, 3x3 64->64; 256 KiB blocks 18x at SeedCNN's conv2: im2col's per-call work).
_BLOCK_BYTES = 512 << 20


def image_blocks(n_images, cols_bytes_per_image, block_bytes=None):
    """[lo, hi) ranges of images whose columns take at most ``block_bytes`` (one image at least)."""
    per = max(1, int((_BLOCK_BYTES if block_bytes is None else block_bytes) // max(1, cols_bytes_per_image)))
    return [(lo, min(n_images, lo + per)) for lo in range(0, n_images, per)]


def conv2d(x, w, bias, kernel, stride, padding, out_hw, dilation=(1, 1), block_bytes=None):
    """(N, C, H, W) * (C_out, C, kH, kW) [+ (C_out,)] -> (N, C_out, Ho, Wo), stored channel-major
    (a (C_out, N, Ho, Wo) array, returned as its permuted view, as the composite's output).
    One GEMM ``[W | b] @ [cols; 1]`` per block of images, each block's columns made by
    ``im2col`` and dropped after its GEMM: nothing of the size of the columns outlives the call."""
    N = x.shape[0]
    C_out = w.shape[0]
    Ho, Wo = out_hw
    L = Ho * Wo
    xp = array_module(x, w)
    wm = w.reshape(C_out, -1)
    if bias is not None:
        wm = xp.concatenate([wm, bias.reshape(C_out, 1)], axis=1)
    out = empty_matrix(xp, C_out, N * L, x.dtype)
    for lo, hi in image_blocks(N, wm.shape[1] * L * x.itemsize, block_bytes):
        cols = im2col(x[lo:hi], kernel, stride, padding, out_hw, ones_row=bias is not None, dilation=dilation)
        if lo == 0 and hi == N:
            xp.matmul(wm, cols, out=out)
        else:
            out[:, lo * L:hi * L] = product(wm, cols)
    return out.reshape(C_out, N, Ho, Wo).transpose(1, 0, 2, 3)


def conv2d_weight(x, g, kernel, stride, padding, out_hw, dilation=(1, 1), block_bytes=None):
    """The weight gradient of a convolution, (C_out, C, kH, kW), from its input x (N, C, H, W)
    and output gradient g (N, C_out, Ho, Wo): ``sum over blocks of g_block @ cols_block.T``,
    each block's columns made again by ``im2col`` (the forward kept only x) and dropped."""
    N, C = x.shape[:2]
    C_out = g.shape[1]
    (kh, kw), (Ho, Wo) = kernel, out_hw
    L = Ho * Wo
    xp = array_module(x, g)  # noqa: F841 (the array module of the inputs: ascontiguousarray below)
    gm = g.transpose(1, 0, 2, 3).reshape(C_out, N * L)  # free for a channel-major gradient
    total = None
    for lo, hi in image_blocks(N, C * kh * kw * L * x.itemsize, block_bytes):
        cols = im2col(x[lo:hi], kernel, stride, padding, out_hw, dilation=dilation)
        part = product(gm[:, lo * L:hi * L], cols.T)
        if total is None:
            total = part  # a fresh array (perhaps a transposed view of one): ours to add into
        else:
            total += part
    return xp.ascontiguousarray(total).reshape(C_out, C, kh, kw)


# ----------------------------------------------------------------- references: plain loops


def naive_out_hw(x_shape, kernel, stride, padding, dilation=(1, 1)):
    """The output grid of a window: (H + top + bottom - dh*(kh-1) - 1) // sh + 1, and so for W."""
    (kh, kw), (sh, sw), (pt, pb, pl, pr), (dh, dw) = kernel, stride, padding4(padding), dilation
    H, W = x_shape[2], x_shape[3]
    return (H + pt + pb - dh * (kh - 1) - 1) // sh + 1, (W + pl + pr - dw * (kw - 1) - 1) // sw + 1


def naive_taps(x_shape, kernel, stride, padding, dilation=(1, 1)):
    """Every in-image tap as (cols row, cols column, n, c, r, s): column entry [row, col] of
    im2col holds pixel x[n, c, r, s]. Six plain loops, no vectorisation and no cleverness
    about padding: easy to read and hard to get wrong. ``padding`` is a symmetric (h, w)
    pair or (top, bottom, left, right)."""
    N, C, H, W = x_shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    pt, _, pl, _ = padding4(padding)
    Ho, Wo = naive_out_hw(x_shape, kernel, stride, padding, dilation)
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for n in range(N):
                    for ho in range(Ho):
                        for wo in range(Wo):
                            r, s = ho * sh + i * dh - pt, wo * sw + j * dw - pl
                            if 0 <= r < H and 0 <= s < W:
                                yield row, (n * Ho + ho) * Wo + wo, n, c, r, s


def naive_im2col(x, kernel, stride, padding, dilation=(1, 1)):
    """cols[(c, i, j), (n, ho, wo)] = x[n, c, ho*sh + i*dh - top, wo*sw + j*dw - left], or 0 outside."""
    N, C, H, W = x.shape
    (kh, kw) = kernel
    Ho, Wo = naive_out_hw(x.shape, kernel, stride, padding, dilation)
    cols = np.zeros((C * kh * kw, N * Ho * Wo), dtype=x.dtype)
    for row, col, n, c, r, s in naive_taps(x.shape, kernel, stride, padding, dilation):
        cols[row, col] = x[n, c, r, s]
    return cols


def naive_col2im(cols, x_shape, kernel, stride, padding, dilation=(1, 1)):
    """The transpose of naive_im2col: every column entry is added back to its pixel."""
    x = np.zeros(x_shape, dtype=cols.dtype)
    for row, col, n, c, r, s in naive_taps(x_shape, kernel, stride, padding, dilation):
        x[n, c, r, s] += cols[row, col]
    return x


def naive_conv2d(x, w, bias, kernel, stride, padding, dilation=(1, 1)):
    """out[n, o, ho, wo] = b[o] + sum over (c, i, j) of w[o, c, i, j] * x[n, c, ho*sh + i*dh - top, ...]:
    the taps of ``naive_taps``, each added to every output channel."""
    N = x.shape[0]
    C_out = w.shape[0]
    Ho, Wo = naive_out_hw(x.shape, kernel, stride, padding, dilation)
    wm = w.reshape(C_out, -1)
    out = np.zeros((C_out, N * Ho * Wo), dtype=x.dtype)
    for row, col, n, c, r, s in naive_taps(x.shape, kernel, stride, padding, dilation):
        out[:, col] += wm[:, row] * x[n, c, r, s]
    if bias is not None:
        out += bias.reshape(C_out, 1)
    return out.reshape(C_out, N, Ho, Wo).transpose(1, 0, 2, 3)


def naive_conv2d_weight(x, g, kernel, stride, padding, dilation=(1, 1)):
    """gw[o, c, i, j] = sum over (n, ho, wo) of g[n, o, ho, wo] * x[n, c, ho*sh + i*dh - top, ...]."""
    C_out = g.shape[1]
    kh, kw = kernel
    gm = g.transpose(1, 0, 2, 3).reshape(C_out, -1)
    gw = np.zeros((C_out, x.shape[1] * kh * kw), dtype=x.dtype)
    for row, col, n, c, r, s in naive_taps(x.shape, kernel, stride, padding, dilation):
        gw[:, row] += gm[:, col] * x[n, c, r, s]
    return gw.reshape(C_out, x.shape[1], kh, kw)
