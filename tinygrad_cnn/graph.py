"""The one walk over a recorded graph, shared by backward, viz, the profiler's and the
benchmark's counts and the tests.

A graph is tensors and the ``Op`` nodes that made them: ``t._ctx`` is the node that produced
``t`` (``None`` for a leaf) and ``op.parents`` are its input tensors. Both functions here are
iterative (an explicit stack or queue), so a chain of tens of thousands of ops needs no
recursion.
"""
from __future__ import annotations


def tensors(root, follow=None):
    """Every tensor reachable from ``root``, breadth-first (root first), and for each the
    indices of its node's inputs in that list (``()`` for a leaf). ``follow(tensor)`` (default:
    always) says whether to look behind a tensor's node."""
    order, index, inputs = [root], {id(root): 0}, []
    i = 0
    while i < len(order):
        t = order[i]
        i += 1
        op = t._ctx
        if op is None or (follow is not None and not follow(t)):
            inputs.append(())
            continue
        ks = []
        for p in op.parents:
            k = index.get(id(p))
            if k is None:
                k = index[id(p)] = len(order)
                order.append(p)
            ks.append(k)
        inputs.append(tuple(ks))
    return order, inputs


def nodes(roots):
    """The ``Op`` nodes behind ``roots`` (tensors), every node after all the nodes that
    produced its inputs (a topological order: reversed, it is the order backward runs them).
    Only inputs that require grad are followed: a constant's history needs no gradient."""
    order, seen = [], set()
    stack = [(t._ctx, False) for t in roots if t._ctx is not None]
    while stack:
        op, done = stack.pop()
        if done:
            order.append(op)
            continue
        if id(op) in seen:
            continue
        seen.add(id(op))
        stack.append((op, True))
        for p in op.parents:
            if p._ctx is not None and p.requires_grad and id(p._ctx) not in seen:
                stack.append((p._ctx, False))
    return order


def op_names(root):
    """The names of every op recorded in ``root``'s graph."""
    return {op.name for op in nodes([root])}
