"""Elementwise kernels that run in slices on several threads: one memory-bound pass, which
numpy would run on one core, split over the cores for large arrays."""
from __future__ import annotations

from ..threads import parallel_ranges
from ..xp import array_module


def relu(x):
    """max(x, 0), in slices on threads for large inputs (the output keeps x's layout)."""
    xp = array_module(x)
    out = xp.empty_like(x)
    in_slices(x, lambda s: xp.maximum(x[s], 0, out=out[s]))
    return out


def relu_backward(g, y):
    """g where y > 0, else 0 (y: ReLU's output, or any array whose sign gates g)."""
    xp = array_module(g, y)
    out = xp.empty_like(g)
    in_slices(g, lambda s: xp.multiply(g[s], y[s] > 0, out=out[s]))
    return out


def in_slices(a, fn):
    """Call ``fn(index)`` over slices that cover ``a``, on several threads when it is large,
    cut along the outermost axis in memory, so that each slice is one block (the channels of
    a channel-major activation)."""
    if a.ndim == 0:
        fn(...)
        return
    axis = max(range(a.ndim), key=lambda i: (a.shape[i] > 1, abs(a.strides[i])))
    parallel_ranges(a.shape[axis], lambda lo, hi: fn((slice(None),) * axis + (slice(lo, hi),)), 2 * a.size)
