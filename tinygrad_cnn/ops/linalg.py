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


@register
class Matmul(Op):
    """``a @ b`` with numpy's semantics (1-d operands, batched and broadcast stacks).
    ``transpose_a``/``transpose_b`` multiply by the transpose of an operand's last two axes
    instead, as BLAS's flags do: no transposed copy and no transpose node. Every product in
    the VJP has a transposed operand (``g @ b.T``, ``a.T @ g``), so the flags keep each
    gradient one node, and ``linear``'s ``x @ weight.T`` one node too."""

    name = "matmul"
    reads = ("inputs",)

    def forward(self, a, b, transpose_a=False, transpose_b=False):
        if (transpose_a and a.ndim < 2) or (transpose_b and b.ndim < 2):
            raise ValueError(f"matmul: transpose_a/transpose_b need an operand of 2 or more axes; got shapes "
                             f"{a.shape} and {b.shape} with transpose_a={transpose_a}, transpose_b={transpose_b}")
        a = a.swapaxes(-1, -2) if transpose_a else a
        b = b.swapaxes(-1, -2) if transpose_b else b
        _check_matmul(a, b)
        return product(a, b)

    def backward(self, g):
        a, b = self.parents
        need_a, need_b = self.needs_input_grad
        ta, tb = self.params.get("transpose_a", False), self.params.get("transpose_b", False)
        if a.ndim == 1 and b.ndim == 1:  # inner product: g is a scalar
            return (g * b if need_a else None), (g * a if need_b else None)
        # 1-d operands act as a row (a) or a column (b); g gets the dropped axis back
        a2 = a.reshape(1, -1) if a.ndim == 1 else a
        b2 = b.reshape(-1, 1) if b.ndim == 1 else b
        g2 = g.reshape(*g.shape[:-1], 1, g.shape[-1]) if a.ndim == 1 else g
        g2 = g2.reshape(*g2.shape, 1) if b.ndim == 1 else g2
        # C = A' @ B' with A' = A or A.T, B' = B or B.T: dA' = g @ B'.T and dB' = A'.T @ g,
        # transposed back where the operand was
        ga = gb = None
        if need_a:
            ga = _matmul(b2, g2, tb, True) if ta else _matmul(g2, b2, False, not tb)
            ga = ga.reshape(*ga.shape[:-2], ga.shape[-1]) if a.ndim == 1 else ga
        if need_b:
            gb = _matmul(g2, a2, True, ta) if tb else _matmul(a2, g2, not ta, False)
            gb = gb.reshape(*gb.shape[:-2], gb.shape[-2]) if b.ndim == 1 else gb
        return ga, gb  # batch axes are summed back to each input's shape by the engine

    def label(self):
        return "".join(f" {k[-1]}ᵀ" for k in ("transpose_a", "transpose_b") if self.params.get(k)).strip()


def _matmul(a, b, transpose_a, transpose_b):
    return Matmul.apply(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
