"""Primitives that move elements without arithmetic: reshape, transpose, indexing, padding."""
from __future__ import annotations

import operator

from ..backend import array_module
from . import Op, register


@register
class Reshape(Op):
    name = "reshape"

    def forward(self, x, shape):
        self.in_shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot view a tensor of shape {x.shape} ({x.size} elements) "
                             f"as shape {tuple(shape)}") from None

    def backward(self, g):
        return g.reshape(self.in_shape)


@register
class Transpose(Op):
    """Reorder axes: output axis i is input axis ``axes[i]`` (numpy's transpose, PyTorch's permute)."""

    name = "transpose"

    def forward(self, x, axes):
        if sorted(axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: axes {tuple(axes)} are not a permutation of the {x.ndim} axes "
                             f"of a tensor of shape {x.shape}")
        self.inverse = tuple(sorted(range(x.ndim), key=lambda i: axes[i]))
        return x.transpose(axes)

    def backward(self, g):
        return g.transpose(self.inverse)


def _is_basic(index) -> bool:
    """True when ``index`` only slices (ints, slices, None, ...): no element is picked twice."""
    items = index if isinstance(index, tuple) else (index,)
    for item in items:
        if item is None or item is Ellipsis or isinstance(item, slice):
            continue
        if isinstance(item, bool):
            return False
        try:
            operator.index(item)
        except TypeError:
            return False
    return True


@register
class GetItem(Op):
    """``x[index]`` with slices, integers, integer arrays or boolean masks (numpy semantics)."""

    name = "getitem"

    def forward(self, x, index):
        self.in_shape, self.in_dtype = x.shape, x.dtype
        try:
            return x[index]
        except IndexError as e:
            raise IndexError(f"getitem: index {index!r} is invalid for a tensor of shape {x.shape}: {e}") from None

    def backward(self, g):
        index = self.params["index"]
        xp = array_module(g)
        gx = xp.zeros(self.in_shape, dtype=self.in_dtype)
        if _is_basic(index) or getattr(index, "dtype", None) == bool:
            gx[index] = g  # each input element is picked at most once
        else:
            xp.add.at(gx, index, g)  # repeated integer indices accumulate
        return gx


def normalize_pad_width(name, pad_width, ndim):
    """``pad_width`` (an int, or one ``(before, after)`` pair per axis) as a tuple of pairs."""
    if isinstance(pad_width, int):
        pairs = ((pad_width, pad_width),) * ndim
    else:
        pairs = tuple((p, p) if isinstance(p, int) else tuple(p) for p in pad_width)
    if len(pairs) != ndim or any(len(p) != 2 for p in pairs):
        raise ValueError(f"{name}: pad_width {pad_width!r} must give one (before, after) pair for each of "
                         f"the {ndim} axes")
    if any(n < 0 for p in pairs for n in p):
        raise ValueError(f"{name}: padding must be non-negative; got {pad_width!r}")
    return tuple((int(a), int(b)) for a, b in pairs)


@register
class Pad(Op):
    """Constant padding: ``pad_width`` is an int or one ``(before, after)`` pair per axis."""

    name = "pad"

    def forward(self, x, pad_width, value=0.0):
        self.pairs = normalize_pad_width(self.name, pad_width, x.ndim)
        # a filled buffer and one copy: the same result as numpy's pad, without its overhead
        # (about 20 us a call, which shows on the small weight matrices conv2d pads)
        out = array_module(x).full(tuple(n + b + a for n, (b, a) in zip(x.shape, self.pairs)), value,
                                   dtype=x.dtype)
        out[tuple(slice(b, b + n) for n, (b, _) in zip(x.shape, self.pairs))] = x
        return out

    def backward(self, g):
        return g[tuple(slice(b, g.shape[i] - a) for i, (b, a) in enumerate(self.pairs))]
