"""docs/engine.md's code runs as written. Each ```python block is executed in a namespace
holding what the page's code lives beside in the source (the op classes' module imports, the
test helpers a case uses), with ``register`` and ``case`` recording instead of touching the
real registry; then what a block defines is exercised: the ops it declares compute what the
registered ones do, forward and backward, and its property tests run."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_cnn as tc
import tinygrad_cnn.functional as F
from tinygrad_cnn import Tensor, no_grad, ops
from tinygrad_cnn.kernels import elementwise as kernels
from tinygrad_cnn.kernels.elementwise import in_slices
from tinygrad_cnn.tensor import Op
from tinygrad_cnn.xp import array_module

import strategies as S
import test_ops_gradcheck

DOC = Path(__file__).resolve().parents[1] / "docs" / "engine.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _namespace():
    registered, cases = {}, {}

    def register(cls):
        registered[cls.name] = cls
        return cls

    def case(name):
        def deco(fn):
            cases[name] = fn
            return fn
        return deco

    ns = {"np": np, "tc": tc, "F": F, "Tensor": Tensor, "Op": Op, "ops": ops, "no_grad": no_grad,
          "array_module": array_module, "kernels": kernels, "in_slices": in_slices, "register": register,
          "case": case, "given": given, "st": st, "S": S, "check": test_ops_gradcheck.check}
    return ns, registered, cases


def test_every_block_of_engine_md_runs():
    ns, registered, cases = _namespace()
    blocks = BLOCK.findall(DOC.read_text())
    assert len(blocks) >= 6
    for i, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"engine.md block {i}", "exec"), ns)
        except Exception as e:  # pragma: no cover - the message says which block failed
            raise AssertionError(f"engine.md block {i} failed: {type(e).__name__}: {e}\n{block}") from e

    # the ops the page declares behave as the registered ones, to the second order
    x = Tensor(np.array([-1.5, -0.2, 0.3, 2.0]), requires_grad=True)
    for name, fn in (("tanh", lambda cls, t: cls.apply(t)), ("relu", lambda cls, t: cls.apply(t))):
        cls = registered[name]
        (g_doc,) = tc.grad((fn(cls, x) * x).sum(), [x], create_graph=True)
        (g_real,) = tc.grad((fn(ops.REGISTRY[name], x) * x).sum(), [x], create_graph=True)
        np.testing.assert_allclose(g_doc.data, g_real.data)
        np.testing.assert_allclose(tc.grad(g_doc.sum(), [x])[0].data, tc.grad(g_real.sum(), [x])[0].data)
    assert set(cases) == {"relu", "relu_backward"}
    for fn in cases.values():
        fn()  # the property tests as the page writes them
    predict = ns["predict"]
    model = tc.nn.Linear(3, 2)
    assert predict(model, Tensor(np.ones((4, 3), np.float32))).shape == (4,)
