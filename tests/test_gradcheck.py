"""gradcheck itself: it must pass correct gradients and catch wrong ones, precisely."""
from __future__ import annotations

import numpy as np
import pytest

import tinygrad_cnn.functional as F
from tinygrad_cnn import GradcheckError, Tensor, gradcheck
from tinygrad_cnn.tensor import Op


def _direction(shape, seed=0):
    """The projection gradcheck back-propagates (same generator, same seed)."""
    return np.random.default_rng(seed).standard_normal(shape)


class _SquareWrongVJP(Op):
    """x**2 with a VJP that forgets the factor 2 (not registered: a deliberately broken op)."""

    name = "square_wrong"

    def forward(self, x):
        self.save(x)
        return x * x

    def backward(self, g):
        (x,) = self.saved
        return g * x


# ------------------------------------------------------------------------------ passes


@pytest.mark.parametrize("fn, shapes", [
    (lambda x: (x * x).sum(), [(3, 2)]),                                  # scalar output
    (lambda x: x.tanh() * x, [(2, 3)]),                                   # non-scalar output
    (lambda a, b: a @ b, [(2, 3), (3, 4)]),                               # two inputs
    (lambda x: F.log_softmax(x, axis=0), [(4, 2)]),
    (lambda x: x.sum(axis=1).exp(), [(3, 2)]),
])
def test_passes_on_correct_gradients(fn, shapes):
    rng = np.random.default_rng(0)
    inputs = [Tensor(rng.standard_normal(s), requires_grad=True) for s in shapes]
    assert gradcheck(fn, inputs) is True


def test_accepts_a_single_tensor_or_ndarray():
    x = np.random.default_rng(1).standard_normal((2, 2))
    assert gradcheck(lambda t: t.sigmoid(), Tensor(x, requires_grad=True))
    assert gradcheck(lambda t: t.sigmoid(), x)  # floating ndarrays are checked inputs


def test_passes_non_checked_inputs_through():
    """Integer indices, constant tensors and plain numbers reach fn unchanged."""
    x = Tensor(np.random.default_rng(2).standard_normal((3, 4)), requires_grad=True)
    idx = np.array([2, 0, 2])
    const = Tensor(np.arange(4.0))  # floating, but not requires_grad: a constant
    seen = {}

    def fn(t, i, c, k):
        seen.update(i=i, c=c, k=k)
        return t[i] * c * k

    assert gradcheck(fn, (x, idx, const, 3))
    assert seen["i"] is idx and seen["k"] == 3
    assert seen["c"].dtype == np.float64 and not seen["c"].requires_grad


def test_checks_float32_inputs_in_float64_and_leaves_them_alone():
    data = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    x = Tensor(data.copy(), requires_grad=True)
    dtypes = []

    def fn(t):
        dtypes.append(t.dtype)
        return (t * t).sum()

    assert gradcheck(fn, x)
    assert set(dtypes) == {np.dtype(np.float64)}
    np.testing.assert_array_equal(x.numpy(), data)  # the caller's tensor is not perturbed
    assert x.grad is None                           # nor given a gradient


def test_function_with_a_disconnected_input_has_zero_gradient():
    assert gradcheck(lambda a, b: a * 2.0, (np.ones(3), np.ones(2)))


# ------------------------------------------------------------------------------ failures


def test_fails_when_part_of_the_input_is_detached():
    """d/dx (x * x.detach()) is reported as x, but the true derivative of x**2 is 2x."""
    x = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
    with pytest.raises(GradcheckError, match=r"input 0 .*analytic .*numeric") as info:
        gradcheck(lambda t: t * t.detach(), x)
    err = info.value
    d = _direction(x.shape)
    assert err.input_index == 0
    worst = err.index
    assert isinstance(worst, tuple) and len(worst) == 2
    # analytic = d*x, numeric = d*2x: the worst element is where |d*x| is largest
    assert worst == np.unravel_index(np.argmax(np.abs(d * x)), x.shape)
    assert err.analytic == pytest.approx(d[worst] * x[worst], rel=1e-9)
    assert err.numeric == pytest.approx(2 * d[worst] * x[worst], rel=1e-6)
    assert err.error == pytest.approx(abs(err.analytic - err.numeric))
    assert str(worst) in str(err)


def test_reports_the_single_wrong_element_exactly():
    """Only element (1, 2) has a hidden (detached) dependency: that is the one reported."""
    c = np.zeros((2, 3))
    c[1, 2] = 5.0
    x = np.random.default_rng(4).standard_normal((2, 3))
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda t: t + t.detach() * Tensor(c), x)
    err = info.value
    d = _direction(x.shape)
    assert (err.input_index, err.index) == (0, (1, 2))
    assert err.analytic == pytest.approx(d[1, 2], rel=1e-9)
    assert err.numeric == pytest.approx(6 * d[1, 2], rel=1e-6)
    assert "1 of 6 elements differ" in str(err)


def test_names_the_input_with_the_wrong_gradient():
    a, b = np.full(3, 0.5), np.array([1.0, 2.0, -1.0])
    with pytest.raises(GradcheckError, match="input 1") as info:
        gradcheck(lambda x, y: x * y.detach() * y, (a, b))
    assert info.value.input_index == 1


def test_fails_on_a_wrong_vjp():
    with pytest.raises(GradcheckError, match="analytic"):
        gradcheck(lambda t: _SquareWrongVJP.apply(t), np.array([1.0, -2.0, 3.0]))


def test_fails_on_a_wrong_non_scalar_output():
    """Every output element is checked through the random projection."""
    def fn(t):  # output 1 is right, output 0 hides a dependency on t
        return F.pad(t.detach() * t.detach(), ((0, 1),)) + F.pad(t * t, ((1, 0),))
    with pytest.raises(GradcheckError):
        gradcheck(fn, np.array([1.5]))


def test_fails_when_the_output_is_entirely_detached():
    with pytest.raises(GradcheckError):
        gradcheck(lambda t: t.detach() * 2.0, np.ones(2))


class _NanVJP(Op):
    """The identity, with a VJP that returns NaN."""

    name = "nan_vjp"

    def forward(self, x):
        return x.copy()

    def backward(self, g):
        return g * np.nan


def test_fails_on_nan_gradients():
    with pytest.raises(GradcheckError, match="analytic nan"):
        gradcheck(lambda t: _NanVJP.apply(t), np.ones(2))


def test_tolerances_are_respected():
    """A 1% error passes with rtol=0.05 and fails with the default rtol=1e-3."""
    def fn(t):
        return t * 1.01 - t.detach() * 0.01  # value t; analytic slope 1.01, numeric 1
    x = np.array([1.0, 2.0])
    with pytest.raises(GradcheckError):
        gradcheck(fn, x)
    assert gradcheck(fn, x, rtol=0.05)


# -------------------------------------------------------------------------------- misuse


def test_errors_without_any_checkable_input():
    with pytest.raises(ValueError, match="no input to check"):
        gradcheck(lambda t: t * 2.0, Tensor(np.ones(3)))                  # requires_grad=False
    with pytest.raises(ValueError, match="no input to check"):
        gradcheck(lambda t: t * 2, (np.arange(3),))                       # integer array
    with pytest.raises(ValueError, match="no input to check"):
        gradcheck(lambda k: Tensor(np.ones(1)) * k, (2.0,))              # plain number


def test_errors_when_fn_does_not_return_a_tensor():
    with pytest.raises(TypeError, match="must return a Tensor"):
        gradcheck(lambda t: t.numpy().sum(), np.ones(2))


def test_errors_when_fn_leaves_float64():
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda t: t.float(), np.ones(2))
