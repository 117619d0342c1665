"""Special functions as primitives: the error function, and log(1 + x) and exp(x) - 1 with
full precision near zero.

Each is a primitive because no composite of the others computes it well: there is no
``erf`` to compose from, and ``log(1 + x)`` loses every digit of ``x`` below 1e-16 (half of
them at 1e-8), as ``exp(x) - 1`` does; softplus, log-sigmoid, ELU and the binary
cross-entropies are built on them.
"""
from __future__ import annotations

import math

from ..kernels import special as kernels
from ..xp import array_module
from . import Op, register

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


@register
class Erf(Op):
    """The error function, to float64 rounding (W. J. Cody's rational approximations in
    ``kernels/special.py``). Its derivative is ``2/sqrt(pi) * exp(-x^2)``."""

    name = "erf"
    reads = ("inputs",)

    def forward(self, x):
        return kernels.erf(x)

    def backward(self, g):
        x = self.parents[0]
        return g * ((-(x * x)).exp() * _TWO_OVER_SQRT_PI)


@register
class Log1p(Op):
    """``log(1 + x)``, exact for small ``x`` (numpy's ``log1p``). Derivative ``1 / (1 + x)``."""

    name = "log1p"
    reads = ("inputs",)

    def forward(self, x):
        return array_module(x).log1p(x)

    def backward(self, g):
        return g / (self.parents[0] + 1.0)


@register
class Expm1(Op):
    """``exp(x) - 1``, exact for small ``x`` (numpy's ``expm1``). Derivative ``exp(x)``, read
    off the output as ``out + 1``."""

    name = "expm1"
    reads = ("output",)

    def forward(self, x):
        return array_module(x).expm1(x)

    def backward(self, g):
        return g * (self.output + 1.0)
