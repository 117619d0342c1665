"""Reductions: sum, max and the (numerically stable) log-softmax."""
from __future__ import annotations

import operator

from ..backend import array_module
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
        if not -ndim <= a < ndim:
            raise ValueError(f"{name}: axis {axis!r} is out of range for a {ndim}-d tensor")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: axis {axis!r} repeats an axis")
    return tuple(sorted(out))


def expand_reduced(g, shape, axes, keepdims):
    """Put back the reduced axes of ``g`` (size 1) so it broadcasts against ``shape``."""
    if keepdims:
        return g
    kept = list(shape)
    for a in axes:
        kept[a] = 1
    return g.reshape(kept)


@register
class Sum(Op):
    name = "sum"

    def forward(self, x, axis=None, keepdims=False):
        self.axes = normalize_axes(self.name, axis, x.ndim)
        self.in_shape = x.shape
        return x.sum(axis=self.axes, keepdims=keepdims)

    def backward(self, g):
        g = expand_reduced(g, self.in_shape, self.axes, self.params.get("keepdims", False))
        return array_module(g).broadcast_to(g, self.in_shape)


@register
class Max(Op):
    """Maximum over axes; tied maxima share the gradient equally (deterministic, symmetric)."""

    name = "max"

    def forward(self, x, axis=None, keepdims=False):
        self.axes = normalize_axes(self.name, axis, x.ndim)
        if x.size == 0:
            raise ValueError(f"max: cannot reduce an empty tensor of shape {x.shape}")
        out = x.max(axis=self.axes, keepdims=True)
        self.save(x, out)
        return out if keepdims else out.reshape([n for i, n in enumerate(x.shape) if i not in self.axes])

    def backward(self, g):
        x, out = self.saved
        g = expand_reduced(g, x.shape, self.axes, self.params.get("keepdims", False))
        winners = x == out
        share = winners / winners.sum(axis=self.axes, keepdims=True).astype(x.dtype)
        return g * share


@register
class LogSoftmax(Op):
    """log(softmax(x)) along ``axis``, shifted by the max so that exp never overflows."""

    name = "log_softmax"

    def forward(self, x, axis=-1):
        if isinstance(axis, (tuple, list)):
            raise TypeError(f"log_softmax: axis must be a single int; got {axis!r}")
        (self.axis,) = normalize_axes(self.name, axis, x.ndim)
        xp = array_module(x)
        shifted = x - x.max(axis=self.axis, keepdims=True)
        out = shifted - xp.log(xp.exp(shifted).sum(axis=self.axis, keepdims=True))
        self.save(out)
        return out

    def backward(self, g):
        (out,) = self.saved
        return g - array_module(g).exp(out) * g.sum(axis=self.axis, keepdims=True)
