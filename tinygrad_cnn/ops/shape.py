"""Primitives that move elements without arithmetic: reshape, transpose, broadcast,
indexing and its adjoint, padding. Each one's VJP is another of them."""
from __future__ import annotations

import operator

import numpy as np

from ..tensor import _short
from ..xp import array_module
from . import Op, register


@register
class Reshape(Op):
    name = "reshape"
    reads = ()

    def forward(self, x, shape):
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot view a tensor of shape {x.shape} ({x.size} elements) "
                             f"as shape {tuple(shape)}") from None

    def backward(self, g):
        return g.reshape(self.parents[0].shape)

    def label(self):
        return ""  # the output shape beside it says it all


@register
class Transpose(Op):
    """Reorder axes: output axis i is input axis ``axes[i]`` (numpy's transpose, PyTorch's permute)."""

    name = "transpose"
    reads = ()

    def forward(self, x, axes):
        if sorted(axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: axes {tuple(axes)} are not a permutation of the {x.ndim} axes "
                             f"of a tensor of shape {x.shape}")
        return x.transpose(axes)

    def backward(self, g):
        axes = self.params["axes"]
        return g.permute(*sorted(range(len(axes)), key=lambda i: axes[i]))

    def label(self):
        return f"axes={_short(tuple(self.params['axes']))}"


@register
class Expand(Op):
    """Broadcast to ``shape`` (numpy's broadcast_to, PyTorch's expand): a read-only view.
    Its VJP sums over the broadcast axes."""

    name = "expand"
    reads = ()

    def forward(self, x, shape):
        try:
            return array_module(x).broadcast_to(x, shape)
        except ValueError:
            raise ValueError(f"expand: a tensor of shape {x.shape} does not broadcast to {tuple(shape)} (each "
                             f"trailing side must be equal or 1)") from None

    def backward(self, g):
        return g.sum_to_shape(self.parents[0].shape)

    def label(self):
        return ""


def is_basic(index) -> bool:
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
    """``x[index]`` with slices, integers, integer arrays or boolean masks (numpy semantics).
    Its VJP puts the gradient back where the elements came from (``scatter_add``)."""

    name = "getitem"
    reads = ()

    def forward(self, x, index):
        try:
            return x[index]
        except IndexError as e:
            raise IndexError(f"getitem: index {index!r} is invalid for a tensor of shape {x.shape}: {e}") from None

    def backward(self, g):
        return ScatterAdd.apply(g, index=self.params["index"], shape=self.parents[0].shape)

    def label(self):
        index = self.params["index"]
        items = index if isinstance(index, tuple) else (index,)
        return "[" + ", ".join(_index_item(i) for i in items) + "]"


def _index_item(i) -> str:
    if isinstance(i, slice):
        text = ("" if i.start is None else str(i.start)) + ":" + ("" if i.stop is None else str(i.stop))
        return text + (f":{i.step}" if i.step is not None else "")
    if i is None:
        return "None"
    if i is Ellipsis:
        return "..."
    if hasattr(i, "shape"):
        return f"{np.dtype(i.dtype).name}[{'x'.join(str(n) for n in i.shape)}]"
    return str(i)


@register
class ScatterAdd(Op):
    """Zeros of ``shape`` with ``g`` added at ``index`` (repeated indices accumulate): the
    adjoint of ``getitem``, so its VJP is ``getitem`` with the same index."""

    name = "scatter_add"
    reads = ()

    def forward(self, g, index, shape):
        xp = array_module(g)
        out = xp.zeros(shape, dtype=g.dtype)
        try:
            if is_basic(index) or getattr(index, "dtype", None) == bool:
                out[index] = g  # each element is picked at most once
            else:
                xp.add.at(out, index, g)
        except (IndexError, ValueError) as e:
            raise ValueError(f"scatter_add: cannot add values of shape {g.shape} at index {index!r} of a tensor "
                             f"of shape {tuple(shape)}: {e}") from None
        return out

    def backward(self, gg):
        return gg[self.params["index"]]

    def label(self):
        return GetItem.label(self)


def normalize_pad_width(name, pad_width, ndim):
    """``pad_width`` (an int, or one ``(before, after)`` pair per axis) as a tuple of pairs."""
    def as_int(v):
        try:
            return operator.index(v)
        except TypeError:
            raise TypeError(f"{name}: padding sizes must be integers; got {pad_width!r}") from None

    if isinstance(pad_width, (tuple, list)):
        pairs = tuple((as_int(p), as_int(p)) if not isinstance(p, (tuple, list)) else tuple(as_int(v) for v in p)
                      for p in pad_width)
    else:
        n = as_int(pad_width)
        pairs = ((n, n),) * ndim
    if len(pairs) != ndim or any(len(p) != 2 for p in pairs):
        raise ValueError(f"{name}: pad_width {pad_width!r} must give one (before, after) pair for each of "
                         f"the {ndim} axes")
    if any(n < 0 for p in pairs for n in p):
        raise ValueError(f"{name}: padding must be non-negative; got {pad_width!r}")
    return tuple((int(a), int(b)) for a, b in pairs)


@register
class Pad(Op):
    """Constant padding: ``pad_width`` is an int or one ``(before, after)`` pair per axis.
    Its VJP is the slice that drops the padding."""

    name = "pad"
    reads = ()

    def forward(self, x, pad_width, value=0.0):
        pairs = normalize_pad_width(self.name, pad_width, x.ndim)
        # a filled buffer and one copy: the same result as numpy's pad, without its overhead
        # (about 20 us a call, which shows on the small weight matrices conv2d pads)
        out = array_module(x).full(tuple(n + b + a for n, (b, a) in zip(x.shape, pairs)), value, dtype=x.dtype)
        out[tuple(slice(b, b + n) for n, (b, _) in zip(x.shape, pairs))] = x
        return out

    def backward(self, g):
        pairs = normalize_pad_width(self.name, self.params["pad_width"], g.ndim)
        return g[tuple(slice(b, n - a) for n, (b, a) in zip(g.shape, pairs))]

    def label(self):
        value = self.params.get("value")
        return f"pad={_short(self.params['pad_width'])}" + (f" value={value:g}" if value else "")


@register
class Concatenate(Op):
    """Join tensors along an existing ``axis`` (numpy's concatenate, PyTorch's cat). A
    primitive because the composite, each input padded to the full size and the pads added,
    costs one full-size pass per input; this is one copy. Its VJP slices the gradient back
    into the pieces (``getitem``)."""

    name = "cat"
    reads = ()

    def forward(self, *arrays, axis=0):
        first = arrays[0]
        for i, a in enumerate(arrays):
            if a.ndim == 0:
                raise ValueError(f"cat: a 0-d tensor (input {i}) cannot be concatenated; stack them, or "
                                 f"reshape each to shape (1,)")
            if a.ndim != first.ndim or any(n != m for k, (n, m) in enumerate(zip(a.shape, first.shape))
                                           if k != axis):
                raise ValueError(f"cat: input {i} has shape {a.shape} but input 0 has {first.shape}; all sizes "
                                 f"but that of axis {axis} must match")
        return array_module(*arrays).concatenate(arrays, axis=axis)

    def backward(self, g):
        axis = self.params.get("axis", 0)
        grads, start = [], 0
        for p, need in zip(self.parents, self.needs_input_grad):
            stop = start + p.shape[axis]
            grads.append(g[(slice(None),) * axis + (slice(start, stop),)] if need else None)
            start = stop
        return tuple(grads)

    def label(self):
        return f"axis={self.params.get('axis', 0)}"
