"""Reductions: sum, max and the (numerically stable) log-softmax."""
from __future__ import annotations

import operator

from ..tensor import Tensor, _short
from ..xp import array_module
from . import Op, register


def normalize_axes(name, axis, ndim):
    """``axis`` (None, an int or a sequence) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in axes:
        try:
            a = operator.index(a)
        except TypeError:
            raise TypeError(f"{name}: axis must be an int or a tuple of ints; got {axis!r}") from None
        if ndim == 0 and a in (0, -1):  # a 0-d tensor's only "axis", as PyTorch allows
            continue
        if not -ndim <= a < ndim:
            raise ValueError(f"{name}: axis {axis!r} is out of range for a {ndim}-d tensor")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: axis {axis!r} repeats an axis")
    return tuple(sorted(out))


def kept_shape(shape, axes):
    """``shape`` with the reduced ``axes`` kept as 1s (what a keepdims reduction returns)."""
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def _axis_label(op):
    axis = op.params.get("axis")
    text = "axis=all" if axis is None else f"axis={_short(axis)}"
    return text + (" keepdims" if op.params.get("keepdims") else "")


@register
class Sum(Op):
    name = "sum"
    reads = ()

    def forward(self, x, axis=None, keepdims=False):
        self.axes = normalize_axes(self.name, axis, x.ndim)
        return x.sum(axis=self.axes, keepdims=keepdims)

    def backward(self, g):
        x = self.parents[0]
        return g.reshape(kept_shape(x.shape, self.axes)).expand(x.shape)

    label = _axis_label


@register
class Max(Op):
    """Maximum over axes; tied maxima share the gradient equally (deterministic, symmetric)."""

    name = "max"
    reads = ("inputs", "output")

    def forward(self, x, axis=None, keepdims=False):
        self.axes = normalize_axes(self.name, axis, x.ndim)
        if x.size == 0:
            raise ValueError(f"max: cannot reduce an empty tensor of shape {x.shape}")
        return x.max(axis=self.axes, keepdims=keepdims)

    def backward(self, g):
        x = self.parents[0].data
        kept = kept_shape(x.shape, self.axes)
        winners = x == self.output.data.reshape(kept)
        share = winners / winners.sum(axis=self.axes, keepdims=True)
        return g.reshape(kept) * Tensor._wrap(share.astype(x.dtype), False)

    label = _axis_label


@register
class LogSoftmax(Op):
    """log(softmax(x)) along ``axis``, shifted by the max so that exp never overflows."""

    name = "log_softmax"
    reads = ("output",)

    def forward(self, x, axis=-1):
        if isinstance(axis, (tuple, list)):
            raise TypeError(f"log_softmax: axis must be a single int; got {axis!r}")
        axes = normalize_axes(self.name, axis, x.ndim)
        xp = array_module(x)
        if not axes:  # a 0-d input: one element, so its log-probability is 0
            return xp.zeros_like(x)
        shifted = x - x.max(axis=axes, keepdims=True)
        return shifted - xp.log(xp.exp(shifted).sum(axis=axes, keepdims=True))

    def backward(self, g):
        axis = normalize_axes(self.name, self.params.get("axis", -1), g.ndim)
        if not axis:
            return g * 0.0
        return g - self.output.exp() * g.sum(axis=axis, keepdims=True)

    def label(self):
        return f"axis={self.params.get('axis', -1)}"
