"""Elementwise primitives. Binary ones broadcast; the engine sums gradients back to shape."""
from __future__ import annotations

import numpy as np

from ..backend import array_module, is_floating, parallel_ranges
from ..tensor import sum_to_shape
from . import Op, register


def _broadcast_shape(name, a, b):
    try:
        return np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{name}: shapes {a.shape} and {b.shape} do not broadcast (each trailing "
                         f"dimension must be equal or 1)") from None


class _Binary(Op):
    def forward(self, a, b):
        _broadcast_shape(self.name, a, b)
        return self.compute(a, b)


@register
class Add(_Binary):
    name = "add"

    def compute(self, a, b):
        return a + b

    def backward(self, g):
        return g, g


@register
class Sub(_Binary):
    name = "sub"

    def compute(self, a, b):
        self.b_shape = b.shape
        return a - b

    def backward(self, g):
        # negate after summing to b's shape: a broadcast b (a mean, a bias) then costs no
        # full-size negation
        return g, (-sum_to_shape(g, self.b_shape) if self.needs_input_grad[1] else None)


@register
class Mul(_Binary):
    name = "mul"

    def compute(self, a, b):
        self.save(a, b)
        return a * b

    def backward(self, g):
        a, b = self.saved
        need_a, need_b = self.needs_input_grad
        if need_a and self.parents[0] is self.parents[1]:  # x * x: d(x^2)/dx = 2x in one product
            return g * (a + a), None
        return (g * b if need_a else None), (g * a if need_b else None)


@register
class Div(_Binary):
    name = "div"

    def compute(self, a, b):
        out = a / b
        self.save(b, out)
        return out

    def backward(self, g):
        b, out = self.saved
        ga = g / b
        return ga, (-ga * out if self.needs_input_grad[1] else None)


@register
class Neg(Op):
    name = "neg"

    def forward(self, x):
        return -x

    def backward(self, g):
        return -g


@register
class Pow(Op):
    """x ** p for a Python-number exponent p."""

    name = "pow"

    def forward(self, x, exponent):
        self.save(x)
        return x ** exponent

    def backward(self, g):
        (x,) = self.saved
        p = self.params["exponent"]
        return g * (p * x ** (p - 1))


@register
class Exp(Op):
    name = "exp"

    def forward(self, x):
        out = array_module(x).exp(x)
        self.save(out)
        return out

    def backward(self, g):
        (out,) = self.saved
        return g * out


@register
class Log(Op):
    name = "log"

    def forward(self, x):
        self.save(x)
        return array_module(x).log(x)

    def backward(self, g):
        (x,) = self.saved
        return g / x


@register
class Maximum(_Binary):
    """Elementwise max of two tensors; on ties each side gets half the gradient."""

    name = "maximum"

    def compute(self, a, b):
        self.save(a, b)
        return array_module(a).maximum(a, b)

    def backward(self, g):
        a, b = self.saved
        share_a = (a > b).astype(g.dtype)
        share_a += (a == b) * g.dtype.type(0.5)
        return g * share_a, g * (1 - share_a)


@register
class Relu(Op):
    name = "relu"

    def forward(self, x):
        xp = array_module(x)
        out = xp.empty_like(x)
        _in_slices(x, lambda s: xp.maximum(x[s], 0, out=out[s]))
        self.save(out)
        return out

    def backward(self, g):
        (out,) = self.saved
        xp = array_module(g)
        gx = xp.empty_like(g)
        _in_slices(g, lambda s: xp.multiply(g[s], out[s] > 0, out=gx[s]))
        return gx


def _in_slices(a, fn):
    """Call ``fn(index)`` over slices that cover ``a``, on several threads when it is large
    (one memory-bound pass, which numpy would run on one core), cut along the outermost
    axis in memory, so that each slice is one block (the channels of a channel-major
    activation)."""
    if a.ndim == 0:
        fn(...)
        return
    axis = max(range(a.ndim), key=lambda i: (a.shape[i] > 1, abs(a.strides[i])))
    parallel_ranges(a.shape[axis], lambda lo, hi: fn((slice(None),) * axis + (slice(lo, hi),)), 2 * a.size)


@register
class Sigmoid(Op):
    """1 / (1 + exp(-x)), computed as (tanh(x/2) + 1) / 2 so that it never overflows."""

    name = "sigmoid"

    def forward(self, x):
        out = array_module(x).tanh(x * 0.5) * 0.5 + 0.5
        self.save(out)
        return out

    def backward(self, g):
        (out,) = self.saved
        return g * (out * (1 - out))


@register
class Tanh(Op):
    name = "tanh"

    def forward(self, x):
        out = array_module(x).tanh(x)
        self.save(out)
        return out

    def backward(self, g):
        (out,) = self.saved
        return g * (1 - out * out)


@register
class Cast(Op):
    """Change the dtype (floating to floating); the gradient is cast back."""

    name = "cast"

    def forward(self, x, dtype):
        if not (is_floating(dtype) and is_floating(x.dtype)):
            raise TypeError(f"cast: converts between floating dtypes only; got {x.dtype} -> {np.dtype(dtype)}")
        self.in_dtype = x.dtype
        return x.astype(dtype)

    def backward(self, g):
        return g.astype(self.in_dtype)
