"""Numerical gradient checking: the reason to trust every VJP in this framework.

``gradcheck(fn, inputs)`` runs ``fn`` in float64, back-propagates a fixed random projection
of its output (so a non-scalar output is checked in every direction at once, with one
backward), and compares each analytic input gradient with central differences of the same
projection. A mismatch raises ``GradcheckError`` naming the input, the worst element, both
values and the error.
"""
from __future__ import annotations

import numpy as np

from .backend import is_array, is_floating
from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the numerical one."""

    def __init__(self, message, input_index, index, analytic, numeric, error):
        super().__init__(message)
        self.input_index, self.index = input_index, index
        self.analytic, self.numeric, self.error = analytic, numeric, error


def _prepare(inputs):
    """float64 copies of the differentiable inputs (new leaves); the rest passed through."""
    prepared, checked = [], []
    for k, inp in enumerate(inputs):
        if isinstance(inp, Tensor) and is_floating(inp.dtype):
            prepared.append(Tensor(np.array(inp.data, dtype=np.float64), requires_grad=inp.requires_grad))
            if inp.requires_grad:
                checked.append(k)
        elif is_array(inp) and is_floating(inp.dtype):
            prepared.append(Tensor(np.array(inp, dtype=np.float64), requires_grad=True))
            checked.append(k)
        else:
            prepared.append(inp)
    return prepared, checked


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0):
    """Check the analytic gradient of ``fn(*inputs)`` against central differences.

    ``inputs``: a Tensor or a sequence whose floating Tensors with ``requires_grad=True`` (and
    floating ndarrays) are checked; other items (ints, index arrays, constants) pass through.
    Checked inputs are copied to float64, so ``fn`` must not mix in float32 tensors of its own.
    An element fails when |analytic - numeric| > atol + rtol * |numeric|. Returns True or
    raises ``GradcheckError``.
    """
    if isinstance(inputs, Tensor) or is_array(inputs):
        inputs = (inputs,)
    prepared, checked = _prepare(list(inputs))
    if not checked:
        raise ValueError("gradcheck: no input to check; pass floating Tensors with requires_grad=True "
                         "(or floating ndarrays)")
    out = fn(*prepared)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor; got {type(out).__name__}")
    if out.dtype != np.float64:
        raise TypeError(f"gradcheck: fn returned dtype {out.dtype} from float64 inputs; it must compute "
                        "in the inputs' dtype")
    direction = np.random.default_rng(seed).standard_normal(out.shape)

    def projected():
        with no_grad():
            return float(np.sum(fn(*prepared).data * direction))

    if out.requires_grad:
        out.backward(direction)
    for k in checked:
        x = prepared[k]
        analytic = x.grad if x.grad is not None else np.zeros(x.shape)
        numeric = np.zeros(x.shape)
        flat, num = x.data.reshape(-1), numeric.reshape(-1)  # x.data is our own contiguous copy
        for idx in range(flat.size):
            orig = flat[idx]
            flat[idx] = orig + eps
            plus = projected()
            flat[idx] = orig - eps
            minus = projected()
            flat[idx] = orig
            num[idx] = (plus - minus) / (2 * eps)
        _compare(k, x.shape, analytic, numeric, atol, rtol)
    return True


def _compare(k, shape, analytic, numeric, atol, rtol):
    err = np.abs(analytic - numeric)
    excess = err - (atol + rtol * np.abs(numeric))
    if not np.all(excess <= 0):  # also catches NaN
        excess = np.where(np.isnan(excess), np.inf, excess)
        worst = np.unravel_index(int(np.argmax(excess)), shape) if shape else ()
        a, n, e = float(analytic[worst]), float(numeric[worst]), float(err[worst])
        bad = int(np.sum(~(excess <= 0)))
        raise GradcheckError(
            f"gradcheck: input {k} (shape {tuple(shape)}) has a wrong gradient at element {worst}: "
            f"analytic {a:.6g}, numeric {n:.6g}, |error| {e:.3g} > tolerance {atol + rtol * abs(n):.3g} "
            f"(atol {atol} + rtol {rtol} * |numeric|); {bad} of {int(np.prod(shape, dtype=int))} elements differ",
            k, worst, a, n, e)
