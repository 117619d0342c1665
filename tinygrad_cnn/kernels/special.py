"""Special functions numpy lacks: the error function and its complement, vectorised.

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

import numpy as np

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
