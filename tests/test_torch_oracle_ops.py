"""PyTorch as the oracle for the elementwise ops, reductions, shape functions and losses of
issue 15: forward values and gradients in float64, on small odd shapes (0-d and batch 1
included), with the inputs each op is most likely to get wrong: its kinks (exactly 0, -3, 6,
the softplus threshold), ties, huge values. Skipped cleanly when torch is not installed."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

torch = pytest.importorskip("torch")
TF = torch.nn.functional

import tinygrad_cnn as tc  # noqa: E402
import tinygrad_cnn.functional as F  # noqa: E402
from tinygrad_cnn import Tensor  # noqa: E402

import strategies as S  # noqa: E402

RTOL, ATOL = 1e-10, 1e-12
F64 = np.float64

# values where piecewise ops change formula, plus ordinary ones
KINKS = [-6.0, -3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0, 6.0, 20.0, 21.0]


def values(shape, lo=-7.0, hi=7.0, kinks=KINKS):
    finite = st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=64)
    return hnp.arrays(F64, shape, elements=st.one_of(finite, st.sampled_from(kinks)) if kinks else finite)


def _np(x):
    if isinstance(x, torch.Tensor):
        return x.detach().numpy()
    return np.asarray(x)


def _close(ours, theirs, rtol=RTOL, atol=ATOL):
    ours, theirs = _np(ours), _np(theirs)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol)


def check(ours_fn, theirs_fn, *arrays, seed=0, rtol=RTOL, atol=ATOL):
    """Same values, and the same gradients for every input under one random upstream gradient."""
    ours_in = [Tensor(np.array(a, dtype=F64), requires_grad=True) for a in arrays]
    theirs_in = [torch.tensor(np.array(a, dtype=F64), requires_grad=True) for a in arrays]
    ours, theirs = ours_fn(*ours_in), theirs_fn(*theirs_in)
    _close(ours, theirs, rtol, atol)
    g = np.random.default_rng(seed).standard_normal(ours.shape)
    ours.backward(g)
    theirs.backward(torch.tensor(g))
    for o, t in zip(ours_in, theirs_in):
        if t.grad is None:
            assert o.grad is None or not np.any(_np(o.grad)), "torch gives no gradient here"
        else:
            assert o.grad is not None, "torch gives a gradient here, we none"
            _close(o.grad, t.grad, rtol, atol)
    return ours


# --------------------------------------------------------------------------------- elementwise

ELEMENTWISE = {
    # name: (ours, theirs, value strategy)
    "abs": (lambda x: x.abs(), torch.abs, values),
    "sqrt": (lambda x: x.sqrt(), torch.sqrt, lambda s: values(s, 0.05, 9.0, [0.25, 1.0, 4.0])),
    "rsqrt": (lambda x: x.rsqrt(), torch.rsqrt, lambda s: values(s, 0.05, 9.0, [0.25, 1.0, 4.0])),
    "erf": (lambda x: x.erf(), torch.erf, values),
    "log1p": (lambda x: x.log1p(), torch.log1p, lambda s: values(s, -0.9, 5.0, [0.0, 1e-12, -1e-12])),
    "expm1": (lambda x: x.expm1(), torch.expm1, lambda s: values(s, -5.0, 5.0, [0.0, 1e-12, -1e-12])),
    "leaky_relu": (F.leaky_relu, TF.leaky_relu, values),
    "leaky_relu_0.2": (lambda x: F.leaky_relu(x, 0.2), lambda x: TF.leaky_relu(x, 0.2), values),
    "elu": (F.elu, TF.elu, values),
    "elu_alpha": (lambda x: F.elu(x, 0.7), lambda x: TF.elu(x, 0.7), values),
    # alpha a power of two: PyTorch's CELU gradient rounds 1/alpha to float32 (1.3 would be off by 4e-8)
    "celu": (lambda x: F.celu(x, 2.0), lambda x: TF.celu(x, 2.0), values),
    "selu": (F.selu, TF.selu, values),
    "gelu": (F.gelu, TF.gelu, values),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), lambda x: TF.gelu(x, approximate="tanh"), values),
    "silu": (F.silu, TF.silu, values),
    "softplus": (F.softplus, TF.softplus, values),
    "softplus_beta": (lambda x: F.softplus(x, beta=2.0, threshold=5.0),
                      lambda x: TF.softplus(x, beta=2.0, threshold=5.0), values),
    "logsigmoid": (F.logsigmoid, TF.logsigmoid, values),
    "relu6": (F.relu6, TF.relu6, values),
    "hardtanh": (F.hardtanh, TF.hardtanh, values),
    "hardtanh_range": (lambda x: F.hardtanh(x, -3.0, 0.5), lambda x: TF.hardtanh(x, -3.0, 0.5), values),
    "hardsigmoid": (F.hardsigmoid, TF.hardsigmoid, values),
    "hardswish": (F.hardswish, TF.hardswish, values),
    "mish": (F.mish, TF.mish, values),
    "sigmoid": (F.sigmoid, torch.sigmoid, values),
    "tanh": (F.tanh, torch.tanh, values),
    "clamp_scalars": (lambda x: x.clamp(-1.0, 3.0), lambda x: x.clamp(-1.0, 3.0), values),
    "clamp_min": (lambda x: x.clamp(min=0.5), lambda x: x.clamp(min=0.5), values),
    "clamp_max": (lambda x: x.clip(max=-0.5), lambda x: x.clip(max=-0.5), values),
    "clamp_crossed": (lambda x: x.clamp(3.0, -1.0), lambda x: x.clamp(3.0, -1.0), values),
    "pow_number": (lambda x: x.pow(3), lambda x: x.pow(3), values),
}


# PyTorch's float64 hardsigmoid gradient multiplies by the float32 constant 1.0f / 6.0f (ours is
# exactly 1/6): agreement to float32 rounding is all there is to check
RTOLS = {"hardsigmoid": 1e-7}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
@given(data=st.data())
def test_elementwise(name, data):
    ours, theirs, strategy = ELEMENTWISE[name]
    x = data.draw(S.shapes(max_side=4).flatmap(strategy))
    check(ours, theirs, x, rtol=RTOLS.get(name, RTOL))


@pytest.mark.parametrize("name", ["elu", "celu", "selu", "gelu", "gelu_tanh", "silu", "softplus", "softplus_beta",
                                  "logsigmoid", "mish", "sigmoid", "tanh", "hardswish", "erf", "expm1"])
def test_elementwise_far_from_zero_stays_finite(name):
    """No overflow into inf or NaN, in values or gradients, for inputs of +-1000 (the side a
    piecewise formula does not choose never sees them)."""
    ours, theirs, _ = ELEMENTWISE[name]
    x = np.array([-1000.0, -60.0, -30.0, 30.0, 60.0, 1000.0]) if name != "expm1" else np.array([-1000.0, -60.0, 30.0])
    out = check(ours, theirs, x)
    assert np.isfinite(out.data).all()


def test_gelu_rejects_an_unknown_approximation():
    with pytest.raises(ValueError, match="gelu: approximate must be 'none' or 'tanh'; got 'erf'"):
        F.gelu(Tensor(np.zeros(2)), approximate="erf")


@st.composite
def tensor_pairs(draw, b_values=values):
    a_shape, b_shape = draw(S.broadcastable_pairs(max_side=4))
    return draw(values(a_shape)), draw(b_values(b_shape))


@given(tensor_pairs(b_values=lambda s: values(s, -3.0, 3.0, [0.0, 1.0, 2.0])))
@example((np.array([0.0, 0.0, 0.0, 2.0, 2.0]), np.array([0.0, 1.0, 0.5, 0.0, -1.0])))  # zero bases, zero exponents
def test_pow_with_a_tensor_exponent_on_positive_bases(ab):
    a, b = ab
    a = np.abs(a) + (a == 0) * 0.0  # non-negative bases (zeros kept): real powers, finite logs
    check(lambda x, y: x ** y, lambda x, y: x ** y, a, b)


def test_pow_with_a_tensor_exponent_on_negative_bases_and_integer_exponents():
    """(-2) ** 3 = -8 as numpy and PyTorch (exp(y log x) would give NaN); the exponent's
    gradient is NaN there in both, the base's is exact."""
    a, b = np.array([-2.0, -1.5, -3.0, 0.0]), np.array([3.0, 2.0, -1.0, 3.0])
    check(lambda x, y: x ** y, lambda x, y: x ** y, a, b)
    out = Tensor(np.array([-2.0])) ** np.array([3])  # an integer array exponent
    assert out.dtype == F64 and out.item() == -8.0


@given(tensor_pairs(b_values=lambda s: values(s, -7.0, 7.0, KINKS)))
@example((np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])))  # all tied: half each
def test_minimum_and_maximum_share_ties_as_torch(ab):
    check(lambda x, y: x.minimum(y), torch.minimum, *ab)
    check(lambda x, y: x.maximum(y), torch.maximum, *ab)


@given(st.data())
def test_clamp_with_tensor_bounds(data):
    shape = data.draw(S.shapes(min_dims=1, max_side=4))
    small = lambda s: values(s, -3.0, 3.0, [-1.0, 0.0, 1.0])  # noqa: E731  (many ties, crossed bounds)
    x, lo, hi = (data.draw(small(shape)) for _ in range(3))
    check(lambda a, b, c: a.clamp(b, c), lambda a, b, c: a.clamp(b, c), x, lo, hi)
    check(lambda a, b: a.clamp(min=b), lambda a, b: a.clamp(min=b), x, lo)
    check(lambda a, c: a.clamp(max=c), lambda a, c: a.clamp(max=c), x, hi)
    # a number for one bound, a tensor for the other; and a broadcast bound
    check(lambda a, c: a.clamp(-0.5, c), lambda a, c: a.clamp(torch.tensor(-0.5, dtype=torch.float64), c), x, hi)
    check(lambda a, c: a.clamp(max=c), lambda a, c: a.clamp(max=c), x, hi[..., :1])


def test_clamp_needs_a_bound_and_matching_dtypes():
    x = Tensor(np.zeros(3))
    with pytest.raises(ValueError, match="clamp: pass min, max or both"):
        x.clamp()
    with pytest.raises(TypeError, match="clamp: min has dtype float32 but the input float64"):
        x.clamp(Tensor(np.zeros(3, np.float32)))


@given(st.data())
def test_where(data):
    shape_c, shape_a, shape_b = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=3)
                                          .map(lambda s: s.input_shapes))
    cond = data.draw(hnp.arrays(bool, shape_c))
    a, b = data.draw(values(shape_a)), data.draw(values(shape_b))
    check(lambda x, y: F.where(cond, x, y), lambda x, y: torch.where(torch.tensor(cond), x, y), a, b)
    check(lambda x: tc.where(Tensor(cond), x, 0.5), lambda x: torch.where(torch.tensor(cond), x, 0.5), a)
    check(lambda x, y: x.where(cond, y), lambda x, y: x.where(torch.tensor(cond), y), a, b)


def test_where_passes_no_nan_from_the_branch_not_taken():
    """An infinity where the other operand is chosen stays out of the value and the gradients
    (a * c + b * (1 - c) would give NaN on both counts)."""
    a = Tensor(np.array([np.inf, 1.0]), requires_grad=True)
    b = Tensor(np.array([2.0, -np.inf]), requires_grad=True)
    out = F.where(np.array([False, True]), a, b)
    out.backward(np.array([3.0, 5.0]))
    np.testing.assert_array_equal(out.data, [2.0, 1.0])
    np.testing.assert_array_equal(a.grad, [0.0, 5.0])
    np.testing.assert_array_equal(b.grad, [3.0, 0.0])


def test_where_needs_a_bool_condition():
    with pytest.raises(TypeError, match="where: the condition must be a bool tensor or array"):
        F.where(np.array([1, 0]), Tensor(np.zeros(2)), 0.0)


# ------------------------------------------------------------------------------ reductions


@st.composite
def array_and_dim(draw, elements=values, min_dims=0, tuple_dims=True):
    shape = draw(S.shapes(min_dims=min_dims, max_side=4))
    x = draw(elements(shape))
    nd = len(shape)
    choices = [st.none()]
    if nd:
        choices.append(st.integers(-nd, nd - 1))
        if tuple_dims:
            choices.append(st.lists(st.integers(0, nd - 1), unique=True, min_size=1, max_size=nd).map(tuple))
    else:
        choices.append(st.sampled_from([0, -1]))  # a 0-d tensor's only axis, as PyTorch allows
    return x, draw(st.one_of(*choices)), draw(st.booleans())


def _torch_dims(dim, x):
    return tuple(range(x.ndim)) if dim is None else dim


def ties(shape):
    return hnp.arrays(F64, shape, elements=st.sampled_from([-1.0, 0.0, 2.0]))


def nans(shape):
    return hnp.arrays(F64, shape, elements=st.sampled_from([-1.0, 2.0, np.nan]))


@given(array_and_dim(elements=lambda s: st.one_of(values(s), ties(s))))
def test_min_and_max_over_axis_as_torch_amin_amax(case):
    """numpy's axis= (one axis, several, or None): the values; tied extremes share the gradient
    equally (amin/amax). keepdims or PyTorch's keepdim alike."""
    x, axis, keep = case
    if x.size == 0:
        return
    check(lambda t: t.min(axis=axis, keepdims=keep), lambda t: t.amin(dim=_torch_dims(axis, t), keepdim=keep), x)
    check(lambda t: t.max(axis=axis, keepdim=keep), lambda t: t.amax(dim=_torch_dims(axis, t), keepdim=keep), x)
    if axis is None and not keep:
        check(lambda t: t.max(), lambda t: t.max(), x)
        check(lambda t: t.min(), lambda t: t.min(), x)
    # PyTorch's own names for the same: amax/amin with dim (and the tuple form), as torch's
    dim = list(axis) if isinstance(axis, tuple) else axis
    check(lambda t: t.amax(dim, keep), lambda t: t.amax(dim=_torch_dims(axis, t), keepdim=keep), x)
    check(lambda t: t.amin(dim=dim, keepdim=keep), lambda t: t.amin(dim=_torch_dims(axis, t), keepdim=keep), x)


@given(array_and_dim(elements=lambda s: st.one_of(values(s), ties(s), nans(s)), tuple_dims=False)
       .filter(lambda c: c[1] is not None and c[0].size > 0))
def test_min_and_max_with_dim_return_values_and_indices_as_torch(case):
    """PyTorch's max(dim)/min(dim): a (values, indices) named tuple; the index the first
    extreme's (the first NaN's where there is one), the gradient to that element alone, as
    torch's. Positional (``x.max(1)``, ``x.max(1, True)``) or by keyword (``dim=``)."""
    x, dim, keep = case
    for name in ("max", "min"):
        ours_in, theirs_in = Tensor(x.copy(), requires_grad=True), torch.tensor(x, requires_grad=True)
        for ours, theirs in ((getattr(ours_in, name)(dim, keep), getattr(theirs_in, name)(dim, keep)),
                             (getattr(Tensor(x), name)(dim=dim, keepdim=keep), getattr(torch, name)(
                                 torch.tensor(x), dim=dim, keepdim=keep))):
            assert type(ours).__name__ == name and ours._fields == ("values", "indices")
            values, indices = ours  # unpacks as PyTorch's
            assert indices is ours[1] is ours.indices and values is ours[0] is ours.values
            assert indices.dtype == np.int64 and not indices.requires_grad
            np.testing.assert_array_equal(indices.data, theirs.indices.numpy())
            _close(values, theirs.values, 0, 0)  # picked, not computed: equal (NaN included)
        g = np.random.default_rng(0).standard_normal(ours_in.shape[:0] + tuple(theirs_in.detach().numpy()
                                                    .max(axis=dim, keepdims=keep).shape))
        getattr(ours_in, name)(dim, keep)[0].backward(g)
        getattr(theirs_in, name)(dim, keep)[0].backward(torch.tensor(g))
        _close(ours_in.grad, theirs_in.grad, 0, 0)


def test_max_with_dim_ported_from_pytorch():
    """The bug this fixes: ``x.max(1)[0]`` used to be the values' first row, silently."""
    x = np.array([[1.0, 5.0, 2.0], [7.0, 0.0, 7.0]])
    t = Tensor(x, requires_grad=True)
    assert t.max(1)[0].data.tolist() == [5.0, 7.0] and t.max(1)[1].data.tolist() == [1, 0]
    values, idx = t.min(dim=1)
    assert values.data.tolist() == [1.0, 0.0] and idx.data.tolist() == [0, 1]
    assert repr(t.max(1)).startswith("max(values=Tensor(") and "indices=Tensor(" in repr(t.max(1))
    t.max(1)[0].sum().backward()  # the values carry the gradient: to the first 7.0 only, as PyTorch's
    assert t.grad.data.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    tt = torch.tensor(x, requires_grad=True)
    tt.max(1)[0].sum().backward()
    np.testing.assert_array_equal(t.grad.data, tt.grad.numpy())
    # numpy's spelling keeps returning the values (ties share the gradient, as amax)
    assert t.max(axis=1).data.tolist() == [5.0, 7.0] and t.max().item() == 7.0
    # a tensor argument: the elementwise extreme, as torch.max(x, y)
    other = Tensor(np.full((2, 3), 4.0))
    assert t.max(other).data.tolist() == [[4.0, 5.0, 4.0], [7.0, 4.0, 7.0]]
    assert t.min(other).data.tolist() == [[1.0, 4.0, 2.0], [4.0, 0.0, 4.0]]


def test_max_with_dim_differentiates_twice_and_keeps_batch_shapes():
    x = np.random.default_rng(3).standard_normal((3, 4, 2))
    t = Tensor(x, requires_grad=True)
    v = t.max(dim=-2, keepdim=True).values
    assert v.shape == (3, 1, 2)
    (gx,) = tc.grad((v * v).sum(), [t], create_graph=True)
    (ggx,) = tc.grad(gx.sum(), [t])
    tt = torch.tensor(x, requires_grad=True)
    tv = tt.max(dim=-2, keepdim=True).values
    (tgx,) = torch.autograd.grad((tv * tv).sum(), [tt], create_graph=True)
    (tggx,) = torch.autograd.grad(tgx.sum(), [tt])
    _close(gx, tgx)
    _close(ggx, tggx)
    empty = Tensor(np.zeros((0, 3)))
    assert empty.max(1).values.shape == (0,) and empty.min(1).indices.shape == (0,)  # as PyTorch


@pytest.mark.parametrize("call, error, message", [
    (lambda t: t.max(dim=(0, 1)), TypeError, r"max: dim=\(0, 1\): PyTorch's max\(dim\) takes one axis .* "
     r"pass axis=\(0, 1\)"),
    (lambda t: t.min((0, 1)), TypeError, r"min: dim=\(0, 1\).*axis=\(0, 1\)"),
    (lambda t: t.max(1, axis=0), TypeError, "max: pass dim .* or axis .*, not both"),
    (lambda t: t.max(2), ValueError, "max: axis 2 is out of range for 2 axes"),
    (lambda t: t.min(dim=1.5), TypeError, "min: the axis must be an int; got 1.5"),
    (lambda t: t.max(Tensor(np.zeros((2, 3))), axis=0), TypeError, "max: with a tensor argument"),
    (lambda t: Tensor(np.zeros((2, 0))).max(1), ValueError, r"max: axis 1 of a tensor of shape \(2, 0\) is empty"),
    (lambda t: Tensor(np.zeros((2, 0))).min(), ValueError, r"min: cannot reduce an empty tensor of shape \(2, 0\)"),
])
def test_max_and_min_errors_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call(Tensor(np.ones((2, 3))))


@given(array_and_dim(elements=lambda s: st.one_of(values(s), ties(s)), tuple_dims=False))
def test_argmax_argmin(case):
    """Indices (the first on ties), int64, no graph; dim=None is the flattened tensor."""
    x, dim, keepdim = case
    xt = torch.tensor(x)
    for ours, theirs in ((Tensor(x, requires_grad=True).argmax(dim=dim, keepdim=keepdim),
                          torch.argmax(xt, dim=dim, keepdim=keepdim)),
                         (Tensor(x).argmin(dim, keepdim), torch.argmin(xt, dim=dim, keepdim=keepdim))):
        assert ours.dtype == np.int64 and not ours.requires_grad
        np.testing.assert_array_equal(ours.data, theirs.numpy())
        assert ours.shape == tuple(theirs.shape)


def test_arg_reductions_of_an_empty_tensor_raise():
    with pytest.raises(ValueError, match=r"argmax: an empty tensor \(shape \(0, 3\)\) has no maximum"):
        Tensor(np.zeros((0, 3))).argmax()
    with pytest.raises(ValueError, match="min: cannot reduce an empty tensor"):
        Tensor(np.zeros((0, 3))).min()


@given(array_and_dim(elements=lambda s: values(s, -30.0, 30.0)))
@example((np.array([-np.inf, -np.inf]), 0, False))  # all -inf: -inf, no NaN
@example((np.array([[1000.0, 1000.0], [-1000.0, 0.0]]), 1, True))  # no overflow
def test_logsumexp(case):
    x, dim, keepdim = case
    with np.errstate(divide="ignore", invalid="ignore"):  # all -inf: NaN gradients in both, as log(0)'s slope
        check(lambda t: t.logsumexp(dim=dim, keepdim=keepdim),
              lambda t: torch.logsumexp(t, dim=_torch_dims(dim, t), keepdim=keepdim), x)


@given(array_and_dim(elements=lambda s: st.one_of(values(s), ties(s))), st.sampled_from([0, 1, 2]))
@example((np.full((3, 3), 1 / 3), None, False), 0)  # torch's std there is 5.6e-17, its gradient 0.11
@example((np.full((3, 3, 3), 5.3292722), None, False), 0)  # ours: a gradient of -7e-18, not 0
def test_var_and_std(case, correction):
    """PyTorch's default correction (1), others, and an explicit unbiased flag; NaN or inf
    where no degree of freedom is left; std's gradient is 0 where it is 0 (all values tied)."""
    x, dim, keepdim = case
    n = x.size if dim is None else int(np.prod([x.shape[d] for d in np.atleast_1d(dim)] if x.ndim else [1]))
    if n == 0:
        return
    dims = lambda t: _torch_dims(dim, t) if x.ndim else dim  # noqa: E731
    if n - correction <= 0:  # values only: PyTorch's gradients there are NaN or -0, inconsistently
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning, match="no degrees of freedom"):
            ours = Tensor(x).var(dim=dim, keepdim=keepdim, correction=correction)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's own warning about the same
            theirs = torch.var(torch.tensor(x), dim=dims(x), keepdim=keepdim, correction=correction)
        _close(ours, theirs)
    else:
        check(lambda t: t.var(dim=dim, keepdim=keepdim, correction=correction),
              lambda t: torch.var(t, dim=dims(t), keepdim=keepdim, correction=correction), x)
        std, torch_std = (lambda t: t.std(dim=dim, keepdim=keepdim, correction=correction),
                          lambda t: torch.std(t, dim=dims(t), keepdim=keepdim, correction=correction))
        if _has_tied_group(x, dim):
            _check_tied_std(std, torch_std, x, dim)
        else:
            check(std, torch_std, x)
    if n > 1:
        check(lambda t: t.var(dim, False, keepdim), lambda t: torch.var(t, dims(t), unbiased=False, keepdim=keepdim), x)
        if _has_tied_group(x, None):
            _check_tied_std(lambda t: t.std(), lambda t: torch.std(t), x)
        else:
            check(lambda t: t.std(), lambda t: torch.std(t), x)


def _tied_groups(x, dim):
    """Where a reduced group holds one value only (as a mask broadcastable to ``x``)."""
    axes = None if dim is None or x.ndim == 0 else tuple(np.atleast_1d(dim))
    return np.ptp(x, axis=axes, keepdims=True) == 0


def _has_tied_group(x, dim):
    """Whether some reduced group holds one value only: its std is 0, which PyTorch may miss by
    a rounding of the mean (1/3 repeated gives 5.6e-17), and its gradient there is then
    rounding noise over rounding noise (0.11 for nine copies of 1/3)."""
    return x.size > 0 and bool(np.any(_tied_groups(x, dim)))


def _check_tied_std(ours_fn, theirs_fn, x, dim=None):
    """std where a group is tied: the same values, and our gradient 0 on the tied groups (to
    rounding: 27 copies of 5.33 leave a mean 1e-16 off, and a gradient of 7e-18)."""
    t = Tensor(np.array(x, dtype=F64), requires_grad=True)
    ours = ours_fn(t)
    _close(ours, theirs_fn(torch.tensor(np.array(x, dtype=F64))))
    ours.backward(np.ones(ours.shape))
    g = _np(t.grad)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g[np.broadcast_to(_tied_groups(x, dim), x.shape)], 0.0, atol=1e-12)


def test_var_defaults_and_aliases():
    x = Tensor(np.array([1.0, 2.0, 4.0]))
    assert x.var().item() == pytest.approx(np.var(x.data, ddof=1))
    assert x.var(ddof=0).item() == pytest.approx(np.var(x.data))
    assert x.var(unbiased=False).item() == x.var(correction=0).item()
    with pytest.raises(TypeError, match="var: pass one of unbiased, correction and ddof; got unbiased and ddof"):
        x.var(unbiased=True, ddof=0)


@given(S.shapes(min_dims=1, max_side=4).flatmap(lambda s: st.tuples(values(s), st.integers(-len(s), len(s) - 1))))
def test_softmax_and_log_softmax_take_dim(x_dim):
    x, dim = x_dim
    check(lambda t: F.softmax(t, dim=dim), lambda t: TF.softmax(t, dim=dim), x)
    check(lambda t: t.log_softmax(dim=dim), lambda t: TF.log_softmax(t, dim=dim), x)


@pytest.mark.parametrize("dim", [0, -1])
def test_zero_d_inputs_take_axis_0_or_minus_1_as_torch(dim):
    x = np.array(1.7)
    check(lambda t: F.softmax(t, dim=dim), lambda t: TF.softmax(t, dim=dim), x)
    check(lambda t: F.log_softmax(t, dim=dim), lambda t: TF.log_softmax(t, dim=dim), x)
    check(lambda t: t.logsumexp(dim), lambda t: torch.logsumexp(t, dim), x)
    check(lambda t: t.sum(dim), lambda t: t.sum(dim), x)
    check(lambda t: t.max(axis=dim), lambda t: torch.amax(t, dim), x)
    check(lambda t: t.min(axis=dim), lambda t: torch.amin(t, dim), x)
    check(lambda t: t.max(dim).values, lambda t: torch.max(t, dim).values, x)
    check(lambda t: t.min(dim)[0], lambda t: torch.min(t, dim)[0], x)
    assert Tensor(x).max(dim).indices.item() == 0 == torch.max(torch.tensor(x), dim).indices.item()
    check(lambda t: t.mean(dim), lambda t: t.mean(dim), x)
    check(lambda t: t.flip(dim), lambda t: t.flip(dim), x)
    check(lambda t: t.squeeze(dim), lambda t: t.squeeze(dim), x)
    check(lambda t: t.unsqueeze(dim), lambda t: t.unsqueeze(dim), x)
    check(lambda t: t.flatten(), lambda t: t.flatten(), x)
    assert Tensor(x).argmax(dim).item() == 0
    for fn in (lambda t: F.softmax(t, dim=1), lambda t: t.sum(1), lambda t: t.logsumexp(-2)):
        with pytest.raises(ValueError, match="out of range for a 0-d tensor"):
            fn(Tensor(x))


# ---------------------------------------------------------------------- shape functions


@given(st.data())
def test_cat_stack_split_chunk(data):
    shape = data.draw(S.shapes(min_dims=1, max_side=4))
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    k = data.draw(st.integers(1, 3))
    sizes = [data.draw(st.integers(0, 3)) for _ in range(k)]
    arrays = []
    for n in sizes:
        s = list(shape)
        s[dim] = n
        arrays.append(data.draw(values(tuple(s))))
    check(lambda *ts: F.cat(list(ts), dim=dim), lambda *ts: torch.cat(ts, dim=dim), *arrays)
    check(lambda *ts: tc.concatenate(ts, axis=dim), lambda *ts: torch.cat(ts, dim=dim), *arrays)
    same = [data.draw(values(shape)) for _ in range(k)]
    sdim = data.draw(st.integers(-len(shape) - 1, len(shape)))
    check(lambda *ts: F.stack(list(ts), dim=sdim), lambda *ts: torch.stack(ts, dim=sdim), *same)
    x = arrays[0] if sum(sizes) == 0 else np.concatenate(arrays, axis=dim)
    if x.shape[dim] == 0:
        return
    size = data.draw(st.integers(1, 4))
    for ours, theirs in ((lambda t: t.split(size, dim), lambda t: torch.split(t, size, dim)),
                         (lambda t: F.split(t, [n for n in sizes], dim) if sum(sizes) == x.shape[dim] else t.split(size, dim),
                          lambda t: torch.split(t, sizes, dim) if sum(sizes) == x.shape[dim] else torch.split(t, size, dim)),
                         (lambda t: F.chunk(t, size, dim), lambda t: torch.chunk(t, size, dim))):
        # the pieces, joined with weights so that each gets its own gradient
        weights = [float(i + 1) for i in range(8)]
        check(lambda t: F.cat([p * w for p, w in zip(ours(t), weights)], dim=dim),
              lambda t: torch.cat([p * w for p, w in zip(theirs(t), weights)], dim=dim), x)
        assert [p.shape for p in ours(Tensor(x))] == [tuple(p.shape) for p in theirs(torch.tensor(x))]


def test_cat_and_stack_errors_name_the_op():
    a, b = Tensor(np.zeros((2, 3))), Tensor(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"cat: input 1 has shape \(2, 4\) but input 0 has \(2, 3\)"):
        F.cat([a, b])
    with pytest.raises(ValueError, match="cat: a 0-d tensor"):
        F.cat([Tensor(1.0), Tensor(2.0)])
    with pytest.raises(ValueError, match=r"stack: item 1 has shape \(2, 4\) but item 0 has \(2, 3\)"):
        F.stack([a, b])
    with pytest.raises(TypeError, match="cat: expects a list or tuple of tensors; got Tensor"):
        F.cat(a)
    with pytest.raises(TypeError, match="cat: inputs have different dtypes"):
        F.cat([a, Tensor(np.zeros((2, 3), np.float32))])
    with pytest.raises(ValueError, match=r"split: sizes \[1, 1\] must be non-negative and add up to 3"):
        a.split([1, 1], dim=1)
    with pytest.raises(ValueError, match="cat: axis 2 is out of range for 2 axes"):
        F.cat([a, a], dim=2)


@given(array_and_dim(min_dims=1))
def test_flip(case):
    x, dim, _ = case
    dims = tuple(range(x.ndim)) if dim is None else dim
    check(lambda t: t.flip(dims), lambda t: t.flip(dims), x)
    if isinstance(dims, tuple) and len(dims) > 1:
        check(lambda t: t.flip(*dims), lambda t: t.flip(*dims), x)


@given(S.shapes(max_dims=5, max_side=3).flatmap(lambda s: st.tuples(values(s), st.integers(-len(s) - 1, len(s)))))
def test_squeeze_unsqueeze_flatten_expand(x_dim):
    x, d = x_dim
    check(lambda t: t.unsqueeze(d), lambda t: t.unsqueeze(d), x)
    check(lambda t: t.squeeze(), lambda t: t.squeeze(), x)
    if x.ndim:
        sd = d if -x.ndim <= d < x.ndim else 0
        check(lambda t: t.squeeze(sd), lambda t: t.squeeze(sd), x)  # a side other than 1 is left alone
        check(lambda t: t.squeeze(tuple(range(x.ndim))), lambda t: t.squeeze(tuple(range(x.ndim))), x)
        for start in range(-x.ndim, x.ndim):
            for end in range(start % x.ndim, x.ndim):
                check(lambda t: t.flatten(start, end), lambda t: torch.flatten(t, start, end), x)
        check(lambda t: F.flatten(t), lambda t: torch.flatten(t), x)
    target = (2,) + tuple(3 if n == 1 else -1 for n in x.shape)
    check(lambda t: t.expand(*target), lambda t: t.expand(*target), x)
    check(lambda t: t.expand_as(Tensor(np.zeros((2,) + x.shape))), lambda t: t.expand(2, *x.shape), x)


def test_shape_errors_name_the_op():
    x = Tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"unsqueeze: axis 3 is out of range for 3 axes \(expected -3 to 2\)"):
        x.unsqueeze(3)
    with pytest.raises(ValueError, match="flatten: start_dim 1 comes after end_dim 0"):
        x.flatten(1, 0)
    with pytest.raises(ValueError, match="expand: -1 .* is not allowed for a new leading axis"):
        x.expand(-1, 2, 3)
    with pytest.raises(TypeError, match="flip: pass the axes to reverse"):
        x.flip()
    assert x.size() == (2, 3) and x.size(-1) == 3 and x.dim() == 2


# ---------------------------------------------------------------------------------- losses


@st.composite
def class_case(draw, probabilities=False):
    """Scores (N, C), (N, C, d1[, d2]) or (C,), targets, a weight or None, an ignore_index."""
    c = draw(st.integers(1, 4))
    layout = draw(st.sampled_from(["2d", "kd", "1d"]))
    n = draw(st.integers(0, 3)) if layout != "1d" else None
    extra = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))) if layout == "kd" else ()
    shape = (c,) if layout == "1d" else (n, c) + extra
    x = draw(values(shape, -8.0, 8.0, None))
    tshape = () if layout == "1d" else (n,) + extra
    if probabilities:
        raw = draw(hnp.arrays(F64, shape, elements=st.floats(0.0, 1.0)))
        t = raw / np.maximum(raw.sum(axis=0 if layout == "1d" else 1, keepdims=True), 1e-3)
    else:
        t = draw(hnp.arrays(np.int64, tshape, elements=st.integers(0, c - 1)))
    weight = draw(st.none() | hnp.arrays(F64, (c,), elements=st.floats(0.0, 3.0)))
    ignore = draw(st.sampled_from([-100, 0, c - 1])) if not probabilities else -100
    return x, t, weight, ignore


def _tw(w):
    return None if w is None else torch.tensor(w)


@given(class_case(), st.sampled_from(["mean", "sum", "none"]), st.sampled_from([0.0, 0.25]))
@example((np.zeros((0, 3)), np.zeros(0, np.int64), None, -100), "mean", 0.0)  # empty batch: NaN
@example((np.ones((2, 3)), np.array([1, 1]), None, 1), "mean", 0.0)  # every target ignored: NaN, zero grads
@example((np.ones((2, 3)), np.array([1, 2]), np.array([1.0, 0.0, 0.0]), -100), "mean", 0.1)  # zero total weight
def test_cross_entropy_and_nll_loss_with_class_indices(case, reduction, smoothing):
    x, t, w, ignore = case
    kw = dict(ignore_index=ignore, reduction=reduction)
    with np.errstate(all="ignore"):
        check(lambda z: F.cross_entropy(z, t, w, label_smoothing=smoothing, **kw),
              lambda z: TF.cross_entropy(z, torch.tensor(t), _tw(w), label_smoothing=smoothing, **kw), x)
        check(lambda z: F.nll_loss(z, t, w, **kw), lambda z: TF.nll_loss(z, torch.tensor(t), _tw(w), **kw), x)
    if reduction == "mean" and t.size == 0:
        assert np.isnan(F.cross_entropy(Tensor(x), t).item())


@given(class_case(probabilities=True), st.sampled_from(["mean", "sum", "none"]), st.sampled_from([0.0, 0.3]))
def test_cross_entropy_with_class_probabilities(case, reduction, smoothing):
    x, p, w, _ = case
    with np.errstate(all="ignore"):
        check(lambda z: F.cross_entropy(z, p, w, reduction=reduction, label_smoothing=smoothing),
              lambda z: TF.cross_entropy(z, torch.tensor(p), _tw(w), reduction=reduction, label_smoothing=smoothing),
              x)
        # the target as a tensor gets its gradient too
        check(lambda z, q: F.cross_entropy(z, q, reduction=reduction), lambda z, q: TF.cross_entropy(z, q, reduction=reduction),
              x, p)


def test_class_loss_errors():
    z = Tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"cross_entropy: target classes must lie in \[0, 3\); got values from 3 to 3 "
                                         r"\(ignore_index -1 aside\)"):
        F.cross_entropy(z, np.array([-1, 3]), ignore_index=-1)
    with pytest.raises(ValueError, match=r"nll_loss: weight must have shape \(3,\), one value per class; got \(2,\)"):
        F.nll_loss(z, np.array([0, 1]), np.ones(2))
    with pytest.raises(TypeError, match="pass reduction= by keyword"):
        F.cross_entropy(z, np.array([0, 1]), "sum")
    with pytest.raises(ValueError, match="cross_entropy: ignore_index .* applies to class-index targets only"):
        F.cross_entropy(z, np.full((2, 3), 1 / 3), ignore_index=0)
    with pytest.raises(ValueError, match=r"cross_entropy: targets must have shape \(2, 4\) for logits of shape \(2, 3, 4\)"):
        F.cross_entropy(Tensor(np.zeros((2, 3, 4))), np.array([0, 1]))
    with pytest.raises(ValueError, match="nll_loss: expects log-probabilities of shape"):
        F.nll_loss(Tensor(np.array(1.0)), np.array(0))


@st.composite
def binary_case(draw, logits):
    shape = draw(S.shapes(min_dims=1, max_side=4))
    if logits:
        x = draw(values(shape, -30.0, 30.0))
    else:
        x = draw(hnp.arrays(F64, shape, elements=st.floats(0.02, 0.98) | st.sampled_from([0.0, 1.0])))
    t = draw(hnp.arrays(F64, shape, elements=st.floats(0.0, 1.0) | st.sampled_from([0.0, 1.0])))
    weight = draw(st.none() | hnp.arrays(F64, shape[-1:], elements=st.floats(0.0, 2.0)))
    pos_weight = draw(st.none() | hnp.arrays(F64, shape[-1:], elements=st.floats(0.1, 3.0)))
    return x, t, weight, pos_weight


@given(binary_case(logits=False), st.sampled_from(["mean", "sum", "none"]))
@example((np.array([0.0, 1.0, 0.5]), np.array([0.0, 1.0, 0.25]), None, None), "mean")
def test_binary_cross_entropy(case, reduction):
    """Probabilities of exactly 0 or 1 give the clamped log (-100) as PyTorch's; the
    gradient is compared where p(1 - p) is not tiny (PyTorch clamps its denominator there)."""
    p, t, w, _ = case
    tw = _tw(w)
    ours = F.binary_cross_entropy(Tensor(p), t, w, reduction=reduction)
    _close(ours, TF.binary_cross_entropy(torch.tensor(p), torch.tensor(t), tw, reduction=reduction))
    inner = (p > 0.01) & (p < 0.99)
    pi, ti = p[inner], t[inner]
    wi = None if w is None else np.broadcast_to(w, p.shape)[inner]
    if pi.size:
        check(lambda z, q: F.binary_cross_entropy(z, q, wi, reduction=reduction),
              lambda z, q: TF.binary_cross_entropy(z, q, _tw(wi), reduction=reduction), pi, ti)


@given(binary_case(logits=True), st.sampled_from(["mean", "sum", "none"]))
@example((np.array([-1000.0, 1000.0, 0.0]), np.array([1.0, 0.0, 0.5]), None, np.array([2.0, 2.0, 2.0])), "sum")
def test_binary_cross_entropy_with_logits(case, reduction):
    x, t, w, pw = case
    check(lambda z, q: F.binary_cross_entropy_with_logits(z, q, w, reduction=reduction, pos_weight=pw),
          lambda z, q: TF.binary_cross_entropy_with_logits(z, q, _tw(w), reduction=reduction, pos_weight=_tw(pw)),
          x, t)


def test_binary_cross_entropy_errors():
    with pytest.raises(ValueError, match=r"binary_cross_entropy: input must hold probabilities in \[0, 1\]; got values "
                                         r"from -0.5 to 0.5 \(use binary_cross_entropy_with_logits"):
        F.binary_cross_entropy(Tensor(np.array([-0.5, 0.5])), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"binary_cross_entropy_with_logits: input shape \(2,\) and target shape \(3,\) differ"):
        F.binary_cross_entropy_with_logits(Tensor(np.zeros(2)), np.zeros(3))


@st.composite
def regression_case(draw):
    shape = draw(S.shapes(max_side=4))
    x = draw(values(shape))
    t = draw(values(shape))
    if draw(st.booleans()):  # differences exactly at the kinks: 0, +-beta
        t = x - draw(hnp.arrays(F64, shape, elements=st.sampled_from([0.0, 0.5, -0.5, 1.0, -1.0, 2.0])))
    return x, t


@given(regression_case(), st.sampled_from(["mean", "sum", "none"]), st.sampled_from([0.0, 0.5, 1.0, 2.0]))
def test_regression_losses(case, reduction, beta):
    x, t = case
    check(lambda a, b: F.l1_loss(a, b, reduction=reduction), lambda a, b: TF.l1_loss(a, b, reduction=reduction), x, t)
    check(lambda a, b: F.mse_loss(a, b, reduction=reduction), lambda a, b: TF.mse_loss(a, b, reduction=reduction), x, t)
    check(lambda a, b: F.smooth_l1_loss(a, b, reduction=reduction, beta=beta),
          lambda a, b: TF.smooth_l1_loss(a, b, reduction=reduction, beta=beta), x, t)
    if beta > 0:
        check(lambda a, b: F.huber_loss(a, b, reduction=reduction, delta=beta),
              lambda a, b: TF.huber_loss(a, b, reduction=reduction, delta=beta), x, t)


def test_regression_loss_errors_and_empty_batches():
    a = Tensor(np.zeros(3))
    with pytest.raises(ValueError, match="smooth_l1_loss: beta must be non-negative; got -1"):
        F.smooth_l1_loss(a, np.zeros(3), beta=-1)
    with pytest.raises(ValueError, match="huber_loss: delta must be positive; got 0"):
        F.huber_loss(a, np.zeros(3), delta=0)
    with pytest.raises(ValueError, match=r"l1_loss: input shape \(3,\) and target shape \(2,\) differ"):
        F.l1_loss(a, np.zeros(2))
    with pytest.raises(ValueError, match="huber_loss: reduction must be 'mean', 'sum' or 'none'; got 'avg'"):
        F.huber_loss(a, np.zeros(3), reduction="avg")
    empty = Tensor(np.zeros((0, 2)), requires_grad=True)
    for loss in (F.l1_loss, F.mse_loss, F.smooth_l1_loss, F.huber_loss, F.binary_cross_entropy_with_logits):
        assert np.isnan(loss(empty, np.zeros((0, 2))).item())


# ------------------------------------------------------------------ second derivatives


def _second_order(fn, arrays, seed=0):
    """(H v) for every input: the gradient of <d<f, w>/dx, v>, with create_graph, as a list."""
    rng = np.random.default_rng(seed)
    outs = []
    for lib in ("ours", "torch"):
        leaves = [Tensor(a, requires_grad=True) if lib == "ours" else torch.tensor(a, requires_grad=True)
                  for a in arrays]
        y = fn[lib](*leaves)
        rng = np.random.default_rng(seed)
        w = rng.standard_normal(tuple(y.shape))
        vs = [rng.standard_normal(a.shape) for a in arrays]
        if lib == "ours":
            grads = tc.grad((y * w).sum(), leaves, create_graph=True)
            sum(((g * v).sum() for g, v in zip(grads, vs)), Tensor(np.array(0.0))).backward()
            outs.append([np.zeros(t.shape) if t.grad is None else np.asarray(t.grad) for t in leaves])
        else:
            grads = torch.autograd.grad((y * torch.tensor(w)).sum(), leaves, create_graph=True)
            sum((g * torch.tensor(v)).sum() for g, v in zip(grads, vs)).backward()
            outs.append([np.zeros(tuple(t.shape)) if t.grad is None else t.grad.numpy() for t in leaves])
    return outs


def _both(ours, theirs):
    return {"ours": ours, "torch": theirs}


SECOND_ORDER = {
    "gelu": (_both(F.gelu, TF.gelu), [(2, 5)]),
    "gelu_tanh": (_both(lambda x: F.gelu(x, approximate="tanh"), lambda x: TF.gelu(x, approximate="tanh")), [(3, 2)]),
    "silu": (_both(F.silu, TF.silu), [(4,)]),
    "softplus": (_both(lambda x: F.softplus(x, beta=1.5), lambda x: TF.softplus(x, beta=1.5)), [(2, 3)]),
    "mish": (_both(F.mish, TF.mish), [(5,)]),
    "elu": (_both(F.elu, TF.elu), [(5,)]),
    "selu": (_both(F.selu, TF.selu), [(5,)]),
    "logsigmoid": (_both(F.logsigmoid, TF.logsigmoid), [(5,)]),
    "erf": (_both(lambda x: x.erf(), torch.erf), [(5,)]),
    "pow_tensor": (_both(lambda x, y: (x * x + 0.5) ** y, lambda x, y: (x * x + 0.5) ** y), [(2, 3), (3,)]),
    "logsumexp": (_both(lambda x: x.logsumexp(1), lambda x: torch.logsumexp(x, 1)), [(3, 4)]),
    "var": (_both(lambda x: x.var(0), lambda x: torch.var(x, 0)), [(4, 3)]),
    "std": (_both(lambda x: x.std(1, keepdim=True), lambda x: torch.std(x, 1, keepdim=True)), [(2, 5)]),
    "layer_norm": (_both(lambda x, w, b: F.layer_norm(x, (3,), w, b), lambda x, w, b: TF.layer_norm(x, (3,), w, b)),
                   [(2, 3), (3,), (3,)]),
    "group_norm": (_both(lambda x, w: F.group_norm(x, 2, w), lambda x, w: TF.group_norm(x, 2, w)), [(2, 4, 3), (4,)]),
    "cross_entropy": (_both(
        lambda z: F.cross_entropy(z, np.array([0, 2, 2]), np.array([1.0, 2.0, 0.5]), label_smoothing=0.2),
        lambda z: TF.cross_entropy(z, torch.tensor([0, 2, 2]), torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64),
                                   label_smoothing=0.2)), [(3, 3)]),
    "bce_with_logits": (_both(
        lambda z, t: F.binary_cross_entropy_with_logits(z, t, pos_weight=np.array([2.0, 0.5])),
        lambda z, t: TF.binary_cross_entropy_with_logits(z, t, pos_weight=torch.tensor([2.0, 0.5], dtype=torch.float64))),
        [(3, 2), (3, 2)]),
    "huber": (_both(lambda a, b: F.huber_loss(a, b, delta=0.5), lambda a, b: TF.huber_loss(a, b, delta=0.5)),
              [(6,), (6,)]),
}


@pytest.mark.parametrize("name", sorted(SECOND_ORDER))
def test_second_derivatives_match_torch(name):
    """Hessian-vector products through the composites (create_graph=True), against PyTorch's."""
    fns, shapes = SECOND_ORDER[name]
    rng = np.random.default_rng(1)
    arrays = [rng.uniform(-2.5, 2.5, s) for s in shapes]
    ours, theirs = _second_order(fns, arrays)
    for o, t in zip(ours, theirs):
        _close(o, t, rtol=1e-9, atol=1e-11)
