"""Numerical gradient checking: the reason to trust every VJP in this framework.

``gradcheck(fn, inputs)`` runs ``fn`` in float64, back-propagates a fixed random projection
of its output (so a non-scalar output is checked in every direction at once, with one
backward), and compares each analytic input gradient with central differences of the same
projection. ``gradgradcheck(fn, inputs)`` does the same for the second derivatives: it checks
the gradient of ``fn``'s VJP, taken with ``create_graph=True``, with respect to the inputs
and to the incoming gradient. A mismatch raises ``GradcheckError`` naming the input, the
worst element, both values and the error.
"""
from __future__ import annotations

import numpy as np

from .tensor import Tensor, enable_grad, grad, is_grad_enabled, no_grad
from .xp import is_array, is_floating


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


def _outputs(name, out):
    """``fn``'s result as a list of Tensors (``None`` entries dropped), checked for dtype."""
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    for o in outs:
        if o is not None and not isinstance(o, Tensor):
            raise TypeError(f"{name}: fn must return a Tensor (or a tuple of them); got {type(o).__name__}")
        if o is not None and o.dtype != np.float64:
            raise TypeError(f"{name}: fn returned dtype {o.dtype} from float64 inputs; it must compute "
                            "in the inputs' dtype")
    return [o for o in outs if o is not None]


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0):
    """Check the analytic gradient of ``fn(*inputs)`` against central differences.

    ``inputs``: a Tensor or a sequence whose floating Tensors with ``requires_grad=True`` (and
    floating ndarrays) are checked; other items (ints, index arrays, constants) pass through.
    Checked inputs are copied to float64, so ``fn`` must not mix in float32 tensors of its own.
    ``fn`` returns a Tensor or a tuple of Tensors. An element fails when
    |analytic - numeric| > atol + rtol * |numeric|. Returns True or raises ``GradcheckError``.
    """
    return _check("gradcheck", fn, inputs, eps, atol, rtol, seed)


def _check(name, fn, inputs, eps, atol, rtol, seed, labels=None):
    if isinstance(inputs, Tensor) or is_array(inputs):
        inputs = (inputs,)
    prepared, checked = _prepare(list(inputs))
    if not checked:
        raise ValueError(f"{name}: no input to check; pass floating Tensors with requires_grad=True "
                         "(or floating ndarrays)")
    outs = _outputs(name, fn(*prepared))
    rng = np.random.default_rng(seed)
    directions = [rng.standard_normal(o.shape) for o in outs]

    def projected():
        with no_grad():
            return float(sum(np.sum(o.data * d) for o, d in zip(_outputs(name, fn(*prepared)), directions)))

    live = [(o, d) for o, d in zip(outs, directions) if o.requires_grad]
    analytic = {}
    if live:
        found = grad([o for o, _ in live], [prepared[k] for k in checked], [d for _, d in live], allow_unused=True)
        analytic = {k: g for k, g in zip(checked, found) if g is not None}
    for k in checked:
        x = prepared[k]
        a = analytic[k].data if k in analytic else np.zeros(x.shape)
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
        _compare(name, k if labels is None else labels[k], x.shape, a, numeric, atol, rtol)
    return True


def gradgradcheck(fn, inputs, grad_outputs=None, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0):
    """Check the second derivatives of ``fn(*inputs)`` against central differences.

    The function checked is ``fn``'s VJP, ``(inputs, v) -> grad(fn(inputs), inputs, v,
    create_graph=True)``, so both its derivative with respect to the inputs (the Hessian
    part) and with respect to the incoming gradient ``v`` are compared with the numbers, as
    PyTorch's ``gradgradcheck`` does. ``grad_outputs`` is ``v`` (a fixed random one by
    default). Returns True or raises ``GradcheckError`` naming ``input k`` (one of
    ``inputs``) or ``grad_output`` and the element."""
    if isinstance(inputs, Tensor) or is_array(inputs):
        inputs = (inputs,)
    inputs = list(inputs)
    prepared, checked = _prepare(inputs)
    if not checked:
        raise ValueError("gradgradcheck: no input to check; pass floating Tensors with requires_grad=True "
                         "(or floating ndarrays)")
    outs = _outputs("gradgradcheck", fn(*prepared))
    if len(outs) != 1:
        raise TypeError("gradgradcheck: fn must return one Tensor")
    if grad_outputs is None:
        grad_outputs = np.random.default_rng(seed + 1).standard_normal(outs[0].shape)
    v = grad_outputs.data if isinstance(grad_outputs, Tensor) else np.asarray(grad_outputs)
    if v.shape != outs[0].shape:
        raise ValueError(f"gradgradcheck: grad_outputs has shape {v.shape}, expected fn's output shape "
                         f"{outs[0].shape}")

    def vjp(*args):
        xs = list(args[:-1])
        with enable_grad():
            out = fn(*xs)
            if not out.requires_grad:
                return None
            return tuple(grad(out, [xs[k] for k in checked], args[-1], create_graph=is_grad_enabled(),
                              allow_unused=True))

    labels = {k: k for k in range(len(inputs))}
    labels[len(inputs)] = "grad_output"
    return _check("gradgradcheck", vjp, inputs + [np.array(v, dtype=np.float64)], eps, atol, rtol, seed + 2,
                  labels)


def _compare(name, k, shape, analytic, numeric, atol, rtol):
    err = np.abs(analytic - numeric)
    excess = err - (atol + rtol * np.abs(numeric))
    if not np.all(excess <= 0):  # also catches NaN
        excess = np.where(np.isnan(excess), np.inf, excess)
        worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), shape)) if shape else ()
        a, n, e = float(analytic[worst]), float(numeric[worst]), float(err[worst])
        bad = int(np.sum(~(excess <= 0)))
        what = k if isinstance(k, str) else f"input {k}"
        raise GradcheckError(
            f"{name}: {what} (shape {tuple(shape)}) has a wrong gradient at element {worst}: "
            f"analytic {a:.6g}, numeric {n:.6g}, |error| {e:.3g} > tolerance {atol + rtol * abs(n):.3g} "
            f"(atol {atol} + rtol {rtol} * |numeric|); {bad} of {int(np.prod(shape, dtype=int))} elements differ",
            k, worst, a, n, e)
