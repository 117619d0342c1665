"""Behaviour of the engine: accumulation, retain_graph, no_grad, dtypes, deep graphs, detach,
retain_grad, comparisons and indexing."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import tinygrad_cnn.functional as F
from tinygrad_cnn import Tensor, enable_grad, is_grad_enabled, no_grad, ops
from tinygrad_cnn.ops import REGISTRY

FLOATS = [np.float32, np.float64]


def leaf(values, dtype=np.float64):
    return Tensor(np.asarray(values, dtype=dtype), requires_grad=True)


# --------------------------------------------------------------------------- accumulation


def test_gradient_accumulates_when_a_tensor_is_used_twice():
    x = leaf([1.0, -2.0, 0.5])
    a = x
    b = a + a
    c = b * b          # c = 4 x^2
    c.sum().backward()
    np.testing.assert_allclose(x.grad, 8 * x.numpy())


def test_diamond_graph_sums_both_paths():
    x = leaf([2.0, 3.0])
    y = x.exp()
    z = (y * x + y.log()).sum()   # d/dx = e^x * x + e^x + 1
    z.backward()
    e = np.exp(x.numpy())
    np.testing.assert_allclose(x.grad, e * x.numpy() + e + 1)


def test_grad_accumulates_across_backward_calls_until_zero_grad():
    x = leaf([1.0, 2.0])
    (x * 3.0).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad, [6.0, 6.0])
    x.zero_grad()
    assert x.grad is None
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, [2.0, 4.0])


def test_leaf_grad_is_a_private_copy():
    x = leaf([1.0, 2.0])
    g = np.array([5.0, 7.0])
    x.backward(g)
    g[:] = 0.0
    np.testing.assert_allclose(x.grad, [5.0, 7.0])


def test_broadcast_gradients_are_summed_to_the_input_shape():
    a = leaf(np.ones((2, 1, 3)))
    b = leaf(np.ones((4, 3)))
    s = leaf(2.0)
    ((a * b) * s).sum().backward()
    assert a.grad.shape == (2, 1, 3) and b.grad.shape == (4, 3) and s.grad.shape == ()
    np.testing.assert_allclose(a.grad, np.full((2, 1, 3), 8.0))
    np.testing.assert_allclose(b.grad, np.full((4, 3), 4.0))
    assert s.grad == pytest.approx(24.0)


# ------------------------------------------------------------------------- retain_graph


def test_second_backward_through_a_freed_graph_raises():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_retain_graph_allows_a_second_backward():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * 2 * x.numpy())
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()  # the second one did not retain


def test_backward_frees_saved_arrays():
    x = leaf([[1.0, 2.0], [3.0, 4.0]])
    y = F.max_pool2d(x.reshape(1, 1, 2, 2), 2)  # keeps the winners' positions for its VJP
    node = y._ctx
    arrays = [a for a in node.saved if hasattr(a, "dtype")]
    assert arrays and all(a.dtype.itemsize == 1 for a in arrays)
    y.sum().backward()
    assert node.saved is None and node.freed


def test_vjps_read_the_inputs_and_save_nothing_more():
    """A VJP in Tensor code reads the node's inputs and output, which the graph holds anyway:
    first-order recording keeps no extra arrays (mul used to save copies of both operands)."""
    x = leaf([1.0, 2.0])
    for y in (x * x, x.exp(), x.tanh(), x / (x + 1), x.log_softmax(-1)):
        assert y._ctx.saved == ()


def test_backward_needs_a_grad_for_non_scalar_outputs():
    x = leaf([1.0, 2.0])
    with pytest.raises(RuntimeError, match=r"one-element.*shape \(2,\)"):
        (x * 2.0).backward()
    y = x * 2.0
    with pytest.raises(ValueError, match=r"grad has shape \(3,\).*\(2,\)"):
        y.backward(np.ones(3))
    y.backward(np.ones(2))
    np.testing.assert_allclose(x.grad, [2.0, 2.0])


def test_backward_on_a_tensor_without_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(1)).backward()


# ------------------------------------------------------------------------------ no_grad


def test_no_grad_records_nothing():
    x = leaf([1.0, 2.0])
    with no_grad():
        assert not is_grad_enabled()
        y = (x * x).exp().sum()
    assert is_grad_enabled()
    assert not y.requires_grad and y._ctx is None and y.is_leaf


def test_no_grad_saves_nothing():
    x = leaf([1.0, 2.0])
    with no_grad():
        y = ops.Mul.apply(x, x)
    assert y._ctx is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_no_grad_as_a_decorator():
    @no_grad()
    def infer(t):
        assert not is_grad_enabled()
        return t * 2.0

    x = leaf([1.0])
    y = infer(x)
    assert not y.requires_grad and y._ctx is None
    assert is_grad_enabled()
    assert infer.__name__ == "infer"


def test_no_grad_restores_the_mode_after_an_exception():
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            1 / 0
    assert is_grad_enabled()


def test_enable_grad_inside_no_grad():
    x = leaf([1.0])
    with no_grad():
        with enable_grad():
            y = x * 2.0
        z = x * 2.0
    assert y.requires_grad and y._ctx is not None
    assert not z.requires_grad


def test_constants_record_no_graph():
    a, b = Tensor(np.ones(2)), Tensor(np.ones(2))
    c = a * b
    assert not c.requires_grad and c._ctx is None


# ------------------------------------------------------------------------------- dtypes


def _vals(shape, lo=-1.0, hi=1.0, seed=0):
    return np.random.default_rng(seed).uniform(lo, hi, shape)


def _distinct(shape, seed=0):
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n).reshape(shape) - n / 2) / 4 + 0.125


# op name -> (function of the leaves, the leaves' values): run in float32 and float64.
def _pool_winners():
    """The winners of a 2x2, stride-1, padding-1 max-pool of a (1, 2, 3, 3) input, and the
    pooling's parameters: what max_pool2d's VJP hands its routing primitives."""
    from tinygrad_cnn.kernels import pool
    from tinygrad_cnn.ops.pool import pool_geometry

    x = _distinct((1, 2, 3, 3))
    geometry = pool_geometry("max_pool2d", x.shape, 2, 1, 1)
    _, winners = pool.max_pool2d(x, *geometry.kernel_args)
    return dict(winners=winners, input_shape=x.shape, kernel_size=2, stride=1, padding=1)


_POOL = _pool_winners()

DTYPE_CASES = {
    "add": (lambda a, b: a + b, [_vals((2, 3)), _vals((3,))]),
    "sub": (lambda a, b: a - b, [_vals((2, 3)), _vals((2, 1))]),
    "mul": (lambda a, b: a * b, [_vals((2, 3)), _vals(())]),
    "div": (lambda a, b: a / b, [_vals((2, 3)), _vals((3,), 0.5, 2.0)]),
    "neg": (lambda a: -a, [_vals((3,))]),
    "pow": (lambda a: a ** 1.5, [_vals((3,), 0.5, 2.0)]),
    "exp": (lambda a: a.exp(), [_vals((3,))]),
    "log": (lambda a: a.log(), [_vals((3,), 0.5, 2.0)]),
    "maximum": (lambda a, b: a.maximum(b), [_distinct((2, 3)), _distinct((3,), 1) + 0.0625]),
    "relu": (lambda a: a.relu(), [_vals((2, 3))]),
    "sigmoid": (lambda a: a.sigmoid(), [_vals((3,))]),
    "tanh": (lambda a: a.tanh(), [_vals((3,))]),
    "cast": (None, [_vals((3,))]),  # special-cased: changes the dtype on purpose
    "sum": (lambda a: a.sum(axis=0), [_vals((2, 3))]),
    "max": (lambda a: a.max(axis=1), [_distinct((2, 3))]),
    "log_softmax": (lambda a: a.log_softmax(axis=-1), [_vals((2, 3))]),
    "reshape": (lambda a: a.reshape(3, 2), [_vals((2, 3))]),
    "transpose": (lambda a: a.permute(1, 0), [_vals((2, 3))]),
    "getitem": (lambda a: a[np.array([0, 0, 1])], [_vals((2, 3))]),
    "scatter_add": (lambda a: ops.ScatterAdd.apply(a, index=np.array([0, 0, 1]), shape=(2, 3)), [_vals((3, 3))]),
    "expand": (lambda a: a.expand(2, 3), [_vals((1, 3))]),
    "relu_backward": (lambda a: a.relu_mask(np.array([[1.0, -1.0, 0.0], [2.0, 0.5, -3.0]])), [_vals((2, 3))]),
    "pad": (lambda a: F.pad(a, 1), [_vals((2, 3))]),
    "matmul": (lambda a, b: a @ b, [_vals((2, 3)), _vals((3, 4))]),
    "im2col": (lambda a: F.im2col(a, (2, 3), 1, 1), [_vals((1, 2, 3, 4))]),
    "col2im": (lambda a: F.col2im(a, (1, 2, 3, 3), 2, 1, 0), [_vals((8, 4))]),
    "conv2d": (lambda x, w, b: ops.Conv2d.apply(x, w, b, kernel_size=(2, 3), padding=(1, 0, 0, 1), dilation=(1, 2)),
               [_vals((2, 2, 3, 5)), _vals((3, 2, 2, 3)), _vals((3,))]),
    "conv2d_weight": (lambda x, g: ops.Conv2dWeight.apply(x, g, kernel_size=2, stride=2, padding=1),
                      [_vals((2, 2, 3, 5)), _vals((2, 3, 2, 3))]),
    "max_pool2d": (lambda a: F.max_pool2d(a, 2, 1, 1), [_distinct((1, 2, 3, 3))]),
    "max_pool2d_backward": (lambda g: ops.MaxPool2dBackward.apply(g, **_POOL), [_vals((1, 2, 4, 4))]),
    "max_pool2d_gather": (lambda h: ops.MaxPool2dGather.apply(h, **_POOL), [_vals((1, 2, 3, 3))]),
    "avg_pool2d": (lambda a: F.avg_pool2d(a, 2, 1, 1, ceil_mode=True, count_include_pad=False), [_vals((1, 2, 3, 3))]),
    "avg_pool2d_backward": (lambda g: ops.AvgPool2dBackward.apply(g, input_shape=(1, 2, 5, 4), kernel_size=2),
                            [_vals((1, 2, 2, 2))]),
    "batch_norm": (lambda x, w, b: F.batch_norm(x, np.zeros(2), np.ones(2), w, b, training=True),
                   [_vals((3, 2, 2, 2)), _vals((2,)), _vals((2,))]),
    "batch_norm_backward": (lambda g, x, w: ops.BatchNormBackward.apply(g, x, w)[0],  # g_x; others get zeros
                            [_vals((3, 2, 2, 2)), _vals((3, 2, 2, 2)), _vals((2,))]),
    "channel_affine": (lambda x, a, b: ops.ChannelAffine.apply(x, a, b), [_vals((3, 2, 2)), _vals((2,)), _vals((2,))]),
    "pow_tensor": (lambda a, b: a ** b, [_vals((2, 3), 0.5, 2.0), _vals((3,))]),
    "where": (lambda a, b: F.where(np.array([True, False, True]), a, b), [_vals((2, 3)), _vals((3,))]),
    "erf": (lambda a: a.erf(), [_vals((3,))]),
    "gelu": (lambda a: F.gelu(a), [_vals((2, 3))]),
    "gelu_backward": (lambda g, x: ops.GeluBackward.apply(g, x, approximate="tanh"), [_vals((3,)), _vals((3,))]),
    "log1p": (lambda a: a.log1p(), [_vals((3,), 0.5, 2.0)]),
    "expm1": (lambda a: a.expm1(), [_vals((3,))]),
    "cat": (lambda a, b: F.cat([a, b], dim=1), [_vals((2, 3)), _vals((2, 2))]),
}


@pytest.mark.parametrize("dtype", FLOATS, ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_op_preserves_dtype_forward_and_backward(name, dtype):
    assert name in DTYPE_CASES, f"add {name!r} to DTYPE_CASES in tests/test_engine.py"
    fn, values = DTYPE_CASES[name]
    leaves = [leaf(v, dtype) for v in values]
    if name == "cast":
        other = np.float64 if dtype == np.float32 else np.float32
        out = ops.Cast.apply(leaves[0], dtype=other)
        assert out.dtype == other and out._ctx.name == "cast"
    else:
        out = fn(*leaves)
        assert out.dtype == dtype
        assert out._ctx is not None and out._ctx.name == name
    out.backward(np.ones(out.shape, dtype=out.dtype))
    for t in leaves:
        assert t.grad is not None and t.grad.dtype == dtype and t.grad.shape == t.shape


COMPOSITES = {
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=1),
               [_vals((2, 2, 5, 4)), _vals((3, 2, 3, 2)), _vals((3,))]),
    "linear": (lambda x, w, b: F.linear(x, w, b), [_vals((4, 3)), _vals((2, 3)), _vals((2,))]),
    "cross_entropy": (lambda z: F.cross_entropy(z, np.array([0, 2]), label_smoothing=0.1), [_vals((2, 3))]),
    "softmax": (lambda z: F.softmax(z), [_vals((2, 3))]),
    "mean": (lambda z: z.mean(axis=1), [_vals((2, 3))]),
    "mse_loss": (lambda z: F.mse_loss(z, np.zeros(z.shape, z.dtype)), [_vals((2, 3))]),
    "batch_norm_eval": (lambda x, w, b: F.batch_norm(x, np.zeros(2), np.ones(2), w, b, training=False),
                        [_vals((3, 2, 2, 2)), _vals((2,)), _vals((2,))]),
    "sqrt_rpow": (lambda z: z.sqrt() + 2.0 ** z, [_vals((3,), 0.5, 2.0)]),
}


@pytest.mark.parametrize("dtype", FLOATS, ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_composites_preserve_dtype(name, dtype):
    fn, values = COMPOSITES[name]
    leaves = [leaf(v, dtype) for v in values]
    out = fn(*leaves)
    assert out.dtype == dtype
    out.backward(np.ones(out.shape, dtype=out.dtype))
    for t in leaves:
        assert t.grad.dtype == dtype


def test_python_floats_default_to_float32():
    assert Tensor(1.5).dtype == np.float32
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor([[1, 2]]).dtype.kind == "i"
    assert Tensor(np.ones(2)).dtype == np.float64  # ndarrays keep their dtype
    assert Tensor(1.5, dtype=np.float64).dtype == np.float64


@pytest.mark.parametrize("dtype", FLOATS, ids=["float32", "float64"])
def test_python_numbers_take_the_tensor_dtype(dtype):
    x = leaf([1.0, 2.0], dtype)
    for y in (x + 1.5, 2.0 - x, x * 3, 1 / x, x.maximum(0.5), x ** 2):
        assert y.dtype == dtype


def test_mixing_float32_and_float64_raises():
    a, b = Tensor(np.ones(2, np.float32)), Tensor(np.ones(2, np.float64))
    with pytest.raises(TypeError, match=r"add: inputs have different dtypes \(float32, float64\)"):
        a + b
    with pytest.raises(TypeError, match="matmul.*different dtypes"):
        a @ b
    with pytest.raises(TypeError, match="different dtypes"):
        b * Tensor(2.0)  # a Tensor made from a Python float is float32


def test_astype_casts_and_casts_the_gradient_back():
    x = leaf([1.0, 2.0], np.float32)
    y = x.double()
    assert y.dtype == np.float64
    (y * y).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, [2.0, 4.0])
    assert x.astype(np.float32) is x
    i = x.astype(np.int64)
    assert i.dtype == np.int64 and not i.requires_grad


# -------------------------------------------------------------------------- deep graphs


def test_a_chain_of_20000_ops_backpropagates_without_recursion():
    limit = sys.getrecursionlimit()
    x = leaf([1.0])
    y = x
    for _ in range(20_000):
        y = y * 1.0
    assert limit < 20_000
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0])
    del y  # freeing the chain must not overflow the stack either


# ---------------------------------------------------------------------- detach & friends


def test_detach_cuts_the_graph_and_shares_data():
    x = leaf([1.0, 2.0])
    d = (x * 2.0).detach()
    assert not d.requires_grad and d._ctx is None and d.is_leaf
    y = (x * d).sum()
    y.backward()
    np.testing.assert_allclose(x.grad, d.numpy())  # d is a constant
    e = x.detach()
    assert e.numpy() is x.numpy()


def test_retain_grad_on_intermediates():
    x = leaf([1.0, 2.0])
    h = (x * 3.0).retain_grad()
    k = h * 2.0
    (k * k).sum().backward()
    np.testing.assert_allclose(h.grad, 2 * k.numpy() * 2.0)
    assert k.grad is None  # not retained
    np.testing.assert_allclose(x.grad, h.grad * 3.0)


def test_comparisons_return_bool_tensors_without_grad():
    x = leaf([1.0, 2.0, 3.0])
    for r in (x < 2.0, x <= 2.0, x > 2.0, x >= 2.0, x == 2.0, x != 2.0, x > Tensor(np.ones(3))):
        assert r.dtype == np.bool_ and not r.requires_grad and r._ctx is None
    np.testing.assert_array_equal((x > 1.5).numpy(), [False, True, True])


def test_getitem_with_repeated_integer_indices_accumulates():
    x = leaf([10.0, 20.0, 30.0])
    y = x[[0, 0, 2, 0]]
    y.backward(np.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_allclose(x.grad, [7.0, 0.0, 3.0])


def test_getitem_with_repeated_indices_in_a_tuple_accumulates():
    x = leaf(np.arange(6.0).reshape(2, 3))
    x[:, np.array([1, 1, 2])].sum().backward()
    np.testing.assert_allclose(x.grad, [[0.0, 2.0, 1.0], [0.0, 2.0, 1.0]])


def test_getitem_with_a_boolean_mask():
    x = leaf([1.0, -2.0, 3.0])
    mask = x > 0.0
    x[mask].sum().backward()
    np.testing.assert_allclose(x.grad, [1.0, 0.0, 1.0])


def test_setitem_is_refused():
    x = leaf([1.0])
    with pytest.raises(TypeError, match="in-place"):
        x[0] = 2.0


def test_grad_fn_and_leaf_flags():
    x = leaf([1.0])
    y = x.exp()
    assert x.is_leaf and x.grad_fn is None
    assert not y.is_leaf and y.grad_fn.name == "exp" and y.grad_fn.parents == (x,)


def test_square_of_one_tensor_and_product_of_two_sharing_data():
    """x * x takes a one-product path in Mul's VJP; two tensors over one array must not."""
    arr = np.array([1.0, 2.0, 3.0])
    x = Tensor(arr, requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, 2 * arr)
    a, b = Tensor(arr, requires_grad=True), Tensor(arr, requires_grad=True)
    (a * b).sum().backward()
    np.testing.assert_array_equal(a.grad, arr)
    np.testing.assert_array_equal(b.grad, arr)
    c, d = Tensor(arr, requires_grad=True), Tensor(arr)
    (c * d).sum().backward()
    np.testing.assert_array_equal(c.grad, arr)


def test_zero_d_results_are_arrays_not_numpy_scalars():
    """numpy returns a scalar for arithmetic on 0-d arrays; a Tensor's data must stay an
    ndarray (np.asarray(t) raised 'object __array__ method not producing an array')."""
    a = Tensor(np.array(2.0), requires_grad=True)
    for out in (a * a, a + 1.0, a.exp(), -a, (a * a).sum()):
        assert isinstance(out.data, np.ndarray) and out.shape == ()
        assert np.asarray(out) == out.item()
    (a * a).backward()
    assert isinstance(a.grad.data, np.ndarray) and np.asarray(a.grad) == 4.0
