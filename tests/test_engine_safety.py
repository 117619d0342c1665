"""Nothing silently wrong in the engine: in-place writes into arrays a graph will read,
backward on several threads into shared leaves, and numeric edge cases that must match
PyTorch or raise."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import tinygrad_cnn as tc
from tinygrad_cnn import Tensor, no_grad
from tinygrad_cnn.tensor import writing


def leaf(values):
    return Tensor(np.array(values, dtype=np.float64), requires_grad=True)


# --------------------------------------------------------------------- in-place writes

def test_writing_into_a_saved_parameter_is_refused():
    x, w = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    loss = (x * w).sum()
    with pytest.raises(ValueError, match="read-only"):
        w.data[...] = 100
    loss.backward()
    np.testing.assert_allclose(x.grad, [3.0, 4.0])
    w.data[...] = 100  # after backward the graph no longer needs it


@pytest.mark.parametrize("route", ["source_array", "detach", "output", "numpy"])
def test_every_way_to_reach_a_saved_array_is_refused(route):
    source = np.array([1.0, 2.0, 3.0])
    x = Tensor(source, requires_grad=True)
    y = x.log()  # log's VJP reads its input, and mul's reads y
    z = (y * y).sum()
    target = {"source_array": source, "detach": x.detach().data, "output": y.data, "numpy": y.numpy()}[route]
    with pytest.raises(ValueError, match="read-only"):
        target[0] = 0.0
    z.backward()
    np.testing.assert_allclose(x.grad, 2 * np.log(source) / source)


@pytest.mark.parametrize("view", ["reshape", "transpose", "getitem"])
def test_the_array_under_a_saved_view_is_refused_too(view):
    """Reshape, transpose and slicing read nothing in their VJP, so only the view is read by
    the next op (matmul): its base, the parameter's own array, must be held with it."""
    w = leaf([[1.0, 2.0], [3.0, 4.0]])
    x = leaf([[1.0, -1.0]])
    v = {"reshape": lambda: w.reshape(2, 2), "transpose": lambda: w.T, "getitem": lambda: w[:, :]}[view]()
    loss = (x @ v).sum()
    with pytest.raises(ValueError, match="read-only"):
        w.data[0, 0] = 100.0
    loss.backward()
    np.testing.assert_allclose(x.grad, np.asarray(v).sum(axis=1, keepdims=True).T)


def test_an_array_no_vjp_reads_stays_writable():
    """add's VJP reads no values, so the graph does not hold its operands (PyTorch saves
    nothing for add either): writing into one changes no gradient."""
    x, b = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    loss = (x + b).sum()
    b.data[...] = 100.0
    loss.backward()
    np.testing.assert_allclose(x.grad, [1.0, 1.0])
    np.testing.assert_allclose(b.grad, [1.0, 1.0])


def test_a_dropped_graph_unlocks_its_arrays():
    w = leaf([1.0, 2.0])
    loss = (w * w).sum()
    del loss
    w.data[0] = 5.0  # no backward, but nothing can run it any more
    assert w.data[0] == 5.0


def test_an_optimizer_step_between_forward_and_backward_is_reported_by_backward():
    w = leaf([1.0, 2.0])
    w.grad = Tensor(np.ones(2))
    opt = tc.optim.SGD([w], lr=0.1)
    loss = (w * w).sum()
    opt.step()  # the framework's own write is allowed ...
    np.testing.assert_allclose(w.data, [0.9, 1.9])
    with pytest.raises(RuntimeError, match=r"modified in place: input \d of 'mul'.*SGD.step"):
        loss.backward()  # ... but the graph that read the old values refuses to differentiate them


def test_framework_writes_after_backward_are_silent():
    w = leaf([1.0, 2.0])
    loss = (w * w).sum()
    loss.backward()
    with writing(w.data, "test"):
        w.data -= 0.1 * w.grad.data
    (w * w).sum().backward()  # a new graph over the new values


def test_views_made_of_locked_arrays_unlock_when_released():
    w = leaf(np.arange(6.0).reshape(2, 3))
    w_t = w.T
    out = (w_t @ w).sum()
    assert not w_t.data.flags.writeable and not w.data.flags.writeable
    out.backward()
    w.data[0, 0] = 7.0
    assert w_t.data.flags.writeable  # the transposed view was released with the graph


# --------------------------------------------------------------------- threads

def test_backward_on_several_threads_into_shared_leaves_loses_no_update():
    w = Tensor(np.zeros(10_000, dtype=np.float32), requires_grad=True)
    barrier = threading.Barrier(4)

    def work():
        barrier.wait()
        for _ in range(50):
            (w * 1.0).sum().backward()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(w.grad, np.full(10_000, 200.0, dtype=np.float32))


# --------------------------------------------------------------------- numeric edge cases

def test_pow_zero_has_a_zero_gradient_everywhere():
    x = leaf([0.0, 2.0, -1.0])
    (x ** 0).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 0.0])
    x.grad = None
    (x ** 1).sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0, 1.0, 1.0])


def test_the_mean_of_nothing_is_nan():
    with np.errstate(invalid="ignore"):
        assert np.isnan(Tensor(np.zeros((0, 3))).mean().item())
        assert np.isnan(Tensor(np.zeros((0, 3))).mean(axis=0).data).all()
        assert Tensor(np.zeros((0, 3))).mean(axis=1).shape == (0,)


@pytest.mark.parametrize("call", [
    lambda: Tensor(np.zeros(8)).reshape(3.9, 2),
    lambda: tc.zeros(2.5),
    lambda: tc.ones((2, 1.5)),
    lambda: tc.randn(2.0, seed=0),
    lambda: Tensor(np.zeros(4)).expand(2.0, 4),
])
def test_float_sizes_are_errors_not_truncated(call):
    with pytest.raises(TypeError, match="sizes must be integers"):
        call()


def test_negative_sizes_are_errors():
    with pytest.raises(ValueError, match="non-negative"):
        tc.zeros(-2)
    assert Tensor(np.zeros(6)).reshape(-1, 2).shape == (3, 2)


def test_no_grad_on_a_generator_covers_its_body():
    x = leaf([1.0])

    @no_grad()
    def gen():
        for _ in range(3):
            yield tc.is_grad_enabled(), (x * 2.0).requires_grad

    seen = []
    for item in gen():
        seen.append(item)
        assert tc.is_grad_enabled()  # the caller's mode between resumptions
    assert seen == [(False, False)] * 3

    @tc.enable_grad()
    def gen2():
        yield tc.is_grad_enabled()

    with no_grad():
        assert list(gen2()) == [True]


def test_nodes_freed_by_the_garbage_collector_inside_a_lock_do_not_deadlock():
    """Op.__del__ runs wherever the collector runs, also inside the lock bookkeeping of
    another node on the same thread: it must not wait for the lock (it used to hang)."""
    import gc

    import tinygrad_cnn.tensor as engine

    x = Tensor(np.ones(3), requires_grad=True)
    old = gc.get_threshold()
    try:
        for threshold in range(1, 30):
            gc.set_threshold(threshold)
            for _ in range(50):
                y = x.tanh()
                y.grad_fn.cycle = y.grad_fn  # a cycle: only the collector frees it
                del y
                z = x.tanh()
    finally:
        gc.set_threshold(*old)
    del z
    gc.collect()
    (x * 2.0).sum()  # the next lock releases whatever a collected node left behind
    assert x.data.flags.writeable and not engine._locks._orphans


def test_grad_accepts_only_a_tensor_of_the_right_shape_and_dtype():
    w = leaf([1.0, 2.0])
    with pytest.raises(TypeError, match="a gradient is a Tensor"):
        w.grad = np.ones(2)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        w.grad = Tensor(np.ones(3))
    with pytest.raises(ValueError, match="dtype float32"):
        w.grad = Tensor(np.ones(2, dtype=np.float32))
    w.grad = Tensor(np.ones(2))
    w.grad = None
