"""Matrix multiplication: numpy's ``@`` semantics (1-d operands, batched and broadcast stacks)."""
from __future__ import annotations

import numpy as np

from ..backend import array_module, empty_matrix
from . import Op, register


def _check_matmul(a, b):
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must be at least 1-d; got shapes {a.shape} and {b.shape}")
    k_a = a.shape[-1]
    k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if k_a != k_b:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} are not aligned: the last axis of the "
                         f"first ({k_a}) must equal the {'only' if b.ndim == 1 else 'second-to-last'} axis "
                         f"of the second ({k_b})")
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"matmul: batch shapes {a.shape[:-2]} and {b.shape[:-2]} (of {a.shape} and "
                         f"{b.shape}) do not broadcast") from None


def _swap(m):
    return m.swapaxes(-1, -2)


def _transposed(m):
    """True for a matrix stored column by column (e.g. ``cols.T``), padded rows or not."""
    return m.ndim == 2 and m.strides[0] == m.itemsize and m.strides[1] != m.itemsize and m.shape[1] > 1


def product(a, b):
    """``a @ b``, arranged for BLAS. A weight gradient such as ``g @ cols.T`` (one operand
    transposed, a long shared axis, a small result) runs 1.3-1.6x faster in OpenBLAS here
    when the longer side of the result is its row side, so a result with more columns than
    rows is computed as ``(b.T @ a.T).T`` (returned as that transposed view)."""
    if (a.ndim == 2 and b.ndim == 2 and _transposed(a) != _transposed(b)
            and a.shape[1] > b.shape[1] > a.shape[0]):
        return _mm(b.T, a.T).T
    return _mm(a, b)


def _mm(a, b):
    """``a @ b`` that lets other threads run meanwhile. numpy's matmul releases the GIL only
    when the result has more than 500 elements, so a small result with a long shared axis
    (a convolution's weight gradient: 16 x 28 numbers, each summed over 256,000 pixels at
    batch 250) would stop every other Python thread for its whole run; ``dot`` releases it
    for 2-d operands whatever their size (after zero-filling its result, which is why
    large results still go to matmul)."""
    if a.ndim == 2 and b.ndim == 2:
        if a.shape[0] * b.shape[1] <= _SMALL_RESULT:
            return a.dot(b)
        if a.dtype == b.dtype:  # a large result: rows laid out for the next GEMM (see empty_matrix)
            xp = array_module(a, b)
            return xp.matmul(a, b, out=empty_matrix(xp, a.shape[0], b.shape[1], a.dtype))
    return a @ b


_SMALL_RESULT = 500  # numpy's matmul keeps the GIL for results of this many elements or fewer


@register
class Matmul(Op):
    name = "matmul"

    def forward(self, a, b):
        _check_matmul(a, b)
        self.save(a, b)
        return product(a, b)

    def backward(self, g):
        a, b = self.saved
        need_a, need_b = self.needs_input_grad
        if a.ndim == 1 and b.ndim == 1:  # inner product: g is a scalar
            return (g * b if need_a else None), (g * a if need_b else None)
        # Treat 1-d operands as a row (a) or a column (b) and restore the dropped axis of g.
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g[..., None, :] if a.ndim == 1 else g
        g2 = g2[..., None] if b.ndim == 1 else g2
        ga = product(g2, _swap(b2)) if need_a else None
        gb = None
        if need_b:
            gb = product(_swap(a2), g2)
            if b.ndim == 1:
                gb = gb[..., 0]
        return ga, gb  # batch axes are summed back to each input's shape by the engine
