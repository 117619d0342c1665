"""Special functions as primitives: the error function, log(1 + x) and exp(x) - 1 with
full precision near zero, and GELU with its derivative as blocked kernels.

Each is a primitive because no composite of the others computes it well: there is no
``erf`` to compose from, and ``log(1 + x)`` loses every digit of ``x`` below 1e-16 (half of
them at 1e-8), as ``exp(x) - 1`` does; softplus, log-sigmoid, ELU and the binary
cross-entropies are built on them. GELU is a primitive for speed: written from ``erf`` or
``tanh`` it is a dozen full passes and intermediates each way; ``gelu`` and
``gelu_backward`` are one cache-blocked pass each.
"""
from __future__ import annotations

import math

from ..kernels import special as kernels
from ..xp import array_module, is_floating
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


_APPROXIMATIONS = ("none", "tanh")
_INV_SQRT_2PI = 0.39894228040143267794
_SQRT_2_OVER_PI = 0.79788456080286535588
_TANH_A = 0.044715


def _check_gelu(op, x, approximate):
    if approximate not in _APPROXIMATIONS:
        raise ValueError(f"{op}: approximate must be 'none' or 'tanh'; got {approximate!r}")
    if not is_floating(x.dtype):
        raise TypeError(f"{op}: expects a floating-point tensor; got dtype {x.dtype}")


@register
class Gelu(Op):
    """GELU, ``x * Phi(x)`` (Phi the standard normal CDF), or its tanh approximation with
    ``approximate='tanh'`` (PyTorch's two forms), as one blocked pass (``kernels.gelu``:
    float32 math for float32 input, float64 rounding for float64). Its VJP is
    ``gelu_backward(g, x)``. While recording, the forward also keeps ``GELU'(x)``, which its
    pass has all but computed (the exact form's exponential and ``Phi``), and hands it to
    ``gelu_backward``, which is then one multiply instead of a dozen passes over x."""

    name = "gelu"
    reads = ("inputs",)

    def forward(self, x, approximate="none"):
        _check_gelu("gelu", x, approximate)
        if not self._record:
            return kernels.gelu(x, approximate)
        out, slope = kernels.gelu(x, approximate, slope=True)
        self.save(slope)
        return out

    def backward(self, g):
        return GeluBackward.apply(g, self.parents[0], approximate=self.params.get("approximate", "none"),
                                  slope=self.saved[0])

    def label(self):
        return f"approximate={self.params.get('approximate', 'none')}"


@register
class GeluBackward(Op):
    """``g * GELU'(x)``: ``g * (Phi(x) + x phi(x))``, or the tanh form's derivative, as one
    blocked pass (``kernels.gelu_backward``). Linear in ``g`` (its VJP there is itself), and
    its VJP in ``x`` is ``gg * g * GELU''(x)`` in Tensor code, so GELU is differentiable to
    any order. ``slope``: GELU'(x) as an array already computed from this x (gelu's forward
    keeps it), used instead of recomputing it; it is a cache, never differentiated through
    (the VJP in x reads x)."""

    name = "gelu_backward"
    reads = ("inputs",)

    def forward(self, g, x, approximate="none", slope=None):
        _check_gelu("gelu_backward", x, approximate)
        if g.shape != x.shape:
            raise ValueError(f"gelu_backward: expects g and x of one shape; got {g.shape} and {x.shape}")
        if slope is not None and getattr(slope, "shape", None) != x.shape:
            raise ValueError(f"gelu_backward: slope must be GELU'(x), an array of x's shape {x.shape}; got "
                             f"{getattr(slope, 'shape', type(slope).__name__)}")
        return kernels.gelu_backward(g, x, approximate, slope=slope)

    def backward(self, gg):
        g, x = self.parents
        need_g, need_x = self.needs_input_grad
        approximate = self.params.get("approximate", "none")
        slope = self.params.get("slope")
        g_g = GeluBackward.apply(gg, x, approximate=approximate, slope=slope) if need_g else None
        g_x = gg * g * gelu_second_derivative(x, approximate) if need_x else None
        return g_g, g_x

    def label(self):
        return f"approximate={self.params.get('approximate', 'none')}"


def gelu_second_derivative(x, approximate="none"):
    """GELU''(x) in Tensor code: ``phi(x) (2 - x^2)`` for the exact form; for the tanh form,
    with ``u = k (x + a x^3)``, ``t = tanh(u)``: ``(1 - t^2) (u' (1 - x t u') + 3 a k x^2)``."""
    x2 = x * x
    if approximate == "none":
        return (x2 * -0.5).exp() * _INV_SQRT_2PI * (2.0 - x2)
    t = ((x2 * _TANH_A + 1.0) * x * _SQRT_2_OVER_PI).tanh()
    du = x2 * (3 * _TANH_A * _SQRT_2_OVER_PI) + _SQRT_2_OVER_PI
    return (1.0 - t * t) * (du * (1.0 - x * t * du) + x2 * (3 * _TANH_A * _SQRT_2_OVER_PI))
