"""Every registered primitive, and the composites built from them, against ``gradcheck`` and
``gradgradcheck``.

``CASES`` maps each op name in ``tinygrad_cnn.ops.REGISTRY`` to a hypothesis property that
runs ``gradcheck`` on that op over generated shapes and hyper-parameters. A registered op
without an entry fails ``test_every_registered_op_has_a_case``; adding an op means adding
its case here (see docs/engine.md).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_cnn as tc
import tinygrad_cnn.functional as F
from tinygrad_cnn import Tensor, gradcheck, gradgradcheck, is_grad_enabled, ops
from tinygrad_cnn.gradcheck import _prepare
from tinygrad_cnn.graph import nodes, op_names
from tinygrad_cnn.kernels import pool as pool_kernels
from tinygrad_cnn.kernels.pool import naive_max_pool2d
from tinygrad_cnn.ops import REGISTRY

import strategies as S


ORDERS = {}  # op name -> the orders (1, 2) its case has checked in this session


def check(op_name, fn, inputs, second_order=True, **kw):
    """``gradcheck(fn, inputs)`` and, unless ``second_order=False``, ``gradgradcheck`` (the
    VJP's own derivatives, with respect to the inputs and the incoming gradient); asserts that
    the recorded graph really went through ``op_name``. The registry tests require every
    primitive's case to reach both orders."""
    recorded = set()

    def traced(*args):
        out = fn(*args)
        if is_grad_enabled() and isinstance(out, Tensor):  # the calls that record
            recorded.update(op_names(out))
        return out

    assert gradcheck(traced, inputs, **kw)
    assert op_name in recorded, f"the case for {op_name!r} never recorded that op (saw {sorted(recorded)})"
    check_declared_reads(fn, inputs)
    ORDERS.setdefault(op_name, set()).add(1)
    if second_order:
        assert gradgradcheck(fn, inputs, **kw)
        ORDERS[op_name].add(2)


def _unprotected(array):
    """Whether writing into ``array`` touches no memory the engine keeps read-only."""
    a = array
    while isinstance(a, np.ndarray):
        if not a.flags.writeable:
            return False
        a = a.base
    return True


def check_declared_reads(fn, inputs):
    """Each node's ``reads`` covers every array its VJP reads: overwrite, with NaN, each array
    of the graph that no node declares (so the engine left it writable), then differentiate
    again through the retained graph; the gradients must not move."""
    if isinstance(inputs, Tensor) or isinstance(inputs, np.ndarray):
        inputs = (inputs,)
    ts, leaves = _prepare(list(inputs))
    leaves = [ts[k] for k in leaves]
    outs = fn(*ts)
    outs = [o for o in (outs if isinstance(outs, (tuple, list)) else [outs])
            if isinstance(o, Tensor) and o.requires_grad]
    if not outs:
        return
    rng = np.random.default_rng(0)
    gs = [Tensor(rng.standard_normal(o.shape)) for o in outs]
    before = tc.grad(outs, leaves, gs, retain_graph=True, allow_unused=True)
    overwritten = []  # (array, its values): restored afterwards (fn may hold constants of its own)
    try:
        for op in nodes(outs):
            arrays = [] if "inputs" in op.reads else [p.data for p in op.parents]
            if "output" not in op.reads:
                arrays += [ref().data for ref in op._outputs if ref() is not None]
            for a in arrays:
                if isinstance(a, np.ndarray) and a.dtype.kind == "f" and _unprotected(a):
                    overwritten.append((a, a.copy()))
                    a[...] = np.nan
        after = tc.grad(outs, leaves, gs, retain_graph=True, allow_unused=True)
    finally:
        for a, values in reversed(overwritten):
            a[...] = values
    for k, (b, a) in enumerate(zip(before, after)):
        if b is not None:
            np.testing.assert_array_equal(
                np.asarray(a), np.asarray(b),
                err_msg=f"input {k}: its gradient changed when the arrays outside the ops' declared `reads` were "
                        f"overwritten: a VJP among {sorted(op.name for op in nodes(outs))} reads an undeclared array")


CASES = {}


def case(name):
    """Register the property test for the primitive ``name``."""
    def deco(fn):
        assert name not in CASES, f"two cases for {name!r}"
        CASES[name] = fn
        return fn
    return deco


# ------------------------------------------------------------------------- elementwise


@st.composite
def pair_arrays(draw, b_elements=S.arrays):
    shape_a, shape_b = draw(S.broadcastable_pairs())
    return draw(S.arrays(shape_a)), draw(b_elements(shape_b))


@case("add")
@given(pair_arrays())
def _add(ab):
    check("add", lambda a, b: a + b, ab)


@case("sub")
@given(pair_arrays())
def _sub(ab):
    check("sub", lambda a, b: a - b, ab)


@case("mul")
@given(pair_arrays())
@example((np.array([1.5, -2.0]), np.array(3.0)))  # 0-d second operand
def _mul(ab):
    check("mul", lambda a, b: a * b, ab)


@case("div")
@given(pair_arrays(b_elements=lambda shape: S.away_from_zero(shape, lo=0.5)))
def _div(ab):
    check("div", lambda a, b: a / b, ab)


@case("neg")
@given(S.shapes().flatmap(S.arrays))
def _neg(x):
    check("neg", lambda t: -t, x)


@case("pow")
@given(S.shapes().flatmap(S.positive_arrays), S.exponents())
def _pow(x, p):
    check("pow", lambda t: t ** p, x)


@case("exp")
@given(S.shapes().flatmap(S.arrays))
def _exp(x):
    check("exp", lambda t: t.exp(), x)


@case("log")
@given(S.shapes().flatmap(lambda s: S.positive_arrays(s, lo=0.2, hi=3.0)))
def _log(x):
    check("log", lambda t: t.log(), x)


@case("maximum")
@given(S.broadcastable_pairs().flatmap(lambda ab: S.distinct_pair(*ab)))
def _maximum(ab):
    check("maximum", lambda a, b: a.maximum(b), ab)


@case("relu")
@given(S.shapes().flatmap(S.away_from_zero))
def _relu(x):
    check("relu", F.relu, x)


@case("relu_backward")
@given(S.shapes().flatmap(lambda s: st.tuples(S.arrays(s), S.away_from_zero(s))))
def _relu_backward(g_where):
    g, where = g_where
    check("relu_backward", lambda t: t.relu_mask(where), g)


@case("sigmoid")
@given(S.shapes().flatmap(lambda s: S.arrays(s, -4.0, 4.0)))
def _sigmoid(x):
    check("sigmoid", F.sigmoid, x)


@case("tanh")
@given(S.shapes().flatmap(lambda s: S.arrays(s, -3.0, 3.0)))
def _tanh(x):
    check("tanh", lambda t: ops.Tanh.apply(t), x)


@case("cast")
@given(S.shapes().flatmap(S.arrays))
def _cast(x):
    # float64 -> float32 -> float64: the float32 rounding (~6e-8 relative) needs a larger step
    # than the default eps for the central differences to resolve the slope.
    round_trip = lambda t: ops.Cast.apply(ops.Cast.apply(t, dtype=np.float32), dtype=np.float64)  # noqa: E731
    check("cast", round_trip, x, eps=1e-3)


@case("pow_tensor")
@given(pair_arrays(b_elements=lambda shape: S.arrays(shape, -2.0, 2.0)).map(lambda ab: (np.asarray(np.abs(ab[0]) + 0.5), ab[1])))
def _pow_tensor(ab):
    check("pow_tensor", lambda a, b: a ** b, ab)


def test_pow_tensor_on_negative_bases_with_integer_exponents():
    """(-x) ** n is real for an integer n (exp(n log x) would be NaN); the base's gradient."""
    x = np.array([[-1.5, -0.7, 2.0], [-2.0, -1.1, -0.6]])
    n = Tensor(np.array([3.0, -2.0, 2.0]))
    check("pow_tensor", lambda t: t ** n, x)


@case("where")
@given(st.data())
def _where(data):
    shape_c, shape_a, shape_b = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=3)
                                          .map(lambda s: s.input_shapes))
    cond = data.draw(hnp.arrays(np.bool_, shape_c))
    check("where", lambda a, b: F.where(cond, a, b), (data.draw(S.arrays(shape_a)), data.draw(S.arrays(shape_b))))


@case("erf")
@given(S.shapes().flatmap(lambda s: S.arrays(s, -3.0, 3.0)))
def _erf(x):
    check("erf", lambda t: t.erf(), x)


@case("gelu")
@given(S.shapes().flatmap(lambda s: S.arrays(s, -4.0, 4.0)), st.sampled_from(["none", "tanh"]))
def _gelu(x, approximate):
    check("gelu", lambda t: F.gelu(t, approximate=approximate), x)


@case("gelu_backward")
@given(S.shapes().flatmap(lambda s: st.tuples(S.arrays(s), S.arrays(s, -4.0, 4.0))),
       st.sampled_from(["none", "tanh"]))
def _gelu_backward(g_x, approximate):
    check("gelu_backward", lambda g, x: ops.GeluBackward.apply(g, x, approximate=approximate), g_x)


@case("log1p")
@given(S.shapes().flatmap(lambda s: S.arrays(s, -0.5, 3.0)))
def _log1p(x):
    check("log1p", lambda t: t.log1p(), x)


@case("expm1")
@given(S.shapes().flatmap(S.arrays))
def _expm1(x):
    check("expm1", lambda t: t.expm1(), x)


# --------------------------------------------------------------------------- reductions


@st.composite
def array_and_axis(draw, values=S.arrays, min_dims=0, single_axis=False):
    shape = draw(S.shapes(min_dims=min_dims))
    x = draw(values(shape))
    nd = len(shape)
    if single_axis:
        return x, draw(st.integers(-nd, nd - 1))
    axis = draw(st.one_of(
        st.none(),
        st.integers(-nd, nd - 1) if nd else st.none(),
        st.lists(st.integers(0, nd - 1), unique=True, max_size=nd).map(tuple) if nd else st.just(()),
    ))
    return x, axis


@case("sum")
@given(array_and_axis(), st.booleans())
def _sum(x_axis, keepdims):
    x, axis = x_axis
    check("sum", lambda t: t.sum(axis=axis, keepdims=keepdims), x)


@case("max")
@given(array_and_axis(values=S.distinct_arrays), st.booleans())
def _max(x_axis, keepdims):
    x, axis = x_axis
    check("max", lambda t: t.max(axis=axis, keepdims=keepdims), x)


@case("log_softmax")
@given(array_and_axis(values=lambda s: S.arrays(s, -5.0, 5.0), min_dims=1, single_axis=True))
def _log_softmax(x_axis):
    x, axis = x_axis
    check("log_softmax", lambda t: F.log_softmax(t, axis=axis), x)


# -------------------------------------------------------------------------------- shape


@st.composite
def reshape_target(draw, shape):
    """Another shape of the same size: the sides shuffled, 1s inserted, maybe one -1."""
    sides = list(draw(st.permutations(list(shape))))
    for _ in range(draw(st.integers(0, 2))):
        sides.insert(draw(st.integers(0, len(sides))), 1)
    if sides and draw(st.booleans()):
        sides[draw(st.integers(0, len(sides) - 1))] = -1
    if len(sides) >= 2 and draw(st.booleans()):  # merge two neighbours
        i = draw(st.integers(0, len(sides) - 2))
        if -1 not in sides[i:i + 2]:
            sides[i:i + 2] = [sides[i] * sides[i + 1]]
    return tuple(sides)


@case("reshape")
@given(S.shapes().flatmap(lambda s: st.tuples(S.arrays(s), reshape_target(s))))
def _reshape(x_target):
    x, target = x_target
    check("reshape", lambda t: t.reshape(target), x)


@case("transpose")
@given(S.shapes().flatmap(lambda s: st.tuples(S.arrays(s), st.permutations(list(range(len(s)))))))
def _transpose(x_axes):
    x, axes = x_axes
    check("transpose", lambda t: t.permute(*axes), x)


@st.composite
def array_and_index(draw):
    shape = draw(S.shapes(max_side=4))
    x = draw(S.arrays(shape))
    kind = draw(st.sampled_from(["basic", "int_arrays", "repeats", "mask", "mixed"]))
    if kind == "basic" or not shape:
        index = draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    elif kind == "int_arrays":
        index = draw(hnp.integer_array_indices(shape))
    elif kind == "repeats":  # one integer array on axis 0 that repeats indices
        idx = draw(st.lists(st.integers(-shape[0], shape[0] - 1), min_size=1, max_size=6))
        index = np.array(idx + idx[:1])
    elif kind == "mask":
        index = draw(hnp.arrays(np.bool_, shape[:draw(st.integers(1, len(shape)))]))
    else:  # a reversed slice on axis 0, then an integer array with repeats
        if len(shape) < 2:
            index = (slice(None, None, -1),)
        else:
            idx = draw(st.lists(st.integers(0, shape[1] - 1), min_size=1, max_size=5))
            index = (slice(None, None, -1), np.array(idx + idx[:1]))
    return x, index


@case("getitem")
@given(array_and_index())
def _getitem(x_index):
    x, index = x_index
    check("getitem", lambda t: t[index], x)


@st.composite
def array_and_expansion(draw):
    """An array and a shape it broadcasts to: size-1 sides grown, leading sides added."""
    shape = draw(S.shapes())
    target = [draw(st.integers(1, 3)) if n == 1 else n for n in shape]
    target = [draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2)))] + target
    return draw(S.arrays(shape)), tuple(target)


@case("expand")
@given(array_and_expansion())
def _expand(x_shape):
    x, shape = x_shape
    check("expand", lambda t: t.expand(*shape), x)


@case("scatter_add")
@given(array_and_index())
def _scatter_add(x_index):
    x, index = x_index
    picked = np.zeros(x.shape)[index].shape
    g = np.random.default_rng(0).standard_normal(picked)
    check("scatter_add", lambda t: ops.ScatterAdd.apply(t, index=index, shape=x.shape), g)


@st.composite
def array_and_pad(draw):
    shape = draw(S.shapes())
    x = draw(S.arrays(shape))
    if draw(st.booleans()):
        pad_width = draw(st.integers(0, 2))
    else:
        pad_width = tuple(draw(st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2))))
                          for _ in shape)
    value = draw(st.sampled_from([0.0, -1.5]))
    return x, pad_width, value


@case("pad")
@given(array_and_pad())
def _pad(x_pad):
    x, pad_width, value = x_pad
    check("pad", lambda t: F.pad(t, pad_width, value=value), x)


@st.composite
def arrays_to_join(draw):
    """One to three arrays that differ only along ``axis`` (sizes from 0 up)."""
    shape = list(draw(S.shapes(min_dims=1)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    arrays = []
    for _ in range(draw(st.integers(1, 3))):
        shape[axis] = draw(st.integers(0, 3))
        arrays.append(draw(S.arrays(tuple(shape))))
    return arrays, axis


@case("cat")
@given(arrays_to_join())
def _cat(arrays_axis):
    arrays, axis = arrays_axis
    check("cat", lambda *ts: F.cat(list(ts), dim=axis), tuple(arrays))


# ------------------------------------------------------------------------------- linalg


@st.composite
def matmul_operands(draw):
    """(a, b) in every numpy-``@`` form: 1-d x 1-d, 1-d x n-d, n-d x 1-d, broadcast batches."""
    n, k, m = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    batch_a, batch_b = draw(S.broadcastable_pairs(max_dims=2))
    a_shape = (k,) if draw(st.booleans()) else batch_a + (n, k)
    b_shape = (k,) if draw(st.booleans()) else batch_b + (k, m)
    return draw(S.arrays(a_shape)), draw(S.arrays(b_shape))


def _mm(shape_a, shape_b):
    rng = np.random.default_rng(1)
    return rng.standard_normal(shape_a), rng.standard_normal(shape_b)


@case("matmul")
@example(ab=_mm((3,), (3,)), flags=(False, False))
@example(ab=_mm((3,), (2, 3, 4)), flags=(False, True))
@example(ab=_mm((2, 1, 2, 3), (3,)), flags=(True, False))
@example(ab=_mm((2, 1, 2, 3), (3, 3, 2)), flags=(True, True))
@given(ab=matmul_operands(), flags=st.tuples(st.booleans(), st.booleans()))
def _matmul(ab, flags):
    """``a @ b``, and with BLAS's flags on operands stored transposed (2-d and more)."""
    check("matmul", lambda a, b: a @ b, ab)
    a, b = ab
    ta, tb = flags[0] and a.ndim >= 2, flags[1] and b.ndim >= 2
    if ta or tb:
        stored = (a.swapaxes(-1, -2).copy() if ta else a, b.swapaxes(-1, -2).copy() if tb else b)
        out = ops.Matmul.apply(*stored, transpose_a=ta, transpose_b=tb)
        np.testing.assert_allclose(out.numpy(), a @ b, rtol=1e-12, atol=1e-12)
        check("matmul", lambda a_, b_: ops.Matmul.apply(a_, b_, transpose_a=ta, transpose_b=tb), stored)


# --------------------------------------------------------------------------------- conv

# Fixed corners besides the generated ones: kernel 5 with padding 2, stride 3, non-square.
CONV_EXAMPLES = [
    S.geometry_example((1, 1, 5, 5), 5, 1, 2),
    S.geometry_example((2, 2, 7, 4), (3, 2), (3, 1), (0, 2)),
    S.geometry_example((1, 2, 3, 6), (1, 5), (2, 3), (1, 0)),
]
POOL_EXAMPLES = [
    S.geometry_example((1, 1, 5, 5), 5, 1, 2),
    S.geometry_example((2, 2, 7, 5), (3, 2), (2, 1), (1, 1)),
    S.geometry_example((1, 1, 4, 6), (2, 3), None, 0),
]


def _with_examples(examples, wrap=lambda g: (g,)):
    def deco(fn):
        for g in examples:
            fn = example(*wrap(g))(fn)
        return fn
    return deco


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# Dilated windows and asymmetric / 'same' padding (issue 15), kept small for gradcheck.
CONV_WINDOWS = S.conv_window_geometry(max_batch=1, max_kernel=3, max_dilation=2, max_extra=2)
DILATED_EXAMPLES = [
    S.conv_geometry_example((1, 2, 5, 4), (3, 2), (2, 1), (0, 2, 1, 0), (2, 3)),
    S.conv_geometry_example((1, 1, 4, 5), (2, 2), 1, "same", 1),
]


def _dilation(g):
    return g.get("dilation", 1)


@case("im2col")
@given(st.one_of(S.window_geometry(), CONV_WINDOWS).flatmap(lambda g: st.tuples(st.just(g), S.arrays(g["shape"]))))
@_with_examples(CONV_EXAMPLES + DILATED_EXAMPLES, wrap=lambda g: ((g, _rand(g["shape"])),))
def _im2col(g_x):
    g, x = g_x
    check("im2col", lambda t: F.im2col(t, g["kernel"], g["stride"], g["padding"], dilation=_dilation(g)), x)
    # the appended row of ones is a constant: no gradient flows back from it
    check("im2col", lambda t: F.im2col(t, g["kernel"], g["stride"], g["padding"], ones_row=True,
                                       dilation=_dilation(g)), x)


def _cols_shape(g):
    (n, c, _, _), (kh, kw), (ho, wo) = g["shape"], g["kernel_hw"], g["out"]
    return (c * kh * kw, n * ho * wo)


@case("col2im")
@given(st.one_of(S.window_geometry(max_channels=1, max_extra=2),
                 S.conv_window_geometry(max_batch=1, max_channels=1, max_kernel=3, max_dilation=2, max_extra=2))
       .flatmap(lambda g: st.tuples(st.just(g), S.arrays(_cols_shape(g)))))
@_with_examples(CONV_EXAMPLES + DILATED_EXAMPLES, wrap=lambda g: ((g, _rand(_cols_shape(g))),))
def _col2im(g_cols):
    g, cols = g_cols
    check("col2im", lambda t: F.col2im(t, g["shape"], g["kernel"], g["stride"], g["padding"],
                                       dilation=_dilation(g)), cols)


@st.composite
def conv_primitive_case(draw, weight_grad=False):
    """A window (dilated, asymmetric, 'same' too), an input, and the weight (for conv2d) or
    an output gradient (for conv2d_weight); C_out 1-2, sometimes a bias."""
    g = draw(S.conv_window_geometry(max_batch=1, max_kernel=3, max_dilation=2, max_extra=2))
    c_out = draw(st.integers(1, 2))
    x = draw(S.arrays(g["shape"]))
    if weight_grad:
        return g, x, draw(S.arrays(g["shape"][:1] + (c_out,) + g["out"]))
    bias = draw(st.none() | S.arrays((c_out,)))
    return g, x, draw(S.arrays((c_out, g["shape"][1]) + g["kernel_hw"])), bias


def _conv_params(g):
    return dict(kernel_size=g["kernel"], stride=g["stride"], padding=g["padding"], dilation=g["dilation"])


CONV_PRIMITIVE_EXAMPLE = S.conv_geometry_example((2, 2, 5, 4), (3, 2), (2, 1), (0, 2, 1, 0), (1, 2))


@case("conv2d")
@given(conv_primitive_case())
@example((CONV_PRIMITIVE_EXAMPLE, _rand((2, 2, 5, 4)), _rand((2, 2, 3, 2), 1), _rand((2,), 2)))
def _conv2d_primitive(case_):
    g, x, w, b = case_
    params = _conv_params(g)
    if b is None:
        check("conv2d", lambda x_, w_: ops.Conv2d.apply(x_, w_, **params), (x, w))
    else:
        check("conv2d", lambda x_, w_, b_: ops.Conv2d.apply(x_, w_, b_, **params), (x, w, b))


@case("conv2d_weight")
@given(conv_primitive_case(weight_grad=True))
@example((CONV_PRIMITIVE_EXAMPLE, _rand((2, 2, 5, 4)), _rand((2, 3) + CONV_PRIMITIVE_EXAMPLE["out"], 1)))
def _conv2d_weight(case_):
    g, x, grad = case_
    check("conv2d_weight", lambda x_, g_: ops.Conv2dWeight.apply(x_, g_, **_conv_params(g)), (x, grad))


def _all_windows_real(g):
    """Every window holds an element of the input (with dilation a window may hold padding
    only, and then its max is -inf, where gradients mean nothing)."""
    out, _ = naive_max_pool2d(np.zeros(g["shape"]), g["kernel_hw"], g["stride_hw"], g["padding4"],
                              g["dilation_hw"], g["ceil_mode"])
    return bool(np.isfinite(out).all())


def _pool_kw(g):
    return dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"], ceil_mode=g["ceil_mode"])


@st.composite
def pool_case(draw):
    g = draw(S.pool_geometry().filter(_all_windows_real))
    return g, draw(S.distinct_arrays(g["shape"]))


def _distinct(shape, seed=0):
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n).reshape(shape) - n / 2) / 8


POOL_GEOMETRIES = [S.pool_example(g["shape"], g["kernel"], g["stride"], g["padding"]) for g in POOL_EXAMPLES] + [
    S.pool_example((1, 2, 6, 5), (3, 2), 2, (1, 0, 1, 1), dilation=(1, 2), ceil_mode=True),
    S.pool_example((2, 1, 7, 4), 2, (3, 1), 1, dilation=2, ceil_mode=True),
]


@case("max_pool2d")
@given(pool_case())
@_with_examples(POOL_GEOMETRIES, wrap=lambda g: ((g, _distinct(g["shape"])),))
def _max_pool2d(g_x):
    g, x = g_x
    check("max_pool2d", lambda t: F.max_pool2d(t, g["kernel"], **_pool_kw(g)), x)
    # with return_indices: the same op, two outputs; the indices carry no gradient
    check("max_pool2d", lambda t: F.max_pool2d(t, g["kernel"], **_pool_kw(g), return_indices=True)[0], x)


def _winners_case(g, x):
    """The winners of max-pooling ``x`` (from the kernel) and the primitives' parameters."""
    _, winners = pool_kernels.max_pool2d(x, g["kernel_hw"], g["stride_hw"], g["padding4"], g["out"],
                                         dilation=g["dilation_hw"])
    return dict(winners=winners, input_shape=x.shape, kernel_size=g["kernel"], **_pool_kw(g))


@st.composite
def winners_case(draw, pooled):
    """A max-pooling's geometry and winners (from an input with ties: any winners will do,
    both primitives are linear), and an argument of the pooled (``pooled``) or input shape."""
    g = draw(S.pool_geometry())
    x = draw(S.tie_arrays(g["shape"]))
    return g, x, draw(S.arrays(g["shape"][:2] + g["out"] if pooled else g["shape"]))


@case("max_pool2d_backward")
@given(winners_case(pooled=True))
@_with_examples(POOL_GEOMETRIES, wrap=lambda g: ((g, np.zeros(g["shape"]), _rand(g["shape"][:2] + g["out"])),))
def _max_pool2d_backward(case_):
    g, x, grad = case_
    params = _winners_case(g, x)
    check("max_pool2d_backward", lambda t: ops.MaxPool2dBackward.apply(t, **params), grad)


@case("max_pool2d_gather")
@given(winners_case(pooled=False))
@_with_examples(POOL_GEOMETRIES, wrap=lambda g: ((g, _rand(g["shape"]), _rand(g["shape"], 1)),))
def _max_pool2d_gather(case_):
    g, x, h = case_
    params = _winners_case(g, x)
    check("max_pool2d_gather", lambda t: ops.MaxPool2dGather.apply(t, **params), h)


def _avg_kw(g):
    return dict(stride=g["stride"], padding=g["padding"], ceil_mode=g["ceil_mode"],
                count_include_pad=g["count_include_pad"], divisor_override=g["divisor_override"])


AVG_GEOMETRIES = [
    S.pool_example((1, 1, 5, 5), 3, 2, 1, ceil_mode=True, count_include_pad=False),
    S.pool_example((2, 2, 4, 7), (2, 3), (1, 2), (1, 0, 0, 1), ceil_mode=True),
    S.pool_example((1, 2, 6, 6), 2, divisor_override=3),
]


@case("avg_pool2d")
@given(S.pool_geometry(kind="avg").flatmap(lambda g: st.tuples(st.just(g), S.arrays(g["shape"]))))
@_with_examples(AVG_GEOMETRIES, wrap=lambda g: ((g, _rand(g["shape"])),))
def _avg_pool2d(g_x):
    g, x = g_x
    check("avg_pool2d", lambda t: F.avg_pool2d(t, g["kernel"], **_avg_kw(g)), x)


@case("avg_pool2d_backward")
@given(S.pool_geometry(kind="avg").flatmap(
    lambda g: st.tuples(st.just(g), S.arrays(g["shape"][:2] + g["out"]))))
@_with_examples(AVG_GEOMETRIES, wrap=lambda g: ((g, _rand(g["shape"][:2] + g["out"])),))
def _avg_pool2d_backward(g_grad):
    g, grad = g_grad
    check("avg_pool2d_backward", lambda t: ops.AvgPool2dBackward.apply(
        t, input_shape=g["shape"], kernel_size=g["kernel"], **_avg_kw(g)), grad)


# --------------------------------------------------------------------------- composites


@st.composite
def conv_case(draw):
    g = draw(S.window_geometry())
    c_out = draw(st.integers(1, 2))
    w_shape = (c_out, g["shape"][1]) + g["kernel_hw"]
    bias = draw(st.none() | S.arrays((c_out,)))
    return g, draw(S.arrays(g["shape"])), draw(S.arrays(w_shape)), bias


def _conv_example(g, c_out=2, bias=True):
    w_shape = (c_out, g["shape"][1]) + g["kernel_hw"]
    return g, _rand(g["shape"]), _rand(w_shape, 1), (_rand((c_out,), 2) if bias else None)


@given(conv_case())
@_with_examples(CONV_EXAMPLES, wrap=lambda g: (_conv_example(g),))
@example(_conv_example(CONV_EXAMPLES[1], bias=False))
def test_conv2d_gradcheck(case_):
    g, x, w, b = case_
    if b is None:
        check("matmul", lambda x_, w_: F.conv2d(x_, w_, None, g["stride"], g["padding"]), (x, w))
    else:
        check("im2col", lambda x_, w_, b_: F.conv2d(x_, w_, b_, g["stride"], g["padding"]), (x, w, b))


@st.composite
def grouped_conv_case(draw):
    """A grouped (sometimes depthwise), dilated, asymmetrically padded convolution."""
    g = draw(S.conv_window_geometry(max_batch=1, max_channels=1, max_kernel=3, max_dilation=2, max_extra=2))
    groups = draw(st.integers(1, 3))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    g = dict(g, shape=(g["shape"][0], c_in) + g["shape"][2:])
    w_shape = (c_out, c_in // groups) + g["kernel_hw"]
    bias = draw(st.none() | S.arrays((c_out,)))
    return g, groups, draw(S.arrays(g["shape"])), draw(S.arrays(w_shape)), bias


@given(grouped_conv_case())
def test_grouped_dilated_conv2d_gradcheck(case_):
    g, groups, x, w, b = case_
    conv = lambda x_, w_, *b_: F.conv2d(x_, w_, b_[0] if b_ else None, g["stride"], g["padding"],  # noqa: E731
                                        g["dilation"], groups)
    check("im2col", conv, (x, w) if b is None else (x, w, b))


@st.composite
def conv_transpose_case(draw):
    groups = draw(st.integers(1, 2))
    c_in, c_out_g = groups * draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw, dh, dw = (draw(st.integers(1, 3)) for _ in range(4))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    oph, opw = draw(st.integers(0, max(sh, dh) - 1)), draw(st.integers(0, max(sw, dw) - 1))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    # the output must have at least one pixel: (h-1)*s - 2p + d*(k-1) + op + 1 >= 1
    ph = min(ph, ((h - 1) * sh + dh * (kh - 1) + oph) // 2)
    pw = min(pw, ((w - 1) * sw + dw * (kw - 1) + opw) // 2)
    x = draw(S.arrays((1, c_in, h, w)))
    weight = draw(S.arrays((c_in, c_out_g, kh, kw)))
    bias = draw(st.none() | S.arrays((c_out_g * groups,)))
    return dict(stride=(sh, sw), padding=(ph, pw), output_padding=(oph, opw), groups=groups, dilation=(dh, dw)), \
        x, weight, bias


@given(conv_transpose_case())
def test_conv_transpose2d_gradcheck(case_):
    kw, x, w, b = case_
    fn = lambda x_, w_, *b_: F.conv_transpose2d(x_, w_, b_[0] if b_ else None, **kw)  # noqa: E731
    check("col2im", fn, (x, w) if b is None else (x, w, b))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_pad_modes_gradcheck(mode):
    x = _rand((1, 2, 3, 4))
    check("getitem", lambda t: F.pad(t, ((0, 0), (0, 0), (2, 1), (0, 3)), mode=mode).tanh(), x)


@st.composite
def linear_case(draw):
    batch = draw(S.shapes(min_dims=0, max_dims=2))
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    x = draw(S.arrays(batch + (n_in,)))
    w = draw(S.arrays((n_out, n_in)))
    b = draw(st.none() | S.arrays((n_out,)))
    return x, w, b


@given(linear_case())
def test_linear_gradcheck(case_):
    x, w, b = case_
    if b is None:
        check("matmul", lambda x_, w_: F.linear(x_, w_), (x, w))
    else:
        check("matmul", lambda x_, w_, b_: F.linear(x_, w_, b_), (x, w, b))


@given(S.cross_entropy_cases(4, 5, 4.0, [0.0, 0.1, 0.5, 1.0]))
def test_cross_entropy_gradcheck(case_):
    logits, targets, reduction, smoothing = case_
    fn = lambda z: F.cross_entropy(z, targets, reduction=reduction, label_smoothing=smoothing)  # noqa: E731
    check("log_softmax", fn, logits)


@given(array_and_axis(values=lambda s: S.arrays(s, -4.0, 4.0), min_dims=1, single_axis=True))
def test_softmax_gradcheck(x_axis):
    x, axis = x_axis
    check("exp", lambda t: F.softmax(t, axis=axis), x)


@st.composite
def batch_norm_case(draw):
    shape = draw(st.one_of(
        st.tuples(st.integers(2, 5), st.integers(1, 3)),
        st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(2, 4)),
        st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 3), st.integers(1, 3)),
    ).filter(lambda s: np.prod(s) // s[1] >= 2))
    x = draw(S.arrays(shape))
    c = shape[1]
    affine = draw(st.booleans())
    w = draw(S.arrays((c,), 0.5, 2.0)) if affine else None
    b = draw(S.arrays((c,))) if affine else None
    return x, w, b


@case("batch_norm")
@given(batch_norm_case())
def _batch_norm(case_):
    x, w, b = case_
    c = x.shape[1]
    running_mean, running_var = np.zeros(c), np.ones(c)  # updated in place; not checked inputs
    if w is None:
        fn = lambda x_: F.batch_norm(x_, running_mean, running_var, training=True)  # noqa: E731
        check("batch_norm", fn, x)
    else:
        fn = lambda x_, w_, b_: F.batch_norm(x_, running_mean, running_var, w_, b_, training=True)  # noqa: E731
        check("batch_norm", fn, (x, w, b))


@case("batch_norm_backward")
@given(batch_norm_case().filter(lambda case_: case_[1] is not None), st.integers(0, 2**32 - 1))
def _batch_norm_backward(case_, seed):
    """The primitive on its own (statistics recomputed from x as it is perturbed), its three
    outputs folded into one by fixed random weights; its second order is batch norm's third."""
    x, w, _ = case_
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(x.shape)
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    a, b, c = (Tensor(rng.standard_normal(x.shape)) for _ in range(3))

    def fn(g_, x_, w_):
        g_x, g_w, g_b = ops.BatchNormBackward.apply(g_, x_, w_)
        return g_x * a + g_w.reshape(*shape) * b + g_b.reshape(*shape) * c

    check("batch_norm_backward", fn, (g, x, w))


def batch_norm_from_primitives(x, running_mean, running_var, weight, bias, momentum=0.1, eps=1e-5):
    """Training-mode batch norm composed from primitives: the reference for the fused op."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=axes, keepdims=True)
    count = x.numel() // x.shape[1]
    running_mean *= 1 - momentum
    running_mean += momentum * mean.data.reshape(-1)
    running_var *= 1 - momentum
    running_var += momentum * var.data.reshape(-1) * (count / (count - 1))
    return centered * ((var + eps) ** -0.5 * weight.reshape(*shape)) + bias.reshape(*shape)


@given(batch_norm_case().filter(lambda case_: case_[1] is not None), st.sampled_from([(0, 1, 2, 3), (1, 0, 2, 3)]))
def test_batch_norm_matches_the_composite(case_, layout):
    """Same values, gradients and running statistics as the function composed from primitives,
    on NCHW input and on channel-major input (the layout a convolution's output has)."""
    x, w, b = case_
    if x.ndim == 4:
        x = np.ascontiguousarray(x.transpose(layout)).transpose(layout)
    _batch_norm_equals_the_composite(x, w, b, np.random.default_rng(0).standard_normal(x.shape))


def _batch_norm_equals_the_composite(x, w, b, g):
    """The primitive's output, running statistics and gradients equal the composite's; returns
    the primitive's output."""
    results = []
    for fn in (lambda *a: F.batch_norm(*a, training=True), batch_norm_from_primitives):
        stats = [np.full(x.shape[1], 0.5), np.full(x.shape[1], 2.0)]
        leaves = [Tensor(v, requires_grad=True) for v in (x, w, b)]
        out = fn(leaves[0], *stats, leaves[1], leaves[2])
        out.backward(g)
        results.append([out.numpy(), *stats, *(t.grad for t in leaves)])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    return results[0][0]


@pytest.mark.parametrize("shape", [(4, 5, 3, 3), (3, 6, 2, 5), (7, 4)])
@pytest.mark.parametrize("channel_major", [False, True])
def test_batch_norm_in_channel_blocks_on_threads_matches_the_composite(monkeypatch, shape, channel_major):
    """Blocks of one channel, split over three threads: the code path large inputs take."""
    from tinygrad_cnn import threads
    from tinygrad_cnn.kernels import norm

    monkeypatch.setattr(threads, "_MIN_PARALLEL", 0)
    monkeypatch.setattr(norm, "_CHUNK", 1)
    monkeypatch.setenv("TINYGRAD_CNN_THREADS", "3")
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape) * 3 + 1
    if channel_major:
        order = (1, 0) + tuple(range(2, len(shape)))
        x = np.ascontiguousarray(x.transpose(order)).transpose(order)
    w, b = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    out = _batch_norm_equals_the_composite(x, w, b, rng.standard_normal(shape))
    if channel_major and len(shape) == 4:  # the output keeps the convolution's layout
        assert out.strides[1] > out.strides[0]


def test_batch_norm_fused_op_saves_only_per_channel_values():
    """The mean and 1/std of each channel, no activation (x is a parent anyway); and a
    first-order backward (create_graph=False) records no node and keeps no array: its
    batch_norm_backward runs as a plain kernel call."""
    x = Tensor(np.random.default_rng(0).standard_normal((4, 3, 5, 5)), requires_grad=True)
    w = Tensor(np.ones(3), requires_grad=True)
    out = F.batch_norm(x, None, None, w, training=True)
    assert out._ctx.name == "batch_norm"
    assert [a.shape for a in out._ctx.saved] == [(3,), (3,)]
    recorded = []
    apply = ops.BatchNormBackward.apply.__func__

    def spy(cls, *args, **kw):
        results = apply(cls, *args, **kw)
        recorded.append([t._ctx for t in results])
        return results

    try:
        ops.BatchNormBackward.apply = classmethod(spy)
        out.backward(Tensor(np.ones(out.shape)))
    finally:
        del ops.BatchNormBackward.apply  # the inherited Op.apply again
    assert recorded == [[None, None, None]]
    assert x.grad._ctx is None and w.grad._ctx is None and not x.grad.requires_grad


def test_batch_norm_vjp_of_a_constant_input_is_two_sums():
    """x needs no gradient (batch norm on raw data): the weight and bias gradients, first and
    second order, without the fused backward."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 3, 2))
    fn = lambda w_, b_: F.batch_norm(Tensor(x), None, None, w_, b_, training=True) ** 3  # noqa: E731
    check("batch_norm", fn, (rng.uniform(0.5, 2, 3), rng.standard_normal(3)))


def test_batch_norm_weight_gradient_stays_differentiable_in_x():
    """grad(loss, [weight], create_graph=True) then d/dx: x needs no gradient in the first
    pass but the second reaches it through g_weight (a gradient penalty on parameters)."""
    rng = np.random.default_rng(5)
    x0, w0 = rng.standard_normal((4, 2, 3)), rng.uniform(0.5, 2, 2)

    def penalty(x_):
        x_ = x_ * 1.0  # a non-leaf x, as a convolution's output
        w = Tensor(w0, requires_grad=True)
        with tc.enable_grad():  # gradcheck's numeric evaluations run under no_grad
            loss = (F.batch_norm(x_, None, None, w, training=True) ** 3).sum()
            (g_w,) = tc.grad(loss, [w], create_graph=x_.requires_grad)
        return (g_w * g_w).sum()

    assert gradcheck(penalty, x0)


@given(batch_norm_case().filter(lambda case_: case_[1] is not None), st.sampled_from([(0, 1, 2, 3), (1, 0, 2, 3)]))
def test_batch_norm_kernels_match_the_naive_formulas(case_, layout):
    """The fused forward and backward kernels, and the Tensor-code VJP that differentiates the
    backward, against the textbook formulas (``kernels.norm.naive_*``)."""
    from tinygrad_cnn.kernels import norm as K
    from tinygrad_cnn.ops.norm import batch_norm_vjp

    x, w, b = case_
    if x.ndim == 4:
        x = np.ascontiguousarray(x.transpose(layout)).transpose(layout)
    g = np.random.default_rng(0).standard_normal(x.shape)
    out, stats, count = K.batch_norm(x, w, b, 1e-5)
    np.testing.assert_allclose(out, K.naive_batch_norm(x, w, b, 1e-5), rtol=1e-9, atol=1e-9)
    assert count == x.size // x.shape[1]
    want = K.naive_batch_norm_backward(g, x, w, 1e-5)
    for got in (K.batch_norm_backward(g, x, stats, w, count),
                [t.data for t in batch_norm_vjp(Tensor(g), Tensor(x), Tensor(w))]):
        for a, e in zip(got, want):
            np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-9)
    sums_only = K.batch_norm_backward(g, x, stats, w, count, input_grad=False)
    assert sums_only[0] is None
    np.testing.assert_allclose(sums_only[1], want[1], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sums_only[2], want[2], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("channel_major", [False, True])
def test_float32_batch_norm_is_accurate_for_data_with_a_large_mean(channel_major, monkeypatch):
    """1e4 + noise in float32 (where sum(x^2)/n - mean^2 would lose every digit): statistics,
    output and gradients as the float64 formulas give on the same float32 values, also in
    blocks of one channel on threads."""
    from tinygrad_cnn import threads
    from tinygrad_cnn.kernels import norm as K

    rng = np.random.default_rng(7)
    x = (1e4 + rng.standard_normal((16, 3, 9, 9)) * np.array([1.0, 0.01, 30.0]).reshape(1, 3, 1, 1)).astype(np.float32)
    if channel_major:
        x = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
        monkeypatch.setattr(threads, "_MIN_PARALLEL", 0)
        monkeypatch.setattr(K, "_CHUNK", 1)
    w, b = np.array([0.5, 2.0, 1.0], np.float32), np.array([0.1, -1.0, 3.0], np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    x64 = x.astype(np.float64)
    out, (mean, inv_std), count = K.batch_norm(x, w, b, 1e-5)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(1 / inv_std ** 2 - 1e-5, x64.var(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(out, K.naive_batch_norm(x64, w.astype(float), b.astype(float), 1e-5),
                               rtol=1e-5, atol=2e-5)
    want = K.naive_batch_norm_backward(g.astype(float), x64, w.astype(float), 1e-5)
    for got, e in zip(K.batch_norm_backward(g, x, (mean, inv_std), w, count), want):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, e, rtol=1e-4, atol=1e-4 * np.abs(e).max())


def test_batch_norm_with_a_frozen_weight_computes_no_weight_gradient():
    """A frozen scale (airbench's BatchNorm) gets no gradient; x's and the bias's are as with a
    trainable one. With x needing none either, the bias gradient is one sum."""
    rng = np.random.default_rng(2)
    x0, g = rng.standard_normal((4, 3, 2, 2)), rng.standard_normal((4, 3, 2, 2))
    results = []
    for frozen in (True, False):
        x, w, b = Tensor(x0, requires_grad=True), Tensor(np.ones(3), requires_grad=not frozen), \
            Tensor(np.zeros(3), requires_grad=True)
        F.batch_norm(x, None, None, w, b, training=True).backward(g)
        assert (w.grad is None) == frozen
        results.append((x.grad.data, b.grad.data))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-12)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-12)
    b = Tensor(np.zeros(3), requires_grad=True)
    F.batch_norm(Tensor(x0), None, None, Tensor(np.ones(3)), b, training=True).backward(g)
    np.testing.assert_allclose(b.grad.data, g.sum(axis=(0, 2, 3)), rtol=1e-12)


@case("channel_affine")
@given(batch_norm_case().filter(lambda case_: case_[1] is not None))
def _channel_affine(case_):
    x, w, b = case_
    check("channel_affine", lambda x_, w_, b_: ops.ChannelAffine.apply(x_, w_, b_), (x, w, b))


@given(batch_norm_case().filter(lambda case_: case_[1] is not None), st.sampled_from([(0, 1, 2, 3), (1, 0, 2, 3)]))
def test_channel_affine_matches_the_plain_loops(case_, layout):
    from tinygrad_cnn.kernels import norm as K

    x, w, b = case_
    if x.ndim == 4:
        x = np.ascontiguousarray(x.transpose(layout)).transpose(layout)
    out = K.channel_affine(x, w, b)
    np.testing.assert_allclose(out, K.naive_channel_affine(x, w, b), rtol=1e-15, atol=1e-15)
    assert [st for st, n in zip(out.strides, out.shape) if n > 1] == [st for st, n in zip(x.strides, x.shape) if n > 1]


def test_channel_affine_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"channel_affine: expects x of shape \(N, C, \.\.\.\) and scale and shift "
                                         r"of shape \(C,\); got \(2, 3\), \(2,\) and \(3,\)"):
        ops.ChannelAffine.apply(Tensor(np.zeros((2, 3))), Tensor(np.zeros(2)), Tensor(np.zeros(3)))


def test_batch_norm_labels():
    x = Tensor(np.random.default_rng(0).standard_normal((3, 2)), requires_grad=True)
    out = F.batch_norm(x, None, None, training=True, momentum=0.2, eps=1e-3)
    assert out._ctx.label() == "eps=0.001 momentum=0.2"
    (g_x,) = tc.grad(out.sum(), [x], create_graph=True)
    assert g_x._ctx.name == "batch_norm_backward" and g_x._ctx.label() == "eps=0.001"


def test_batch_norm_second_order_over_synced_shards_is_refused():
    """First order (with or without create_graph) works in every shard; differentiating the
    shard's gradient again needs cross-shard sums of Tensors, and says so."""
    import threading

    from tinygrad_cnn.threads import ShardGroup, batch_shard

    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((2, 3, 2)) for _ in range(2)]
    group, errors = ShardGroup(2), [None, None]

    def shard(rank):
        try:
            with batch_shard(group, rank):
                x = Tensor(xs[rank], requires_grad=True)
                (g_x,) = tc.grad((F.batch_norm(x, None, None, training=True) ** 3).sum(), [x], create_graph=True)
            (g_x * g_x).sum().backward()
        except Exception as e:  # noqa: BLE001 - reported below
            errors[rank] = e

    threads = [threading.Thread(target=shard, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(e, NotImplementedError) and "sync_batch_norm" in str(e) for e in errors), errors


@given(batch_norm_case().filter(lambda case_: case_[1] is not None))
def test_batch_norm_eval_gradcheck(case_):
    x, w, b = case_
    c = x.shape[1]
    rm, rv = np.linspace(-1, 1, c), np.linspace(0.5, 2, c)
    check("mul", lambda x_, w_, b_: F.batch_norm(x_, rm, rv, w_, b_, training=False), (x, w, b))


@given(array_and_axis(), st.booleans())
def test_mean_gradcheck(x_axis, keepdims):
    x, axis = x_axis
    check("sum", lambda t: t.mean(axis=axis, keepdims=keepdims), x)


@pytest.mark.parametrize("shapes", [
    ((4,), (4,)),            # inner product -> 0-d
    ((4,), (4, 3)),          # vector @ matrix
    ((2, 4), (4,)),          # matrix @ vector
    ((4,), (2, 3, 4, 2)),    # vector @ batch
    ((2, 1, 3, 4), (4,)),    # batch @ vector
    ((2, 1, 3, 4), (5, 4, 2)),  # broadcast batches
    ((3, 4), (2, 4, 2)),     # matrix broadcast against a batch
])
def test_matmul_1d_and_broadcast_batches(shapes):
    a, b = _mm(*shapes)
    check("matmul", lambda x, y: x @ y, (a, b))


@pytest.mark.parametrize("layout", ["contiguous", "channel_major", "strided", "scalar"])
def test_relu_in_slices_on_threads_matches_one_pass(monkeypatch, layout):
    """Large inputs take ReLU's threaded path (slices along the outermost axis in memory);
    it must give the one-pass values, gradients and the input's memory layout."""
    from tinygrad_cnn import threads

    monkeypatch.setattr(threads, "_MIN_PARALLEL", 0)
    monkeypatch.setenv("TINYGRAD_CNN_THREADS", "3")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4, 3, 6)).astype(np.float32)
    x[0, 0, 0, :3] = [0.0, -0.0, np.nan]
    x = {"contiguous": x, "channel_major": np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3),
         "strided": x[:, ::2, :, 1:], "scalar": x[1, 1, 1, 1]}[layout]
    g = rng.standard_normal(np.shape(x)).astype(np.float32)
    t = Tensor(x, requires_grad=True)
    out = F.relu(t)
    out.backward(Tensor(g))
    np.testing.assert_array_equal(out.numpy(), np.maximum(x, 0))
    np.testing.assert_array_equal(t.grad, g * (np.maximum(x, 0) > 0))
    assert out.numpy().dtype == np.float32 and t.grad.dtype == np.float32
    if layout == "channel_major":
        assert out.numpy().strides[1] > out.numpy().strides[0]


# --------------------------------------------------------------------------- the table
# Last in the file: the parametrisations below read CASES when they are defined, so every
# case above must be registered by then (batch_norm's, once below them, never ran here).


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_op_has_a_case(name):
    assert name in CASES, (f"primitive {name!r} ({REGISTRY[name].__name__}) has no gradcheck property "
                           f"test: add one to CASES in tests/test_ops_gradcheck.py")


def test_every_case_is_a_registered_op():
    assert set(CASES) <= set(REGISTRY), f"cases for unregistered ops: {sorted(set(CASES) - set(REGISTRY))}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_gradcheck(name):
    """First- and second-order checks of one primitive over generated inputs."""
    CASES[name]()
    assert ORDERS.get(name) == {1, 2}, (f"the case for {name!r} checked orders {sorted(ORDERS.get(name, ()))}; "
                                        f"every primitive needs a first- and a second-order check (float64)")


@pytest.mark.parametrize("stride, padding, dilation, bias", [(1, 1, 1, True), ((2, 1), (0, 2, 1, 0), (1, 2), False),
                                                             (1, "same", 2, True)])
def test_conv2d_keeping_only_its_input_equals_the_composite(monkeypatch, stride, padding, dilation, bias):
    """F.conv2d through the conv2d primitive (F.CONV_KEEPS_INPUT_ONLY) and through the
    composite: the same values, gradients and second derivatives (a gradient penalty)."""
    x, w, b = _rand((2, 3, 7, 6)), _rand((4, 3, 3, 2), 1), _rand((4,), 2)
    results = []
    for keeps_input_only in (False, True):
        monkeypatch.setattr(F, "CONV_KEEPS_INPUT_ONLY", keeps_input_only)
        X, W, B = (Tensor(a, requires_grad=True) for a in (x, w, b))
        out = F.conv2d(X, W, B if bias else None, stride, padding, dilation).tanh()
        assert ("conv2d" in op_names(out)) == keeps_input_only
        gx, gw = tc.grad((out * out).sum(), [X, W], create_graph=True)
        second = tc.grad((gx * gx).sum() + (gw * gw).sum(), [X, W] + ([B] if bias else []))
        results.append([out.numpy(), gx.numpy(), gw.numpy()] + [s.numpy() for s in second])
    for composite, primitive in zip(*results):
        np.testing.assert_allclose(primitive, composite, rtol=1e-10, atol=1e-10)
