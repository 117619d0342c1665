"""tinygrad_cnn.graph, the one walk over a recorded graph that backward, viz, the benchmark's
saved-bytes count and the tests share: its orders checked against a walk written here."""
from __future__ import annotations

from collections import deque

import numpy as np

from tinygrad_cnn import Tensor
from tinygrad_cnn.graph import nodes, op_names, tensors


def _bfs(root):
    """Tensors in breadth-first order from ``root`` and, per tensor, its node's inputs' indices:
    an independent reference for ``graph.tensors``."""
    order, index, inputs = [root], {id(root): 0}, {}
    queue = deque([root])
    while queue:
        t = queue.popleft()
        ks = []
        for p in (t._ctx.parents if t._ctx is not None else ()):
            if id(p) not in index:
                index[id(p)] = len(order)
                order.append(p)
                queue.append(p)
            ks.append(index[id(p)])
        inputs[id(t)] = tuple(ks)
    return order, [inputs[id(t)] for t in order]


def _diamond():
    a = Tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = Tensor([0.5, -1.0, 2.0], requires_grad=True)
    c = a * b + a           # a reached twice
    d = (c.tanh() - b * b)  # b * b: one tensor on both inputs
    return a, b, c, d.sum()


def test_tensors_is_breadth_first_from_the_root_with_each_nodes_inputs_in_order():
    a, b, c, loss = _diamond()
    order, inputs = tensors(loss)
    want_order, want_inputs = _bfs(loss)
    assert [id(t) for t in order] == [id(t) for t in want_order]
    assert inputs == want_inputs
    assert order[0] is loss and inputs[0] == (1,)
    assert sum(t is a for t in order) == 1 and sum(t is b for t in order) == 1  # each tensor once
    mul_bb = next(i for i, t in enumerate(order) if t._ctx is not None and t._ctx.name == "mul"
                  and t._ctx.parents[0] is b)
    assert inputs[mul_bb][0] == inputs[mul_bb][1]  # the same tensor on both inputs: one index, twice
    assert all(ks == () for t, ks in zip(order, inputs) if t._ctx is None)


def test_tensors_stops_where_follow_says_so():
    a, b, c, loss = _diamond()
    order, inputs = tensors(loss, follow=lambda t: t is not c)
    k = next(i for i, t in enumerate(order) if t is c)
    assert inputs[k] == ()  # c's node is not looked behind
    assert id(c._ctx.parents[0]) not in {id(t) for t in order}  # a * b, behind c only: not reached


def test_nodes_puts_every_node_after_the_nodes_that_made_its_inputs():
    a, b, c, loss = _diamond()
    other = (c * 3.0).exp().sum()  # a second root sharing c's history
    order = nodes([loss, other])
    position = {id(op): i for i, op in enumerate(order)}
    assert len(position) == len(order)  # each node once
    reachable = {id(t._ctx) for root in (loss, other) for t in tensors(root)[0] if t._ctx is not None}
    assert set(position) == reachable
    for op in order:
        for p in op.parents:
            if p._ctx is not None:
                assert position[id(p._ctx)] < position[id(op)], (p._ctx.name, op.name)
    assert order[-1] in (loss._ctx, other._ctx)


def test_nodes_does_not_follow_a_history_that_needs_no_gradient():
    x = Tensor(np.ones(3), requires_grad=True)
    w = Tensor(np.ones(3), requires_grad=True)
    frozen = (w * 2.0).requires_grad_(False)  # recorded, then cut off from gradients
    loss = (x * frozen).sum()
    assert [op.name for op in nodes([loss])] == ["mul", "sum"]
    assert op_names(loss) == {"mul", "sum"}


def test_op_names_lists_every_op_in_the_graph():
    a, b, c, loss = _diamond()
    assert op_names(loss) == {"mul", "add", "tanh", "sub", "sum"}
    assert op_names(a) == set()  # a leaf has no graph


def test_a_twenty_thousand_op_chain_needs_no_recursion():
    x = Tensor(np.ones(2), requires_grad=True)
    y = x
    for _ in range(20_000):
        y = y * 1.0
    order, inputs = tensors(y)
    assert len(order) == 20_001 + 20_000  # each mul's output and its constant 1.0; x last
    assert order[-1] is x or order[-2] is x
    assert len(nodes([y])) == 20_000
