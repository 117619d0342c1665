"""Special functions numpy lacks: the error function and its complement, vectorised; and
GELU with its derivative, as blocked one-pass kernels (at the end of this module).

numpy has no ``erf`` and scipy is not a dependency, so this is W. J. Cody's CALERF
(netlib specfun), "Rational Chebyshev approximations for the error function", Math. Comp.
23 (1969) 631-638: three near-minimax rational approximations, each good to about 18
significant digits, so the result is float64's correctly rounded value or one unit in the
last place off:

- |x| <= 0.46875:     erf(x) = x * P(x^2) / Q(x^2)
- 0.46875 < |x| <= 4: erfc(|x|) = exp(-x^2) * P(|x|) / Q(|x|)
- |x| > 4:            erfc(|x|) = exp(-x^2) / |x| * (1/sqrt(pi) - R(1/x^2) / x^2)

``exp(-x^2)`` is computed as ``exp(-s^2) * exp(-(x-s)(x+s))`` with ``s`` = ``x`` cut to a
multiple of 1/16, so that the rounding of ``x^2`` does not cost digits for large ``x``.
Each branch runs only on its own elements (no overflow or division by zero elsewhere).
Inputs of another floating dtype are computed in float64 and rounded once.
"""
from __future__ import annotations

import math

import numpy as np

from ..threads import parallel_ranges
from ..xp import array_module

# coefficients of the three approximations (Cody 1969, as in netlib's specfun/erf)
_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02, 3.20937758913846947e03,
      1.85777706184603153e-1)
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03, 2.84423683343917062e03)
_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01, 2.98635138197400131e02,
      8.81952221241769090e02, 1.71204761263407058e03, 2.05107837782607147e03, 1.23033935479799725e03,
      2.15311535474403846e-8)
_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02, 1.62138957456669019e03,
      3.29079923573345963e03, 4.36261909014324716e03, 3.43936767414372164e03, 1.23033935480374942e03)
_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1, 1.60837851487422766e-2,
      6.58749161529837803e-4, 1.63153871373020978e-2)
_Q = (2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1, 6.05183413124413191e-2,
      2.33520497626869185e-3)
_SQRT_1_PI = 5.6418958354775628695e-1  # 1 / sqrt(pi)
_THRESH = 0.46875  # below: erf directly; above: erfc (then erf = 1 - erfc without cancellation)
_XSMALL = 1.11e-16  # below: x^2 is 0 to working precision (and would underflow)
_XBIG = 26.543  # above: erfc(x) underflows to 0


def _small(x):
    """erf(x) for |x| <= 0.46875, as x + x * (P/Q - 1): the correction is about a ninth of
    x, so the rounding errors of the rational function reach the result divided by nine."""
    xp = array_module(x)
    ysq = xp.where(xp.abs(x) > _XSMALL, x * x, 0.0)
    num, den = (_A[4] - 1.0) * ysq, ysq  # P - Q over Q, with P, Q Cody's numerator, denominator
    for a, b in zip(_A[:3], _B[:3]):
        num = (num + (a - b)) * ysq
        den = (den + b) * ysq
    return x + x * ((num + (_A[3] - _B[3])) / (den + _B[3]))


def _exp_minus_square(y):
    """exp(-y^2), with y^2 split so that its rounding error is not amplified."""
    xp = array_module(y)
    s = xp.trunc(y * 16.0) / 16.0
    return xp.exp(-s * s) * xp.exp(-(y - s) * (y + s))


def _medium(y):
    """erfc(y) for 0.46875 < y <= 4."""
    num, den = _C[8] * y, y
    for c, d in zip(_C[:7], _D[:7]):
        num = (num + c) * y
        den = (den + d) * y
    return _exp_minus_square(y) * (num + _C[7]) / (den + _D[7])


def _large(y):
    """erfc(y) for 4 < y < 26.543 (above it, erfc is 0 in float64)."""
    ysq = 1.0 / (y * y)
    num, den = _P[5] * ysq, ysq
    for p, q in zip(_P[:4], _Q[:4]):
        num = (num + p) * ysq
        den = (den + q) * ysq
    r = ysq * (num + _P[4]) / (den + _Q[4])
    return _exp_minus_square(y) * (_SQRT_1_PI - r) / y


def _erfc_of_magnitude(y):
    """erfc(y) for y = |x| > 0.46875 (NaN stays NaN), piece by piece."""
    xp = array_module(y)
    out = xp.zeros_like(y)  # y >= 26.543: erfc underflows to 0
    medium = y <= 4.0
    large = (y > 4.0) & (y < _XBIG)
    out[medium] = _medium(y[medium])
    out[large] = _large(y[large])
    out[xp.isnan(y)] = xp.nan
    return out


def _as_float64(x):
    xp = array_module(x)
    return xp.asarray(x, dtype=np.float64), (lambda r: r.astype(x.dtype, copy=False))


def erf(x):
    """The error function, elementwise, to float64 rounding (see the module docstring)."""
    xp = array_module(x)
    x64, back = _as_float64(x)
    x64 = x64.reshape(-1)
    out = xp.empty_like(x64)
    y = xp.abs(x64)
    small = y <= _THRESH
    out[small] = _small(x64[small])
    rest = ~small
    tail = _erfc_of_magnitude(y[rest])
    out[rest] = xp.copysign((0.5 - tail) + 0.5, x64[rest])
    return back(out.reshape(np.shape(x)))


def erfc(x):
    """The complementary error function 1 - erf(x), elementwise, without the cancellation
    of computing it from ``erf`` (erfc(10) is 2.1e-45, not 0)."""
    xp = array_module(x)
    x64, back = _as_float64(x)
    x64 = x64.reshape(-1)
    out = xp.empty_like(x64)
    y = xp.abs(x64)
    small = y <= _THRESH
    out[small] = 1.0 - _small(x64[small])
    rest = ~small
    tail = _erfc_of_magnitude(y[rest])
    out[rest] = xp.where(x64[rest] < 0, 2.0 - tail, tail)
    return back(out.reshape(np.shape(x)))


# ------------------------------------------------------------------------------ GELU
#
# GELU(x) = x * Phi(x), Phi the standard normal CDF, and its derivative Phi(x) + x * phi(x),
# each one pass over the data in blocks that stay in cache (about a dozen numpy ufuncs per
# block, each releasing the GIL, so two shards on two threads run side by side). float32
# (and narrower) input is computed in float32 with an erfc good to float32 (Abramowitz and
# Stegun 7.1.26, below); float64 input with Cody's erfc above, to float64 rounding. The tanh
# approximation is computed as written, in the input's precision (float32 for narrower).

_GELU_BLOCK = 1 << 16  # elements per block: its few float32 temporaries (256 KiB each) stay in L2
_SQRT_HALF = 0.70710678118654752440
_INV_SQRT_2PI = 0.39894228040143267794  # phi(0)
_SQRT_2_OVER_PI = 0.79788456080286535588
_TANH_A = 0.044715
# Abramowitz and Stegun 7.1.26: erfc(z) = t * P(t) * exp(-z^2), t = 1 / (1 + p z), z >= 0,
# |error| <= 1.5e-7. Below, z = |x| / sqrt(2) and the 1/2 of Phi = erfc / 2 are folded into
# the coefficients: q(a) = t * P'(t) * exp(-a^2 / 2) = Phi(-|x|), t = 1 / (1 + p' a), a = |x|.
_AS_P = 0.3275911 * _SQRT_HALF
_AS_COEFFS = tuple(0.5 * c for c in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429))


def _dense_order(a):
    """The axis order in which ``a``'s elements lie contiguously in memory (``a`` transposed
    to it is C-contiguous, so one flat view covers it), or None for a strided view."""
    order = sorted(range(a.ndim), key=lambda i: -abs(a.strides[i]) if a.shape[i] > 1 else 0)
    return order if a.transpose(order).flags.c_contiguous else None


def _flat_views(first, *others):
    """Flat views of ``first`` and ``others`` (one shape), element i of each being the same
    element of the array, and the output: a new array in ``first``'s memory layout (e.g. a
    convolution's channel-major output), flat in the same order. Arrays that are not dense
    in that order are copied into it first."""
    xp = array_module(first)
    order = _dense_order(first)
    if order is None:
        first = xp.ascontiguousarray(first)
        order = list(range(first.ndim))
    out = xp.empty_like(first)  # keeps first's (dense) layout

    def flat(a):
        t = a.transpose(order)
        return (t if t.flags.c_contiguous else xp.ascontiguousarray(t)).reshape(-1)

    return out, flat(out), [flat(first)] + [flat(a) for a in others]


def _in_blocks(xp, size, dtype, scratch, fn):
    """``fn(lo, hi, *buffers)`` over blocks of ``_GELU_BLOCK`` elements covering
    ``range(size)``, with ``scratch`` block-sized buffers of ``dtype`` (allocated once per
    thread's range, as views of hi - lo elements); the blocks are split over the kernel
    threads for large inputs (and run serially inside a shard)."""
    def run(b0, b1):
        buffers = [xp.empty(min(size, _GELU_BLOCK), dtype) for _ in range(scratch)]
        with np.errstate(invalid="ignore"):  # inf * 0 at x = +-inf: NaN, as PyTorch, without a warning
            for b in range(b0, b1):
                lo, hi = b * _GELU_BLOCK, min(size, (b + 1) * _GELU_BLOCK)
                fn(lo, hi, *(buf[:hi - lo] for buf in buffers))

    parallel_ranges(-(-size // _GELU_BLOCK), run, 6 * size)


def _phi_tail(a, e, t, out):
    """``out`` = Phi(-a) for a = |x| >= 0 (A-S 7.1.26), given ``e`` = exp(-a^2 / 2); ``t`` is
    scratch. All float32 arrays of one block."""
    np.multiply(a, _AS_P, out=t)
    t += 1.0
    np.reciprocal(t, out=t)
    np.multiply(t, _AS_COEFFS[4], out=out)
    for c in _AS_COEFFS[3::-1]:
        out += c
        out *= t
    out *= e


def _store(ufunc, a, b, o, lo, hi):
    """o[lo:hi] = ufunc(a, b): straight into the output when it has the computing dtype,
    else through the block's ``a`` and one rounding."""
    if o.dtype == a.dtype:
        ufunc(a, b, out=o[lo:hi])
    else:
        ufunc(a, b, out=a)
        o[lo:hi] = a


def _compute_dtype(x):
    return np.float64 if x.dtype == np.float64 else np.float32


def _exact_slope(xb, e, q, d):
    """``d`` = GELU'(x) = Phi(x) + x phi(x) = 1/2 + copysign(1/2 - Phi(-|x|), x) + x phi(x) for
    one float32 block, from ``e`` = exp(-x^2 / 2) and ``q`` = Phi(-|x|) (consumed)."""
    np.subtract(0.5, q, out=q)
    np.copysign(q, xb, out=q)
    q += 0.5
    np.multiply(xb, e, out=d)
    d *= _INV_SQRT_2PI
    d += q


def _tanh_slope(xb, s, e, r, d):
    """``d`` = the tanh form's GELU'(x) for one block (``s``, ``e``, ``r`` scratch).

    d/dx = (1 + t) / 2 + x (1 - t^2) u' / 2, t = tanh(u), u = k x (1 + a x^2),
    u' = k (1 + 3 a x^2). With e = exp(-2|u|) and r = 1 / (1 + e): 1 - t^2 = 4 e r^2,
    and (1 + t) / 2 is r where u >= 0 (x >= 0), e r where u < 0, so neither cancels
    where tanh saturates (1 - tanh(u)^2 in float32 is 0 or one rounding of 1 there)."""
    np.multiply(xb, xb, out=s)
    np.multiply(s, -2 * _TANH_A * _SQRT_2_OVER_PI, out=e)
    e -= 2 * _SQRT_2_OVER_PI
    e *= xb
    np.abs(e, out=e)
    np.negative(e, out=e)
    np.exp(e, out=e)                        # e = exp(-2|u|)
    np.add(e, 1.0, out=r)
    np.reciprocal(r, out=r)                 # r = 1 / (1 + e)
    e *= r                                  # e r
    s *= 3 * _TANH_A * 2 * _SQRT_2_OVER_PI
    s += 2 * _SQRT_2_OVER_PI                # 2 u'
    s *= xb
    s *= e
    s *= r                                  # x (1 - t^2) u' / 2 = 2 x u' e r^2
    np.copyto(e, r, where=xb >= 0)          # (1 + t) / 2
    np.add(s, e, out=d)


def gelu(x, approximate="none", slope=False):
    """GELU, elementwise: ``x * Phi(x)`` (``approximate='none'``), or
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (``'tanh'``), in x's layout and dtype.

    With ``slope``, returns ``(gelu(x), GELU'(x))``, the derivative in x's layout and the
    computing dtype (float32 for float32 and narrower), from the same pass: the exact form
    reuses the exponential and ``Phi`` it has just computed, so a recorded forward that keeps
    the slope makes its backward one multiply (``gelu_backward(g, x, slope=...)``), bit for bit
    the product ``gelu_backward`` would compute from x. The output is the same either way."""
    out, o, (xf,) = _flat_views(x)
    xp = array_module(o)
    dt = _compute_dtype(x)
    d_out = d = None
    if slope:  # a new array in out's layout, and its flat view in o's order
        order = _dense_order(out)
        dense = xp.empty(tuple(out.shape[i] for i in order), dt)
        d_out, d = dense.transpose(np.argsort(order).astype(int)), dense.reshape(-1)
    if x.dtype == np.float64 and approximate == "none":
        cdf = 0.5 * erfc(xf * -_SQRT_HALF)  # Cody's erfc: float64 rounding, no cancellation
        o[...] = xf * cdf
        if slope:
            d[...] = cdf + xf * (np.exp(xf * xf * -0.5) * _INV_SQRT_2PI)
        return (out, d_out) if slope else out

    def exact(lo, hi, a, e, t, q):  # x * Phi(x) = max(x, 0) - |x| * Phi(-|x|)
        xb = xf[lo:hi].astype(dt, copy=False)
        np.abs(xb, out=a)
        np.multiply(a, a, out=e)
        e *= -0.5
        np.exp(e, out=e)
        _phi_tail(a, e, t, q)
        np.multiply(q, a, out=t)
        np.maximum(xb, 0.0, out=a)
        _store(np.subtract, a, t, o, lo, hi)
        if slope:
            _exact_slope(xb, e, q, d[lo:hi])

    def tanh(lo, hi, t, h, *scratch):  # 0.5 x (1 + tanh(k x (1 + a x^2)))
        xb = xf[lo:hi].astype(dt, copy=False)
        np.multiply(xb, xb, out=t)
        t *= _TANH_A * _SQRT_2_OVER_PI
        t += _SQRT_2_OVER_PI
        t *= xb
        np.tanh(t, out=t)
        t += 1.0
        np.multiply(xb, 0.5, out=h)
        _store(np.multiply, h, t, o, lo, hi)
        if slope:
            _tanh_slope(xb, t, h, scratch[0], d[lo:hi])

    if approximate == "none":
        _in_blocks(xp, o.size, dt, 4, exact)
    else:
        _in_blocks(xp, o.size, dt, 3 if slope else 2, tanh)
    return (out, d_out) if slope else out


def gelu_backward(g, x, approximate="none", slope=None):
    """``g * GELU'(x)``: ``g * (Phi(x) + x phi(x))`` for the exact form, the tanh form's
    derivative for ``'tanh'``; in g's layout and dtype. ``slope``: GELU'(x) as
    ``gelu(x, slope=True)`` returned it, so that this is one multiply (x is then not read)."""
    if slope is not None:
        out, o, (gf, sf) = _flat_views(g, slope)

        def scale(lo, hi):  # never through the slope's memory: it is the forward's, kept
            if o.dtype == sf.dtype:
                np.multiply(sf[lo:hi], gf[lo:hi], out=o[lo:hi])
            else:
                o[lo:hi] = sf[lo:hi] * gf[lo:hi].astype(sf.dtype)

        _in_blocks(array_module(o), o.size, sf.dtype, 0, scale)
        return out
    out, o, (gf, xf) = _flat_views(g, x)
    if x.dtype == np.float64 and approximate == "none":
        phi = np.exp(xf * xf * -0.5) * _INV_SQRT_2PI
        o[...] = gf * (0.5 * erfc(xf * -_SQRT_HALF) + xf * phi)
        return out
    dt = _compute_dtype(x)

    def exact(lo, hi, a, e, t, q):
        xb, gb = xf[lo:hi].astype(dt, copy=False), gf[lo:hi].astype(dt, copy=False)
        np.abs(xb, out=a)
        np.multiply(a, a, out=e)
        e *= -0.5
        np.exp(e, out=e)
        _phi_tail(a, e, t, q)
        _exact_slope(xb, e, q, t)
        _store(np.multiply, t, gb, o, lo, hi)

    def tanh(lo, hi, s, e, r, d):
        xb, gb = xf[lo:hi].astype(dt, copy=False), gf[lo:hi].astype(dt, copy=False)
        _tanh_slope(xb, s, e, r, d)
        _store(np.multiply, d, gb, o, lo, hi)

    _in_blocks(array_module(o), o.size, dt, 4, exact if approximate == "none" else tanh)
    return out


def naive_gelu(x, approximate="none"):
    """GELU element by element with ``math.erf``/``math.tanh`` in float64, rounded to x's dtype
    (the plain-loop reference of ``gelu``)."""
    out = np.empty(np.shape(x), dtype=np.float64)
    for i, v in np.ndenumerate(np.asarray(x, dtype=np.float64)):
        if approximate == "none":
            out[i] = v * 0.5 * math.erfc(-v * _SQRT_HALF)
        else:
            out[i] = 0.5 * v * (1.0 + math.tanh(_SQRT_2_OVER_PI * (v + _TANH_A * v ** 3)))
    return out.astype(np.asarray(x).dtype)


def naive_gelu_backward(g, x, approximate="none"):
    """``g * GELU'(x)`` element by element in float64 (the plain-loop reference of
    ``gelu_backward``), rounded to g's dtype."""
    out = np.empty(np.shape(x), dtype=np.float64)
    for i, v in np.ndenumerate(np.asarray(x, dtype=np.float64)):
        if approximate == "none":
            d = 0.5 * math.erfc(-v * _SQRT_HALF) + v * math.exp(-0.5 * v * v) * _INV_SQRT_2PI
        else:  # (1 + tanh u) / 2 = sigmoid(2u), 1 - tanh(u)^2 = 4 sigmoid(2u) sigmoid(-2u): no cancellation
            u = _SQRT_2_OVER_PI * (v + _TANH_A * v ** 3)
            half = _sigmoid(2 * u)
            d = half + 2 * v * half * _sigmoid(-2 * u) * _SQRT_2_OVER_PI * (1 + 3 * _TANH_A * v * v)
        out[i] = d * float(np.asarray(g, dtype=np.float64)[i])
    return out.astype(np.asarray(g).dtype)


def _sigmoid(z):
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))
