"""Higher-order autodiff: ``create_graph``, ``tc.grad``'s PyTorch semantics, the
``tc.autograd`` helpers, and the engine's support for VJPs written as Tensor code
(multi-output nodes, pruning to the wanted inputs)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import tinygrad_cnn as tc
import tinygrad_cnn.functional as F
from tinygrad_cnn import Tensor, ops
from tinygrad_cnn.tensor import Op


def leaf(values, dtype=np.float64):
    return Tensor(np.array(values, dtype=dtype), requires_grad=True)


def test_grad_is_a_tensor_without_history_by_default():
    x = leaf([1.0, 2.0])
    (x * x).sum().backward()
    assert isinstance(x.grad, Tensor) and not x.grad.requires_grad and x.grad._ctx is None
    np.testing.assert_allclose(x.grad, [2.0, 4.0])


def test_create_graph_makes_grad_differentiable():
    x = leaf([1.0, 2.0, 3.0])
    (x ** 3).sum().backward(create_graph=True)
    g = x.grad
    assert g.requires_grad and g._ctx is not None
    np.testing.assert_allclose(g, 3 * x.data ** 2)
    (g2,) = tc.grad(g.sum(), [x])
    np.testing.assert_allclose(g2, 6 * x.data)


def test_create_graph_retains_the_graph_by_default_and_plain_backward_frees_it():
    x = leaf([1.0, 2.0])
    y = (x.exp() * x).sum()
    tc.grad(y, [x], create_graph=True)
    tc.grad(y, [x])  # still there: retain_graph defaulted to create_graph
    with pytest.raises(RuntimeError, match="retain_graph"):
        tc.grad(y, [x])


def test_the_nth_derivative_of_tanh():
    """d^n/dx^n tanh, by repeated grad, against the polynomial recurrence in t = tanh(x):
    P_{n+1}(t) = P_n'(t) * (1 - t^2)."""
    x = leaf(np.linspace(-1.5, 1.5, 7))
    t = np.tanh(x.data)
    poly = np.polynomial.Polynomial([0, 1])  # P_0(t) = t
    y = x.tanh()
    for n in range(1, 6):
        (y,) = tc.grad(y.sum(), [x], create_graph=True)
        poly = poly.deriv() * np.polynomial.Polynomial([1, 0, -1])
        np.testing.assert_allclose(y.data, poly(t), rtol=1e-10, atol=1e-10, err_msg=f"order {n}")


def test_newton_iterations_find_a_minimum():
    x = leaf([2.0])
    f = lambda z: (z ** 4).sum() - 3 * (z ** 2).sum() + z.sum()  # noqa: E731
    for _ in range(20):
        (g,) = tc.grad(f(x), [x], create_graph=True)
        (h,) = tc.grad(g.sum(), [x])
        x = leaf(x.data - g.data / h.data)
    z = float(x.data[0])
    assert abs(4 * z ** 3 - 6 * z + 1) < 1e-10 and 12 * z ** 2 - 6 > 0


def test_grad_semantics_follow_pytorch():
    x, w = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    unused = leaf([5.0])
    y = (x * w).sum()
    with pytest.raises(RuntimeError, match="allow_unused"):
        tc.grad(y, [x, unused], retain_graph=True)
    gx, gu = tc.grad(y, [x, unused], allow_unused=True, retain_graph=True)
    np.testing.assert_allclose(gx, w.data)
    assert gu is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        tc.grad(y, [Tensor(np.ones(2))], retain_graph=True)
    # several outputs, each with its upstream gradient
    a, b = x * 2.0, x * x
    ga, = tc.grad([a, b], [x], grad_outputs=[np.ones(2), np.array([1.0, 0.0])])
    np.testing.assert_allclose(ga, [2.0 + 2.0, 2.0])
    assert x.grad is None and w.grad is None  # grad() writes no .grad


def test_grad_runs_only_the_vjps_on_paths_to_the_inputs():
    """grad(loss, [x]) computes no weight gradient: the matmul's VJP is asked for x's only."""
    seen = []

    class Spy(Op):
        name = "spy"

        def forward(self, a, b):
            return a * b

        def backward(self, g):
            seen.append(self.needs_input_grad)
            a, b = self.parents
            return (g * b if self.needs_input_grad[0] else None), (g * a if self.needs_input_grad[1] else None)

    x, w = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    (gx,) = tc.grad(Spy.apply(x, w).sum(), [x])
    assert seen == [(True, False)]
    np.testing.assert_allclose(gx, [3.0, 4.0])


def test_an_op_with_several_outputs():
    """An op whose forward returns a tuple gives a tuple of tensors; its VJP gets one gradient
    per output, zeros for an output nobody used."""
    class SplitHalves(Op):
        name = "split_halves"

        def forward(self, x):
            n = x.shape[0] // 2
            return x[:n].copy(), x[n:].copy()

        def backward(self, g_lo, g_hi):
            return ops.Pad.apply(g_lo, pad_width=((0, g_hi.shape[0]),)) + \
                ops.Pad.apply(g_hi, pad_width=((g_lo.shape[0], 0),))

    x = leaf([1.0, 2.0, 3.0, 4.0])
    lo, hi = SplitHalves.apply(x)
    assert lo._ctx is hi._ctx
    (lo * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad, [3.0, 3.0, 0.0, 0.0])
    x.grad = None
    lo, hi = SplitHalves.apply(x)
    ((lo * hi) ** 2).sum().backward()
    # d/d lo = 2 (lo hi) hi, d/d hi = 2 (lo hi) lo, with lo = [1, 2], hi = [3, 4]
    np.testing.assert_allclose(x.grad, [18.0, 64.0, 6.0, 32.0])


def test_a_vjp_that_returns_an_array_is_rejected():
    class Dead(Op):
        name = "dead"

        def forward(self, x):
            return x * 2

        def backward(self, g):
            return g.data * 2  # a dead array: second derivatives would be silently wrong

    x = leaf([1.0])
    with pytest.raises(RuntimeError, match="dead: VJP for input 0 returned a ndarray"):
        Dead.apply(x).sum().backward()


# ------------------------------------------------------------------------ tc.autograd


def _quadratic():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4))
    a = a @ a.T
    return a, lambda x: 0.5 * (x @ Tensor(a) @ x) + (x * x * x).sum()


def test_hvp_and_hessian_match_the_closed_form():
    a, f = _quadratic()
    x, v = np.array([0.5, -1.0, 2.0, 0.1]), np.array([1.0, 2.0, -1.0, 0.5])
    h = a + np.diag(6 * x)
    value, hv = tc.autograd.hvp(f, x, v)
    np.testing.assert_allclose(hv, h @ v, rtol=1e-12)
    np.testing.assert_allclose(tc.autograd.hessian(f, x), h, rtol=1e-12)
    np.testing.assert_allclose(tc.autograd.vhp(f, x, v)[1], v @ h, rtol=1e-12)
    assert not value.requires_grad


def test_jacobian_jvp_and_vjp():
    x, v, u = np.array([0.3, -0.7, 1.1]), np.array([1.0, -2.0, 0.5]), np.array([2.0, 1.0])
    f = lambda t: Tensor(np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])) @ t.tanh()  # noqa: E731
    jac = np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]]) * (1 - np.tanh(x) ** 2)
    np.testing.assert_allclose(tc.autograd.jacobian(f, x), jac, rtol=1e-12)
    np.testing.assert_allclose(tc.autograd.jvp(f, x, v)[1], jac @ v, rtol=1e-12)
    np.testing.assert_allclose(tc.autograd.vjp(f, x, u)[1], u @ jac, rtol=1e-12)


def test_hessian_of_several_inputs_has_every_block():
    f = lambda a, b: (a * a * b).sum()  # noqa: E731
    a, b = np.array([1.0, 2.0]), np.array([3.0, -1.0])
    (haa, hab), (hba, hbb) = tc.autograd.hessian(f, (a, b))
    np.testing.assert_allclose(haa, np.diag(2 * b))
    np.testing.assert_allclose(hab, np.diag(2 * a))
    np.testing.assert_allclose(hba, np.diag(2 * a))
    np.testing.assert_allclose(hbb, np.zeros((2, 2)))


def test_helpers_give_differentiable_results_with_create_graph():
    x = leaf([0.2, 0.4])
    _, hv = tc.autograd.hvp(lambda t: (t ** 4).sum(), x, np.ones(2), create_graph=True)
    assert hv.requires_grad
    (third,) = tc.grad(hv.sum(), [x])
    np.testing.assert_allclose(third, 24 * x.data)


def test_helpers_reject_what_they_cannot_use():
    with pytest.raises(ValueError, match="hvp: func must return a one-element Tensor"):
        tc.autograd.hvp(lambda t: t * 2, np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match=r"hvp: v 0 has shape \(3,\); expected \(2,\)"):
        tc.autograd.hvp(lambda t: t.sum(), np.ones(2), np.ones(3))
    with pytest.raises(TypeError, match="jacobian: input 0 must be floating point"):
        tc.autograd.jacobian(lambda t: t, np.arange(3))


def test_hvp_of_a_cnn_loss_matches_finite_differences():
    """H v for a small conv net's loss with respect to its conv weight, against central
    differences of its gradient along v."""
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((2, 2, 6, 6)))
    labels = np.array([0, 2])
    fc = Tensor(rng.standard_normal((3, 12)) * 0.3)

    def loss(w):
        h = F.max_pool2d(F.conv2d(x, w, padding=1).tanh(), 3)
        return F.cross_entropy(h.reshape(2, -1) @ fc.T, labels)

    w = rng.standard_normal((3, 2, 3, 3)) * 0.3
    v = rng.standard_normal(w.shape)
    _, hv = tc.autograd.hvp(loss, w, v)
    eps = 1e-5
    g_plus = tc.autograd.vjp(loss, w + eps * v)[1].data
    g_minus = tc.autograd.vjp(loss, w - eps * v)[1].data
    np.testing.assert_allclose(hv, (g_plus - g_minus) / (2 * eps), rtol=1e-5, atol=1e-8)
    assert math.isfinite(float(np.abs(hv.data).sum()))
