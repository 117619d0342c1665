"""Elementwise primitives. Binary ones broadcast; the engine sums gradients back to shape.

Each VJP is Tensor code over ``self.parents`` (the inputs) and ``self.output``, so it is
differentiable in turn: the second derivative of ``exp`` is the VJP of ``g * out``.
"""
from __future__ import annotations

import numpy as np

from ..kernels import elementwise as kernels
from ..tensor import Tensor
from ..xp import array_module, is_floating
from . import Op, register


def _broadcast_shape(name, a, b):
    if a.shape == b.shape:
        return a.shape
    try:
        return np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{name}: shapes {a.shape} and {b.shape} do not broadcast (each trailing "
                         f"dimension must be equal or 1)") from None


def _constant(like, array):
    """An array as a Tensor with no history (a mask or a share: its derivative is zero)."""
    return Tensor._wrap(array_module(like).asarray(array, dtype=like.dtype), False)


@register
class Add(Op):
    name = "add"
    reads = ()

    def forward(self, a, b):
        _broadcast_shape(self.name, a, b)
        return a + b

    def backward(self, g):
        return g, g


@register
class Sub(Op):
    name = "sub"
    reads = ()

    def forward(self, a, b):
        _broadcast_shape(self.name, a, b)
        return a - b

    def backward(self, g):
        # negate after summing to b's shape: a broadcast b (a mean, a bias) costs no full-size negation
        b = self.parents[1]
        return g, (-g.sum_to_shape(b.shape) if self.needs_input_grad[1] else None)


@register
class Mul(Op):
    name = "mul"
    reads = ("inputs",)

    def forward(self, a, b):
        _broadcast_shape(self.name, a, b)
        return a * b

    def backward(self, g):
        a, b = self.parents
        need_a, need_b = self.needs_input_grad
        return (g * b if need_a else None), (g * a if need_b else None)


@register
class Div(Op):
    name = "div"
    reads = ("inputs", "output")

    def forward(self, a, b):
        _broadcast_shape(self.name, a, b)
        return a / b

    def backward(self, g):
        b = self.parents[1]
        ga = g / b
        return ga, (-(ga * self.output) if self.needs_input_grad[1] else None)


@register
class Neg(Op):
    name = "neg"
    reads = ()

    def forward(self, x):
        return -x

    def backward(self, g):
        return -g


@register
class Pow(Op):
    """x ** p for a Python-number exponent p (d/dx x**0 is 0, also at x = 0)."""

    name = "pow"
    reads = ("inputs",)

    def forward(self, x, exponent):
        return x ** exponent

    def backward(self, g):
        (x,) = self.parents
        p = self.params["exponent"]
        if p == 0:  # constant: the gradient is zero everywhere (x ** -1 at 0 would make it NaN)
            return _constant(g, array_module(g.data).zeros(g.shape))
        return g * (x ** (p - 1) * p) if p != 1 else g

    def label(self):
        return f"^{self.params['exponent']:g}"


@register
class Exp(Op):
    name = "exp"
    reads = ("output",)

    def forward(self, x):
        return array_module(x).exp(x)

    def backward(self, g):
        return g * self.output


@register
class Log(Op):
    name = "log"
    reads = ("inputs",)

    def forward(self, x):
        return array_module(x).log(x)

    def backward(self, g):
        return g / self.parents[0]


@register
class Maximum(Op):
    """Elementwise max of two tensors; on ties each side gets half the gradient."""

    name = "maximum"
    reads = ("inputs",)

    def forward(self, a, b):
        _broadcast_shape(self.name, a, b)
        return array_module(a).maximum(a, b)

    def backward(self, g):
        a, b = (p.data for p in self.parents)
        share_a = (a > b) + (a == b) * 0.5
        return g * _constant(g, share_a), g * _constant(g, 1 - share_a)


@register
class Relu(Op):
    name = "relu"
    reads = ("output",)

    def forward(self, x):
        return kernels.relu(x)

    def backward(self, g):
        return g.relu_mask(self.output.data)


@register
class ReluBackward(Op):
    """``g`` where ``where > 0``, else 0: ReLU's VJP, as a primitive so that it is one threaded
    pass with no float mask (PyTorch's ``threshold_backward``). Linear in ``g``, so its own
    VJP is itself, with the same mask."""

    name = "relu_backward"
    reads = ()

    def forward(self, g, where):
        if where.shape != g.shape:
            raise ValueError(f"relu_backward: the mask's shape {where.shape} differs from the gradient's {g.shape}")
        return kernels.relu_backward(g, where)

    def backward(self, gg):
        return gg.relu_mask(self.params["where"])

    def label(self):
        return ""


@register
class Sigmoid(Op):
    """1 / (1 + exp(-x)), computed as (tanh(x/2) + 1) / 2 so that it never overflows."""

    name = "sigmoid"
    reads = ("output",)

    def forward(self, x):
        return array_module(x).tanh(x * 0.5) * 0.5 + 0.5

    def backward(self, g):
        out = self.output
        return g * (out * (1 - out))


@register
class Tanh(Op):
    name = "tanh"
    reads = ("output",)

    def forward(self, x):
        return array_module(x).tanh(x)

    def backward(self, g):
        out = self.output
        return g * (1 - out * out)


@register
class Cast(Op):
    """Change the dtype (floating to floating); the gradient is cast back."""

    name = "cast"
    reads = ()

    def forward(self, x, dtype):
        if not (is_floating(dtype) and is_floating(x.dtype)):
            raise TypeError(f"cast: converts between floating dtypes only; got {x.dtype} -> {np.dtype(dtype)}")
        return x.astype(dtype)

    def backward(self, g):
        return g.astype(self.parents[0].dtype)

    def label(self):
        return f"to {np.dtype(self.params['dtype']).name}"


@register
class PowTensor(Op):
    """``x ** y`` with a tensor exponent (both broadcast). A primitive rather than
    ``exp(y * log(x))``: that composite is NaN for a negative base, where numpy's power gives
    ``(-2) ** 3 = -8``, and its gradient is NaN at a zero base. The VJP is PyTorch's:
    ``y * x ** (y - 1)`` for x (0 where x and y are 0) and ``out * log(x)`` for y (0 where x is 0
    and y >= 0; NaN for a negative base, whose power is not differentiable in y)."""

    name = "pow_tensor"
    reads = ("inputs", "output")

    def forward(self, x, y):
        _broadcast_shape(self.name, x, y)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # 0 ** -1 is inf, (-1) ** 0.5 NaN: as PyTorch
            return array_module(x).power(x, y)

    def backward(self, g):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # 0 * inf where masked below
            return self._grads(g)

    def _grads(self, g):
        x, y = self.parents
        need_x, need_y = self.needs_input_grad
        gx = gy = None
        if need_x:
            # y * x ** (y - 1) is 0 * inf at x = y = 0; elsewhere y = 0 gives 0 on its own (and keeps
            # the derivative in y, which masking every y = 0 would lose)
            gx = where_constant((y.data == 0) & (x.data == 0), 0.0, g * (y * PowTensor.apply(x, y - 1)))
        if need_y:
            flat = (x.data == 0) & (y.data >= 0)  # 0 ** y is constant in y there
            safe_x = where_constant(flat, 1.0, x) if flat.any() else x
            gy = where_constant(flat, 0.0, g * (self.output * safe_x.log()))
        return gx, gy

    def label(self):
        return ""


def where_constant(condition, value, t):
    """``value`` (a number) where ``condition`` holds, ``t`` elsewhere; no op when it never does."""
    if not condition.any():
        return t
    return Where.apply(_constant(t.data, value), t, condition=condition)


@register
class Where(Op):
    """``a`` where ``condition`` holds, else ``b`` (numpy's ``where``; all three broadcast).
    The condition is a constant (a bool array parameter), so the VJP routes ``g`` by it:
    ``where(c, g, 0)`` to ``a`` and ``where(c, 0, g)`` to ``b``. Linear in ``a`` and ``b``, so
    its VJP's VJP is ``where`` again. A primitive rather than ``a * c + b * (1 - c)``: that
    product turns an infinity in the branch not taken (``exp(1000)`` where ``x > 0``) into NaN."""

    name = "where"
    reads = ()

    def forward(self, a, b, condition):
        xp = array_module(a, b)
        try:
            np.broadcast_shapes(np.shape(condition), a.shape, b.shape)
        except ValueError:
            raise ValueError(f"where: the condition's shape {np.shape(condition)} and the operands' shapes "
                             f"{a.shape} and {b.shape} do not broadcast") from None
        return xp.where(condition, a, b)

    def backward(self, g):
        c = self.params["condition"]
        need_a, need_b = self.needs_input_grad
        zero = _constant(g.data, 0.0)
        return (Where.apply(g, zero, condition=c) if need_a else None,
                Where.apply(zero, g, condition=c) if need_b else None)

    def label(self):
        return ""
