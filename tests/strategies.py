"""Hypothesis strategies shared by the engine's property tests.

Shapes stay small on purpose: ``gradcheck`` runs two forwards per input element, so an
example should hold a few hundred elements at most.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

F64 = np.float64


# ----------------------------------------------------------------------------- shapes


def shapes(min_dims=0, max_dims=4, min_side=1, max_side=3):
    """Any small shape (0-d included), sides of 1 (batch 1) and odd sizes included."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcastable_pairs(max_dims=4, max_side=3):
    """Two mutually broadcastable shapes, e.g. ((2, 1, 3), (4, 3)) or ((), (2, 3))."""
    return hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=max_dims,
                                             min_side=1, max_side=max_side).map(lambda s: s.input_shapes)


def _maybe_int(pair, square_as_int):
    return pair[0] if square_as_int and pair[0] == pair[1] else pair


@st.composite
def window_geometry(draw, max_batch=2, max_channels=2, max_kernel=5, max_stride=3, max_padding=2,
                    max_extra=3, pool=False):
    """A valid NCHW shape with sliding-window hyper-parameters.

    Kernels 1..5 (non-square ones too), strides 1..3, padding 0..2, and an input that the
    padded kernel fits: H + 2*ph >= kh. With ``pool=True`` padding is at most half the kernel
    (the max_pool2d rule). Returns a dict: shape (N, C, H, W), kernel, stride, padding (each
    a pair, or an int when square) and ``out`` (Ho, Wo).
    """
    n = draw(st.integers(1, max_batch))
    c = draw(st.integers(1, max_channels))
    kh, kw = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
    sh, sw = draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride))
    ph = draw(st.integers(0, min(max_padding, kh // 2) if pool else max_padding))
    pw = draw(st.integers(0, min(max_padding, kw // 2) if pool else max_padding))
    h = draw(st.integers(max(1, kh - 2 * ph), max(1, kh - 2 * ph) + max_extra))
    w = draw(st.integers(max(1, kw - 2 * pw), max(1, kw - 2 * pw) + max_extra))
    as_int = draw(st.booleans())
    return {
        "shape": (n, c, h, w),
        "kernel": _maybe_int((kh, kw), as_int),
        "stride": _maybe_int((sh, sw), as_int),
        "padding": _maybe_int((ph, pw), as_int),
        "kernel_hw": (kh, kw), "stride_hw": (sh, sw), "padding_hw": (ph, pw),
        "out": ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1),
    }


def geometry_example(shape, kernel, stride, padding):
    """A fixed geometry in ``window_geometry``'s format (for ``@example``). ``stride=None``
    means the kernel (max_pool2d's default) and is kept as None."""
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    (kh, kw), (ph, pw) = pair(kernel), pair(padding)
    sh, sw = (kh, kw) if stride is None else pair(stride)
    h, w = shape[2], shape[3]
    return {"shape": tuple(shape), "kernel": kernel, "stride": stride, "padding": padding,
            "kernel_hw": (kh, kw), "stride_hw": (sh, sw), "padding_hw": (ph, pw),
            "out": ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)}


def _pool_out(size, k, s, before, after, d, ceil_mode):
    span = (k - 1) * d + 1
    out = (size + before + after - span + (s - 1 if ceil_mode else 0)) // s + 1
    return out - 1 if ceil_mode and (out - 1) * s >= size + before else out


@st.composite
def pool_geometry(draw, kind="max", max_batch=2, max_channels=2, max_kernel=4, max_stride=3, max_dilation=2,
                  max_extra=3):
    """A valid pooling window over a small NCHW input, as PyTorch's pools take it: kernels
    1..4 (non-square), strides 1..3 or None (the kernel), dilation 1..2 (``kind="max"``
    only), padding per side up to half the kernel (PyTorch's rule) given as an int, a pair or a
    (top, bottom, left, right) tuple, ceil_mode on or off; with ``kind="avg"`` also
    count_include_pad and divisor_override. Returns a dict: the arguments as passed
    (``kernel``, ``stride``, ``padding``, ``dilation``, ``ceil_mode``, ...), ``shape``, the
    resolved ``kernel_hw``, ``stride_hw``, ``padding4``, ``dilation_hw`` and ``out`` (Ho, Wo)."""
    n, c = draw(st.integers(1, max_batch)), draw(st.integers(1, max_channels))
    kh, kw = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
    stride = draw(st.none() | st.tuples(st.integers(1, max_stride), st.integers(1, max_stride)))
    sh, sw = (kh, kw) if stride is None else stride
    dh, dw = (draw(st.integers(1, max_dilation)), draw(st.integers(1, max_dilation))) if kind == "max" else (1, 1)
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    form = draw(st.sampled_from(["int", "pair", "four"]))
    if form == "int":
        p = draw(st.integers(0, min(kh, kw) // 2))
        padding, pads = p, (p, p, p, p)
    elif form == "pair":
        ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
        padding, pads = (ph, pw), (ph, ph, pw, pw)
    else:
        pads = tuple(draw(st.integers(0, k // 2)) for k in (kh, kh, kw, kw))
        padding = pads
    ceil_mode = draw(st.booleans())
    t, b, left, r = pads
    h = draw(st.integers(max(1, span_h - t - b), max(1, span_h - t - b) + max_extra))
    w = draw(st.integers(max(1, span_w - left - r), max(1, span_w - left - r) + max_extra))
    g = {"shape": (n, c, h, w), "kernel": _maybe_int((kh, kw), draw(st.booleans())),
         "stride": None if stride is None else _maybe_int(stride, draw(st.booleans())), "padding": padding,
         "dilation": _maybe_int((dh, dw), True), "ceil_mode": ceil_mode,
         "kernel_hw": (kh, kw), "stride_hw": (sh, sw), "padding4": pads, "dilation_hw": (dh, dw),
         "out": (_pool_out(h, kh, sh, t, b, dh, ceil_mode), _pool_out(w, kw, sw, left, r, dw, ceil_mode))}
    if kind == "avg":
        g["count_include_pad"] = draw(st.booleans())
        g["divisor_override"] = draw(st.none() | st.sampled_from([1, 3, -2]))
    return g


def pool_example(shape, kernel, stride=None, padding=0, dilation=1, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
    """A fixed geometry in ``pool_geometry``'s format (for ``@example``)."""
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    (kh, kw), (dh, dw) = pair(kernel), pair(dilation)
    sh, sw = (kh, kw) if stride is None else pair(stride)
    pads = tuple(padding) if isinstance(padding, (tuple, list)) and len(padding) == 4 else \
        (pair(padding)[0],) * 2 + (pair(padding)[1],) * 2
    t, b, left, r = pads
    h, w = shape[2], shape[3]
    return {"shape": tuple(shape), "kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation,
            "ceil_mode": ceil_mode, "count_include_pad": count_include_pad, "divisor_override": divisor_override,
            "kernel_hw": (kh, kw), "stride_hw": (sh, sw), "padding4": pads, "dilation_hw": (dh, dw),
            "out": (_pool_out(h, kh, sh, t, b, dh, ceil_mode), _pool_out(w, kw, sw, left, r, dw, ceil_mode))}


# ----------------------------------------------------------------------------- values


def arrays(shape, lo=-2.0, hi=2.0, dtype=F64):
    """Finite floats in [lo, hi] (smooth ops: no kinks to avoid)."""
    return hnp.arrays(dtype, shape, elements=st.floats(lo, hi, allow_nan=False, allow_infinity=False,
                                                       allow_subnormal=False, width=64))


def positive_arrays(shape, lo=0.5, hi=2.0, dtype=F64):
    """Values bounded away from zero, for log, pow bases and div denominators."""
    return arrays(shape, lo, hi, dtype)


def away_from_zero(shape, lo=0.05, hi=2.0, dtype=F64):
    """|x| in [lo, hi] with either sign: away from relu's kink at 0."""
    mag = st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=64)
    return hnp.arrays(dtype, shape, elements=st.one_of(mag, mag.map(lambda v: -v)))


_GRID = 1 / 64  # distinct grid values differ by at least this: far more than gradcheck's eps


def distinct_arrays(shape, dtype=F64):
    """Pairwise-distinct values on a 1/64 grid: no ties, so max/maximum/max_pool2d are smooth."""
    return hnp.arrays(dtype, shape, elements=st.integers(-512, 512).map(lambda k: k * _GRID), unique=True)


@st.composite
def distinct_pair(draw, shape_a, shape_b, dtype=F64):
    """Two arrays whose values are all distinct, jointly (a and b never tie under broadcasting)."""
    na, nb = int(np.prod(shape_a, dtype=int)), int(np.prod(shape_b, dtype=int))
    flat = draw(distinct_arrays((na + nb,), dtype))
    return flat[:na].reshape(shape_a), flat[na:].reshape(shape_b)


def tie_arrays(shape, levels=3, dtype=F64):
    """Small integer values: plenty of exact ties (to check who wins them)."""
    return hnp.arrays(dtype, shape, elements=st.integers(0, levels - 1).map(float))


def exponents():
    """Python-number exponents for pow: negative, fractional, integer, zero."""
    return st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0])


@st.composite
def cross_entropy_cases(draw, max_n, max_c, bound, smoothings):
    """(logits (n, c) in [-bound, bound], integer targets, reduction, label_smoothing)."""
    n, c = draw(st.integers(1, max_n)), draw(st.integers(1, max_c))
    logits = draw(arrays((n, c), -bound, bound))
    targets = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    return logits, targets, reduction, draw(st.sampled_from(smoothings))


# ------------------------------------------------------------------- convolution windows


@st.composite
def conv_window_geometry(draw, max_batch=2, max_channels=2, max_kernel=4, max_stride=3, max_dilation=3,
                         max_padding=2, max_extra=3):
    """``window_geometry`` for convolutions: dilation 1..3 and asymmetric padding (top,
    bottom, left, right), each side drawn alone; sometimes symmetric (an int or a pair) or
    'same' (stride 1), so every form conv2d takes is drawn. The input is at least as large as
    the dilated kernel needs. Extra keys: ``dilation``, ``dilation_hw``, ``padding4``."""
    n, c = draw(st.integers(1, max_batch)), draw(st.integers(1, max_channels))
    kh, kw = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
    dh, dw = draw(st.integers(1, max_dilation)), draw(st.integers(1, max_dilation))
    form = draw(st.sampled_from(["four", "four", "pair", "same"]))
    if form == "same":
        sh = sw = 1
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pads, padding = (th // 2, th - th // 2, tw // 2, tw - tw // 2), "same"
    else:
        sh, sw = draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride))
        if form == "pair":
            ph, pw = draw(st.integers(0, max_padding)), draw(st.integers(0, max_padding))
            pads, padding = (ph, ph, pw, pw), _maybe_int((ph, pw), draw(st.booleans()))
        else:
            pads = tuple(draw(st.integers(0, max_padding)) for _ in range(4))
            padding = pads
    pt, pb, pl, pr = pads
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    h = draw(st.integers(max(1, eh - pt - pb), max(1, eh - pt - pb) + max_extra))
    w = draw(st.integers(max(1, ew - pl - pr), max(1, ew - pl - pr) + max_extra))
    return {
        "shape": (n, c, h, w), "kernel": (kh, kw), "stride": (sh, sw), "padding": padding,
        "dilation": _maybe_int((dh, dw), draw(st.booleans())),
        "kernel_hw": (kh, kw), "stride_hw": (sh, sw), "padding4": pads, "dilation_hw": (dh, dw),
        "out": ((h + pt + pb - eh) // sh + 1, (w + pl + pr - ew) // sw + 1),
    }


def conv_geometry_example(shape, kernel, stride, padding, dilation):
    """A fixed ``conv_window_geometry`` (for ``@example``): padding an int, a pair, a 4-tuple or 'same'."""
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    (kh, kw), (sh, sw), (dh, dw) = pair(kernel), pair(stride), pair(dilation)
    if padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    elif isinstance(padding, (tuple, list)) and len(padding) == 4:
        pads = tuple(padding)
    else:
        ph, pw = pair(padding)
        pads = (ph, ph, pw, pw)
    pt, pb, pl, pr = pads
    h, w = shape[2], shape[3]
    return {"shape": tuple(shape), "kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation,
            "kernel_hw": (kh, kw), "stride_hw": (sh, sw), "padding4": pads, "dilation_hw": (dh, dw),
            "out": ((h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1)}
