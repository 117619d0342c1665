"""Derivatives of functions, built on ``grad(..., create_graph=True)``: vector-Jacobian and
Jacobian-vector products, Hessian-vector products, and dense Jacobians and Hessians for small
inputs (the names and conventions of ``torch.autograd.functional``).

Each helper takes ``func`` (Tensors in, a Tensor out) and ``inputs`` (a Tensor or an ndarray,
or a tuple of them). Inputs are used as new leaves that require grad, so the caller's tensors
are never written. Results follow the input: a tuple of inputs gives a tuple of results. With
``create_graph=True`` the results carry a graph (differentiable again); otherwise they are
plain Tensors.

    import tinygrad_cnn as tc
    loss = lambda w: ((x @ w - y) ** 2).mean()
    _, hv = tc.autograd.hvp(loss, w, v)       # H(w) @ v, at the cost of about two gradients
    H = tc.autograd.hessian(loss, w)          # dense: one Hessian-vector product per element
"""
from __future__ import annotations

import numpy as np

from .tensor import Tensor, enable_grad, grad
from .xp import array_module, is_array, is_floating

__all__ = ["grad", "vjp", "jvp", "hvp", "vhp", "jacobian", "hessian"]


def _as_leaves(name, inputs, create_graph):
    """(leaves, was_tuple): each input as a float leaf that requires grad. With
    ``create_graph`` a leaf that already requires grad is used as it is, so the result stays
    connected to the caller's graph; otherwise it is detached."""
    single = not isinstance(inputs, (tuple, list))
    items = [inputs] if single else list(inputs)
    leaves = []
    for i, x in enumerate(items):
        if isinstance(x, Tensor):
            if not is_floating(x.dtype):
                raise TypeError(f"{name}: input {i} must be floating point; got dtype {x.dtype}")
            leaves.append(x if create_graph and x.requires_grad else Tensor(x.data, requires_grad=True))
        elif is_array(x) or isinstance(x, (float, int, list)):
            arr = np.asarray(x) if not is_array(x) else x
            if not is_floating(arr.dtype):
                raise TypeError(f"{name}: input {i} must be floating point; got dtype {arr.dtype}")
            leaves.append(Tensor(arr, requires_grad=True))
        else:
            raise TypeError(f"{name}: inputs must be Tensors or arrays; input {i} is a {type(x).__name__}")
    return leaves, single


def _as_vectors(name, v, like, what):
    """``v`` (matching ``like``: a Tensor/array or a tuple of them) as Tensors of those shapes."""
    items = [v] if not isinstance(v, (tuple, list)) else list(v)
    if len(items) != len(like):
        raise ValueError(f"{name}: {what} needs {len(like)} tensors; got {len(items)}")
    out = []
    for i, (a, t) in enumerate(zip(items, like)):
        a = a if isinstance(a, Tensor) else Tensor(array_module(t.data).asarray(a, dtype=t.dtype))
        if a.shape != t.shape:
            raise ValueError(f"{name}: {what} {i} has shape {a.shape}; expected {t.shape}")
        out.append(a if a.dtype == t.dtype else a.astype(t.dtype))
    return out


def _call(name, func, leaves):
    with enable_grad():
        out = func(*leaves)
    if not isinstance(out, Tensor):
        raise TypeError(f"{name}: func must return a Tensor; got {type(out).__name__}")
    return out


def _zeros_for(grads, leaves):
    return [g if g is not None else Tensor(array_module(t.data).zeros(t.shape, dtype=t.dtype))
            for g, t in zip(grads, leaves)]


def _result(items, single):
    return items[0] if single else tuple(items)


def _plain(t, create_graph):
    return t if create_graph else t.detach()


def vjp(func, inputs, v=None, create_graph=False):
    """``(func(inputs), v^T J)``: the vector-Jacobian product of ``func`` at ``inputs``
    (``v`` may be omitted for a one-element output)."""
    leaves, single = _as_leaves("vjp", inputs, create_graph)
    out = _call("vjp", func, leaves)
    if v is not None:
        (v,) = _as_vectors("vjp", v, [out], "v")
    if not out.requires_grad:
        return _plain(out, create_graph), _result(_zeros_for([None] * len(leaves), leaves), single)
    gs = grad(out, leaves, v, create_graph=create_graph, allow_unused=True)
    return _plain(out, create_graph), _result(_zeros_for(gs, leaves), single)


def jvp(func, inputs, v, create_graph=False):
    """``(func(inputs), J v)``: the Jacobian-vector product, by the double-vjp trick: ``u -> J^T
    u`` is linear in ``u``, so differentiating ``<J^T u, v>`` with respect to ``u`` gives ``J v``."""
    leaves, single = _as_leaves("jvp", inputs, create_graph)
    vs = _as_vectors("jvp", v, leaves, "v")
    out = _call("jvp", func, leaves)
    if not out.requires_grad:
        return _plain(out, create_graph), Tensor(array_module(out.data).zeros(out.shape, dtype=out.dtype))
    u = Tensor(array_module(out.data).zeros(out.shape, dtype=out.dtype), requires_grad=True)
    with enable_grad():
        gs = grad(out, leaves, u, create_graph=True, allow_unused=True)
        inner = _sum_of([(g * w).sum() for g, w in zip(gs, vs) if g is not None and g.requires_grad])
    if inner is None:
        return _plain(out, create_graph), Tensor(array_module(out.data).zeros(out.shape, dtype=out.dtype))
    (jv,) = grad(inner, [u], create_graph=create_graph, allow_unused=True)
    jv = jv if jv is not None else Tensor(array_module(out.data).zeros(out.shape, dtype=out.dtype))
    return _plain(out, create_graph), jv


def _sum_of(terms):
    """The sum of scalar Tensors (None for none), recorded when grad mode is on."""
    total = None
    for t in terms:
        total = t if total is None else total + t
    return total


def _scalar(name, out):
    if out.numel() != 1:
        raise ValueError(f"{name}: func must return a one-element Tensor (a loss); got shape {out.shape}")


def hvp(func, inputs, v, create_graph=False):
    """``(func(inputs), H v)``: the Hessian of a scalar ``func`` times ``v``, by
    differentiating ``<grad func, v>`` once more (about the cost of two gradients)."""
    leaves, single = _as_leaves("hvp", inputs, create_graph)
    vs = _as_vectors("hvp", v, leaves, "v")
    out = _call("hvp", func, leaves)
    _scalar("hvp", out)
    if not out.requires_grad:
        return _plain(out, create_graph), _result(_zeros_for([None] * len(leaves), leaves), single)
    with enable_grad():
        gs = grad(out, leaves, create_graph=True, allow_unused=True)
        inner = _sum_of([(g * w).sum() for g, w in zip(gs, vs) if g is not None and g.requires_grad])
    if inner is None:
        return _plain(out, create_graph), _result(_zeros_for([None] * len(leaves), leaves), single)
    hv = grad(inner, leaves, create_graph=create_graph, allow_unused=True)
    return _plain(out, create_graph), _result(_zeros_for(hv, leaves), single)


def vhp(func, inputs, v, create_graph=False):
    """``(func(inputs), v^T H)``; the Hessian is symmetric, so this equals ``hvp``."""
    return hvp(func, inputs, v, create_graph)


def jacobian(func, inputs, create_graph=False):
    """The dense Jacobian of ``func`` at ``inputs``: shape ``out.shape + input.shape`` (a tuple
    of those for several inputs), one vector-Jacobian product per output element, so for
    small outputs only."""
    leaves, single = _as_leaves("jacobian", inputs, create_graph)
    out = _call("jacobian", func, leaves)
    return _result(_jacobian_of(out, leaves, create_graph), single)


def _jacobian_of(out, leaves, create_graph):
    """The blocks d out / d leaf, one vector-Jacobian product per element of ``out``."""
    xp = array_module(out.data)
    rows = [[] for _ in leaves]
    for k in range(out.numel()):
        e = xp.zeros(out.numel(), dtype=out.dtype)
        e[k] = 1
        gs = [None] * len(leaves)
        if out.requires_grad:
            gs = grad(out, leaves, e.reshape(out.shape), retain_graph=True, create_graph=create_graph,
                      allow_unused=True)
        for r, g in zip(rows, _zeros_for(gs, leaves)):
            r.append(g)
    return [_stack(r, out.shape, t.shape, create_graph) for r, t in zip(rows, leaves)]


def _stack(parts, out_shape, in_shape, create_graph):
    if not parts:
        return Tensor(np.zeros(tuple(out_shape) + tuple(in_shape)))
    if create_graph:
        from . import ops
        flat = [p.reshape(1, -1) for p in parts]
        n = len(flat)
        # place row k with a pad and add: made of primitives, so the Jacobian stays differentiable
        total = ops.Pad.apply(flat[0], pad_width=((0, n - 1), (0, 0)))
        for k, f in enumerate(flat[1:], start=1):
            total = total + ops.Pad.apply(f, pad_width=((k, n - 1 - k), (0, 0)))
        return total.reshape(*out_shape, *in_shape)
    xp = array_module(parts[0].data)
    return Tensor(xp.stack([p.data for p in parts]).reshape(tuple(out_shape) + tuple(in_shape)))


def hessian(func, inputs, create_graph=False):
    """The dense Hessian of a scalar ``func``: shape ``input.shape * 2`` for one input, a tuple
    of tuples of blocks ``H[i][j]`` (shape ``inputs[i].shape + inputs[j].shape``) for several.
    One Hessian-vector product per input element: for small inputs only."""
    leaves, single = _as_leaves("hessian", inputs, create_graph)
    out = _call("hessian", func, leaves)
    _scalar("hessian", out)
    if not out.requires_grad:
        blocks = [[Tensor(np.zeros(a.shape + b.shape, dtype=a.dtype)) for b in leaves] for a in leaves]
        return blocks[0][0] if single else tuple(tuple(r) for r in blocks)
    with enable_grad():
        gs = _zeros_for(grad(out, leaves, create_graph=True, allow_unused=True), leaves)
    blocks = [_jacobian_of(g, leaves, create_graph) for g in gs]  # the Jacobian of the gradient
    return blocks[0][0] if single else tuple(tuple(r) for r in blocks)
    with enable_grad():
        gs = _zeros_for(grad(out, leaves, create_graph=True, allow_unused=True), leaves)
    blocks = []
    for i, g in enumerate(gs):
        rows = [[] for _ in leaves]
        for k in range(g.numel()):
            e = array_module(g.data).zeros(g.numel(), dtype=g.dtype)
            e[k] = 1
            if g.requires_grad:
                hs = grad(g, leaves, e.reshape(g.shape), retain_graph=True, create_graph=create_graph,
                          allow_unused=True)
            else:
                hs = [None] * len(leaves)
            for r, h in zip(rows, _zeros_for(hs, leaves)):
                r.append(h)
        blocks.append([_stack(r, g.shape, t.shape, create_graph) for r, t in zip(rows, leaves)])
    return blocks[0][0] if single else tuple(tuple(r) for r in blocks)
