"""tc.grad, gradient accumulation over micro-batches on threads, and the BLAS-side helpers
the fast paths rely on (thread count control, product orientation)."""
from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_cnn as tc
import tinygrad_cnn.functional as F
import tinygrad_cnn.threads as pool
from tinygrad_cnn import Tensor, blas, nn, parallel
from tinygrad_cnn.kernels.gemm import product
from models import SeedCNN


# ------------------------------------------------------------------------------ tc.grad


def test_grad_matches_backward_and_leaves_dot_grad_alone():
    rng = np.random.default_rng(0)
    w = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    x = Tensor(rng.standard_normal((5, 3)), requires_grad=True)
    h = (x @ w).tanh()
    gw, gx, gh = tc.grad((h * h).sum(), [w, x, h], retain_graph=True)
    assert w.grad is None and x.grad is None
    (h * h).sum().backward()
    np.testing.assert_allclose(gw, w.grad, rtol=1e-12)
    np.testing.assert_allclose(gx, x.grad, rtol=1e-12)
    np.testing.assert_allclose(gh, 2 * h.numpy(), rtol=1e-12)  # an intermediate tensor


def test_grad_returns_none_for_unreached_inputs_only_when_allowed_and_fresh_arrays():
    a = Tensor(np.ones(3), requires_grad=True)
    b = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"grad: input 1 \(shape \(3,\)\) was not used .* allow_unused=True"):
        tc.grad((a + a).sum(), [a, b])
    ga, gb = tc.grad((a + a).sum(), [a, b], allow_unused=True)
    assert gb is None
    np.testing.assert_array_equal(ga, 2.0)
    c = Tensor(np.ones(2), requires_grad=True)
    g1, g2 = tc.grad((c + 0.0).sum(), [c, c])
    g1.data += 1  # the caller owns what it gets back
    np.testing.assert_array_equal(g2, 1.0)


def test_grad_takes_an_upstream_gradient_and_frees_the_graph():
    x = Tensor(np.arange(3.0), requires_grad=True)
    y = x * 2.0
    (g,) = tc.grad(y, [x], grad_output=np.array([1.0, 10.0, 100.0]))
    np.testing.assert_array_equal(g, [2.0, 20.0, 200.0])
    with pytest.raises(RuntimeError, match="grad: the graph through 'mul' was already freed"):
        tc.grad(y, [x], grad_output=np.ones(3))


def test_grad_errors_name_the_problem():
    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(TypeError, match="grad: inputs must be Tensors; input 0 is a ndarray"):
        tc.grad(x.sum(), [np.ones(3)])
    with pytest.raises(RuntimeError, match="grad: grad can be implied only for a one-element output"):
        tc.grad(x * 2.0, [x])
    with pytest.raises(RuntimeError, match="grad: this tensor does not require grad"):
        tc.grad(Tensor(np.ones(3)).sum(), [x])


# -------------------------------------------------------------- accumulate_gradients


def _seed_cnn_batch(n, seed=0, dtype=np.float64):
    tc.manual_seed(seed)
    model = SeedCNN(image_size=8)
    model.astype(dtype)
    rng = np.random.default_rng(seed)
    return model, rng.standard_normal((n, 3, 8, 8)).astype(dtype), rng.integers(0, 10, n)


def _loss_fn(model):
    return lambda x, y: F.cross_entropy(model(Tensor(x)), y)


def _full_batch_grads(model, x, y):
    model.zero_grad()
    loss = _loss_fn(model)(x, y)
    loss.backward()
    return loss.item(), [p.grad.data.copy() for p in model.parameters()]


@settings(max_examples=8, deadline=None)
@given(st.integers(5, 13), st.integers(1, 6), st.integers(1, 3))
def test_micro_batches_give_the_full_batch_gradient(n, micro_batch, threads):
    model, x, y = _seed_cnn_batch(n)
    want_loss, want = _full_batch_grads(model, x, y)
    model.zero_grad()
    loss = tc.parallel.accumulate_gradients(_loss_fn(model), (x, y), model.parameters(), micro_batch, threads)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    for p, g in zip(model.parameters(), want):
        np.testing.assert_allclose(p.grad, g, rtol=1e-10, atol=1e-12)


def test_micro_batches_on_threads_are_deterministic_and_accumulate_like_backward():
    model, x, y = _seed_cnn_batch(40, dtype=np.float32)
    runs = []
    for _ in range(2):
        model.zero_grad()
        tc.parallel.accumulate_gradients(_loss_fn(model), (x, y), model.parameters(), 7, threads=2)
        runs.append([p.grad.data.copy() for p in model.parameters()])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)  # the same bits every time
    tc.parallel.accumulate_gradients(_loss_fn(model), (x, y), model.parameters(), 7, threads=2)
    for p, once in zip(model.parameters(), runs[0]):
        np.testing.assert_allclose(p.grad, 2 * once, rtol=1e-6)  # added to .grad, as backward() does


def test_micro_batches_return_joined_outputs_in_batch_order():
    model, x, y = _seed_cnn_batch(9)

    def fn(xb, yb):
        logits = model(Tensor(xb))
        return F.cross_entropy(logits, yb), logits.numpy()

    loss, logits = tc.parallel.accumulate_gradients(fn, (x, y), model.parameters(), 2, threads=2)
    with tc.no_grad():
        np.testing.assert_allclose(logits, model(Tensor(x)).numpy(), rtol=1e-12)
    assert loss == pytest.approx(F.cross_entropy(Tensor(logits), y).item(), rel=1e-12)


def test_micro_batch_workers_run_ops_serially_with_one_blas_thread(monkeypatch):
    """Inside the workers, kernels do not fan out to the copy threads' pool."""
    if not blas.can_set_blas_threads():
        pytest.skip("numpy's BLAS thread count cannot be set here: micro-batches run on one thread")
    seen = []
    real = pool.num_threads

    def spy():  # parallel_ranges asks it first, whichever kernel calls it
        seen.append((threading.current_thread().name, getattr(pool._serial, "on", False)))
        return real()

    monkeypatch.setattr(pool, "num_threads", spy)
    monkeypatch.setattr(parallel, "blas_threads", _spy_blas_threads(seen))
    model, x, y = _seed_cnn_batch(6)
    tc.parallel.accumulate_gradients(_loss_fn(model), (x, y), model.parameters(), 3, threads=2)
    assert seen[0] == ("blas_threads", 1)
    kernels = seen[1:]
    assert kernels and all(name.startswith("tinygrad_cnn-micro") and serial for name, serial in kernels)
    assert not getattr(pool._serial, "on", False)


def _spy_blas_threads(seen):
    real = blas.blas_threads

    def spy(n):
        seen.append(("blas_threads", n))
        return real(n)

    return spy


def test_accumulate_gradients_errors():
    model, x, y = _seed_cnn_batch(4)
    params = list(model.parameters())
    acc = tc.parallel.accumulate_gradients
    with pytest.raises(ValueError, match="micro_batch must be a positive int; got 0"):
        acc(_loss_fn(model), (x, y), params, 0)
    with pytest.raises(TypeError, match="threads must be a positive int; got 1.5"):
        acc(_loss_fn(model), (x, y), params, 2, threads=1.5)
    with pytest.raises(ValueError, match=r"arrays must share a non-empty first axis; got lengths \[4, 3\]"):
        acc(_loss_fn(model), (x, y[:3]), params, 2)
    with pytest.raises(TypeError, match="fn must return a one-element loss Tensor"):
        acc(lambda xb, yb: model(Tensor(xb)), (x, y), params, 2)
    with pytest.raises(TypeError, match="params must be Tensors; item 0 is a ndarray"):
        acc(_loss_fn(model), (x, y), [np.ones(2)], 2)
    with tc.no_grad(), pytest.raises(RuntimeError, match="called under no_grad"):
        acc(_loss_fn(model), (x, y), params, 2)


def test_a_worker_error_reaches_the_caller():
    model, x, y = _seed_cnn_batch(4)

    def broken(xb, yb):
        raise ValueError("boom in the forward")

    with pytest.raises(ValueError, match="boom in the forward"):
        tc.parallel.accumulate_gradients(broken, (x, y), model.parameters(), 1, threads=2)


# ------------------------------------------------------------------------ shards with BatchNorm


class _BatchNormNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> pool -> BatchNorm over features -> linear: both kinds of
    batch statistics (per channel over N, H, W and per feature over N)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 10)
        self.g, self.b = nn.Parameter(np.ones(64)), nn.Parameter(np.zeros(64))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2).flatten(1)
        return self.fc(F.batch_norm(x, None, None, self.g, self.b, training=True))


def _bn_batch(n, seed=0):
    tc.manual_seed(seed)
    model = _BatchNormNet()
    model.astype(np.float64)
    rng = np.random.default_rng(seed)
    return model, rng.standard_normal((n, 3, 8, 8)) * 2 + 1, rng.integers(0, 10, n)


@pytest.mark.parametrize("n, micro_batch, threads", [(8, 4, 2), (7, 3, 3), (9, 5, 2), (6, 6, 2)])
def test_shards_with_synced_batch_norm_give_the_full_batch_gradient_and_statistics(n, micro_batch, threads):
    model, x, y = _bn_batch(n)
    want_loss, want = _full_batch_grads(model, x, y)
    want_state = {k: v.copy() for k, v in model.state_dict().items()}
    model, x, y = _bn_batch(n)
    runs = []
    for _ in range(2):
        model.zero_grad()
        state = {k: v.copy() for k, v in model.state_dict().items()}
        loss = tc.parallel.accumulate_gradients(_loss_fn(model), (x, y), model.parameters(), micro_batch, threads,
                                                sync_batch_norm=True)
        runs.append((loss, [p.grad.data.copy() for p in model.parameters()], model.state_dict()))
        if not runs[1:]:
            for k, v in model.state_dict().items():  # one update of the running statistics per batch
                np.testing.assert_allclose(v, want_state[k], rtol=1e-12, atol=1e-15, err_msg=k)
            model.load_state_dict(state)  # the second run starts where the first did
    (loss, grads, _), (loss2, grads2, _) = runs
    assert loss == pytest.approx(want_loss, rel=1e-12)
    for got, again, g in zip(grads, grads2, want):
        np.testing.assert_allclose(got, g, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(got, again)  # the same bits every run


def test_unsynced_shards_use_their_own_statistics():
    """Without sync_batch_norm each micro-batch normalises by itself (the documented
    difference), which the synced test above would catch."""
    model, x, y = _bn_batch(8)
    _, want = _full_batch_grads(model, x, y)
    model.zero_grad()
    tc.parallel.accumulate_gradients(_loss_fn(model), (x, y), model.parameters(), 4, 2)
    assert not np.allclose(next(iter(model.parameters())).grad, want[0], rtol=1e-6)


def test_synced_shards_without_blas_control_run_as_one_batch(monkeypatch):
    model, x, y = _bn_batch(8)
    _, want = _full_batch_grads(model, x, y)
    monkeypatch.setattr(parallel, "can_set_blas_threads", lambda: False)
    monkeypatch.setattr(parallel, "ShardGroup", None)  # never built: one shard needs no group
    model.zero_grad()
    tc.parallel.accumulate_gradients(_loss_fn(model), (x, y), model.parameters(), 4, 2, sync_batch_norm=True)
    for p, g in zip(model.parameters(), want):
        np.testing.assert_allclose(p.grad, g, rtol=1e-10, atol=1e-12)


def test_synced_shards_need_one_micro_batch_per_thread():
    model, x, y = _bn_batch(8)
    with pytest.raises(ValueError, match="one micro-batch per thread; a batch of 8 in micro-batches of 2 makes 4, "
                                         "for 2 threads"):
        tc.parallel.accumulate_gradients(_loss_fn(model), (x, y), model.parameters(), 2, 2, sync_batch_norm=True)


def _run_with_deadline(fn, seconds=20):
    """Run ``fn`` on a thread and return what it raised; fail (instead of hanging) if it
    does not finish: a shard left waiting for another would never return."""
    raised = []

    def target():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            raised.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "accumulate_gradients did not return: a shard is still waiting"
    return raised


def test_a_failing_shard_does_not_leave_the_others_waiting():
    model, x, y = _bn_batch(8)

    def fn(xb, yb):
        if xb[0, 0, 0, 0] == x[4, 0, 0, 0]:  # the second shard fails before its BatchNorm
            raise ValueError("boom in shard 1")
        return _loss_fn(model)(xb, yb)

    raised = _run_with_deadline(lambda: tc.parallel.accumulate_gradients(
        fn, (x, y), model.parameters(), 4, 2, sync_batch_norm=True))
    assert len(raised) == 1 and isinstance(raised[0], ValueError) and "boom in shard 1" in str(raised[0])


def test_shards_that_run_different_ops_raise_instead_of_mixing_statistics():
    model, x, y = _bn_batch(8)

    def fn(xb, yb):
        if xb[0, 0, 0, 0] == x[4, 0, 0, 0]:  # the second shard normalises once more
            model.bn(model.conv(Tensor(xb)))
        return _loss_fn(model)(xb, yb)

    raised = _run_with_deadline(lambda: tc.parallel.accumulate_gradients(
        fn, (x, y), model.parameters(), 4, 2, sync_batch_norm=True))
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError)
    assert "shards of the batch reached different points" in str(raised[0])


# ------------------------------------------------------------------------ BLAS helpers


def _blas_thread_counts():
    from threadpoolctl import threadpool_info

    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_blas_threads_sets_and_restores_the_count():
    if not blas.can_set_blas_threads():
        pytest.skip("threadpoolctl finds no BLAS it can control here")
    before = _blas_thread_counts()
    with blas.blas_threads(1) as ok:
        assert ok and _blas_thread_counts() == [1] * len(before)
    assert _blas_thread_counts() == before


def test_blas_threads_changes_nothing_without_a_known_blas(monkeypatch):
    class NoBlas:
        lib_controllers = []

        def limit(self, limits):  # pragma: no cover - must not be reached
            raise AssertionError("blas_threads tried to limit a BLAS it does not know")

    monkeypatch.setattr(blas, "_blas", NoBlas)
    assert not blas.can_set_blas_threads()
    with blas.blas_threads(1) as ok:
        assert ok is False


@pytest.mark.parametrize("shapes", [((3, 50), (50, 7)), ((7, 50), (50, 3)), ((2, 3), (3, 9)),
                                    ((30, 50), (50, 20)), ((20, 90), (90, 30))])  # small and large results
@pytest.mark.parametrize("layouts", ["CC", "CF", "FC", "FF"])
def test_product_equals_matmul_in_every_layout(shapes, layouts):
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(s) for s in shapes)
    a = a if layouts[0] == "C" else np.asfortranarray(a)
    b = b if layouts[1] == "C" else np.asfortranarray(b)
    np.testing.assert_allclose(product(a, b), a @ b, rtol=1e-12)


@pytest.mark.parametrize("shapes", [((4, 3, 200), (4, 200, 5)),      # stacks with a long shared axis: 2-d loop
                                    ((3, 2, 50), (3, 50, 2)), ((2, 6, 1), (2, 1, 40)),  # outer products
                                    ((5, 1), (1, 7)), ((2, 1, 3, 1), (4, 1, 5)),        # broadcast batches
                                    ((3, 4, 5), (3, 5, 6))])                            # the plain path
@pytest.mark.parametrize("transposed_b", [False, True])
def test_product_of_stacks_equals_matmul(shapes, transposed_b):
    """The stacked paths of kernels.gemm.product (a grouped convolution's products): one 2-d
    product per slice for long shared axes, one broadcast multiply for outer products."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal(shapes[0])
    b = rng.standard_normal(shapes[1][:-2] + shapes[1][:-3:-1]).swapaxes(-1, -2) if transposed_b \
        else rng.standard_normal(shapes[1])
    got = product(a, b)
    assert got.shape == (a @ b).shape
    np.testing.assert_allclose(got, a @ b, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1) < 2,
                    reason="needs a second core for this thread to run beside the worker")
def test_a_product_with_a_small_result_lets_other_threads_run():
    # numpy's matmul keeps the GIL when the result has at most 500 elements, so a
    # convolution's weight gradient (16 x 28 here, summed over many pixels) would stall the
    # other micro-batch thread for its whole run. While the worker is inside product(),
    # this thread must still be running Python: some of its time stamps fall inside the
    # worker's calls (with the GIL kept, none can).
    rng = np.random.default_rng(0)
    a = rng.standard_normal((16, 1 << 18), dtype=np.float32)
    b = rng.standard_normal((28, 1 << 18), dtype=np.float32).T
    calls, done, stamps = [], threading.Event(), []

    def work():
        for _ in range(3):
            t0 = time.perf_counter()
            product(a, b)
            calls.append((t0, time.perf_counter()))
        done.set()

    with blas.blas_threads(1):
        worker = threading.Thread(target=work)
        worker.start()
        while not done.is_set():
            stamps.append(time.perf_counter())
        worker.join()
    stamps = np.array(stamps)
    inside = sum(int(((stamps > t0) & (stamps < t1)).sum()) for t0, t1 in calls)
    assert inside > 0, f"no time stamp of this thread fell inside the worker's {len(calls)} products"


def test_batch_norm_models_are_not_micro_batched_by_the_trainer():
    """BatchNorm statistics would be per micro-batch: the training script refuses that."""
    from train.cifar10 import uses_batch_statistics
    from models import FastCNN

    assert uses_batch_statistics(FastCNN())
    assert not uses_batch_statistics(SeedCNN())
    assert uses_batch_statistics(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm2d(2)))


_REUSE_PROBE = """
import resource, sys, threading
import numpy as np
from tinygrad_cnn.allocator import reuse_freed_memory
if sys.argv[1] == "on":
    assert reuse_freed_memory()
faults = []
def worker():
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        a = np.ones(80 << 18, dtype=np.float32)  # 80 MiB, written: every page touched
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
        del a
t = threading.Thread(target=worker)
t.start(); t.join()
print(faults[-1])
"""


@pytest.mark.skipif(not hasattr(resource, "RUSAGE_THREAD") or platform.libc_ver()[0] != "glibc",
                    reason="needs glibc on Linux")
def test_reuse_freed_memory_lets_worker_threads_reuse_big_blocks():
    # Micro-batches allocate their columns and activations on worker threads. By default glibc
    # serves a big block there with a fresh mmap and unmaps it when freed, so every step
    # faults (and the kernel zeroes) those pages again; once set, the third round reuses the
    # first round's pages.
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _REUSE_PROBE, mode], capture_output=True, text=True,
                             check=True)
        return int(out.stdout)

    assert faults("off") >= 10  # 40 huge pages or 20480 small ones: the probe sees the faults
    assert faults("on") < 5


# ------------------------------------------------------------------------ copy threads


def test_parallel_ranges_covers_the_range_once_with_the_caller_doing_a_part(monkeypatch):
    monkeypatch.setenv("TINYGRAD_CNN_THREADS", "3")
    seen, lock = [], threading.Lock()

    def part(lo, hi):
        with lock:
            seen.append((lo, hi, threading.current_thread() is threading.main_thread()))

    pool.parallel_ranges(10, part, pool._MIN_PARALLEL)
    assert sorted(r[:2] for r in seen) == [(0, 3), (3, 6), (6, 10)]
    assert [r[:2] for r in seen if r[2]] == [(0, 3)]  # the caller's own part; the others ran on the pool
    seen.clear()
    pool.parallel_ranges(10, part, pool._MIN_PARALLEL - 1)  # too little work: one call, here
    assert seen == [(0, 10, True)]


@pytest.mark.parametrize("failing", ["caller", "worker"])
def test_parallel_ranges_raises_only_after_every_part_has_finished(monkeypatch, failing):
    """A part that fails must not let the caller go on (and free the output) while another
    part still writes into it."""
    monkeypatch.setenv("TINYGRAD_CNN_THREADS", "2")
    finished = []

    def part(lo, hi):
        if (lo == 0) == (failing == "caller"):
            raise ValueError(f"boom in part {lo}")
        time.sleep(0.05)
        finished.append(lo)

    with pytest.raises(ValueError, match="boom in part"):
        pool.parallel_ranges(4, part, pool._MIN_PARALLEL)
    assert finished == ([2] if failing == "caller" else [0])
