"""Matrix multiplication: numpy's ``@`` semantics (1-d operands, batched and broadcast stacks)."""
from __future__ import annotations

import numpy as np

from ..kernels.gemm import product
from . import Op, register


def _check_matmul(a, b):
    if a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[0]:
        return  # the common case, checked in one comparison
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


def _mT(t):
    """Swap the last two axes (a matrix's transpose, for every matrix of a stack)."""
    return t.transpose(-1, -2)


@register
class Matmul(Op):
    name = "matmul"
    reads = ("inputs",)

    def forward(self, a, b):
        _check_matmul(a, b)
        return product(a, b)

    def backward(self, g):
        a, b = self.parents
        need_a, need_b = self.needs_input_grad
        if a.ndim == 1 and b.ndim == 1:  # inner product: g is a scalar
            return (g * b if need_a else None), (g * a if need_b else None)
        # 1-d operands act as a row (a) or a column (b); g gets the dropped axis back
        a2 = a.reshape(1, -1) if a.ndim == 1 else a
        b2 = b.reshape(-1, 1) if b.ndim == 1 else b
        g2 = g.reshape(*g.shape[:-1], 1, g.shape[-1]) if a.ndim == 1 else g
        g2 = g2.reshape(*g2.shape, 1) if b.ndim == 1 else g2
        ga = g2 @ _mT(b2) if need_a else None
        gb = _mT(a2) @ g2 if need_b else None
        if ga is not None and a.ndim == 1:
            ga = ga.reshape(*ga.shape[:-2], ga.shape[-1])
        if gb is not None and b.ndim == 1:
            gb = gb.reshape(*gb.shape[:-2], gb.shape[-2])
        return ga, gb  # batch axes are summed back to each input's shape by the engine
