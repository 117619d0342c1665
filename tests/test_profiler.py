"""The built-in profiler users turn on with ``tc.profile()`` or ``TINYGRAD_CNN_PROFILE=1``."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

import tinygrad_cnn as tc
import tinygrad_cnn.functional as F
from tinygrad_cnn import Tensor, tensor
from models import SeedCNN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _step(model, n=4):
    rng = np.random.default_rng(0)
    loss = F.cross_entropy(model(Tensor(rng.standard_normal((n, 3, 8, 8)).astype(np.float32))),
                           rng.integers(0, 10, n))
    loss.backward()


def test_profile_times_each_primitive_forward_and_backward():
    model = SeedCNN(image_size=8)
    with tc.profile() as prof:
        _step(model)
    rows = {name: (calls, f, b) for name, calls, f, b, _ in prof.rows()}
    assert rows["im2col"][0] == 2 and rows["max_pool2d"][0] == 2 and rows["matmul"][0] == 4
    assert all(f > 0 for _, f, _ in rows.values())
    assert rows["matmul"][2] > 0 and rows["max_pool2d"][2] > 0  # VJPs timed too
    assert 0 < prof.ops_time() <= prof.wall
    table = prof.table()
    assert table.splitlines()[0].split() == ["op", "calls", "forward", "ms", "backward", "ms", "total", "ms", "share"]
    assert "(not in ops)" in table and "wall" in table
    assert tensor._profiler is None  # off again after the block: ops pay one check


def test_primitives_a_vjp_runs_count_in_that_vjp_only():
    rng = np.random.default_rng(0)
    a = Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    b = Tensor(rng.standard_normal((3, 5)), requires_grad=True)
    with tc.profile() as prof:
        (a @ b).relu().sum().backward()  # matmul's VJP runs two matmuls, relu's a relu_backward
    rows = {name: (calls, f, b) for name, calls, f, b, _ in prof.rows()}
    assert rows["matmul"][0] == 1 and rows["relu"][0] == 1 and rows["sum"][0] == 1
    assert "relu_backward" not in rows  # only ever run inside relu's VJP: its time is relu's backward
    assert all(b > 0 for _, _, b in rows.values())
    assert 0 < prof.ops_time() <= prof.wall  # nothing counted twice


def test_profile_counts_ops_of_micro_batches_on_threads():
    model = SeedCNN(image_size=8)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3, 8, 8)).astype(np.float32), rng.integers(0, 10, 8)
    with tc.profile() as prof:
        tc.parallel.accumulate_gradients(lambda xb, yb: F.cross_entropy(model(Tensor(xb)), yb), (x, y),
                                         model.parameters(), 2, threads=2)
    calls = {name: c for name, c, *_ in prof.rows()}
    assert calls["im2col"] == 2 * 4 and calls["matmul"] == 4 * 4  # every micro-batch's ops, none lost


def test_profile_env_var_prints_a_table_at_exit():
    code = ("import numpy as np, tinygrad_cnn as tc\n"
            "x = tc.Tensor(np.ones((2, 3)), requires_grad=True)\n"
            "(x * x).sum().backward()\n")
    env = dict(os.environ, TINYGRAD_CNN_PROFILE="1", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "tinygrad_cnn profile (TINYGRAD_CNN_PROFILE=1)" in out
    assert "mul" in out and "sum" in out and "wall" in out


def _late_shard_step(monkeypatch, delay):
    """One synchronised-BatchNorm step of two shards on two threads, shard 1 arriving
    ``delay`` seconds late at BatchNorm's forward and at its backward exchange."""
    from tinygrad_cnn import nn
    from tinygrad_cnn.kernels import norm as norm_kernels
    from tinygrad_cnn.threads import current_shard

    backward = norm_kernels.batch_norm_backward

    def late_backward(*args, **kwargs):
        if current_shard()[1] == 1:
            time.sleep(delay)
        return backward(*args, **kwargs)

    monkeypatch.setattr(norm_kernels, "batch_norm_backward", late_backward)
    rng = np.random.default_rng(0)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1, rng=rng), nn.BatchNorm2d(4)
    x = rng.standard_normal((8, 3, 6, 6)).astype(np.float32)

    def loss_fn(xb):
        if current_shard()[1] == 1:
            time.sleep(delay)
        h = bn(conv(Tensor(xb)))
        return (h * h).mean()

    with tc.profile() as prof:
        tc.parallel.accumulate_gradients(loss_fn, (x,), [*conv.parameters(), *bn.parameters()], 4, threads=2,
                                         sync_batch_norm=True)
    return prof


def test_shards_waiting_for_each_other_are_a_row_of_their_own(monkeypatch):
    delay = 0.3
    prof = _late_shard_step(monkeypatch, delay)
    rows = {name: (calls, f, b) for name, calls, f, b, _ in prof.rows()}
    # shard 0 waited ~delay at BatchNorm's forward exchange and ~delay at its backward one
    assert prof.wait >= 1.6 * delay and prof.waits >= 4
    # BatchNorm's rows hold its kernels' time: shard 1's sleep in the backward (its own
    # compute, as far as any profiler can tell), not shard 0's two waits for shard 1
    assert rows["batch_norm"][1] < 0.5 * delay
    assert delay <= rows["batch_norm"][2] < 1.5 * delay
    assert all(f >= 0 and b >= 0 for _, f, b in rows.values())
    lines = {line.split()[0]: line for line in prof.table().splitlines()}
    assert "(shard" in lines  # "(shard wait)": the calls column counts the exchanges waited at
    assert int(lines["(shard"].split()[2]) == prof.waits


def test_waits_inside_a_vjp_are_taken_out_once():
    prof = tc.profile()
    with prof:
        assert tensor._profiler is prof
        t0 = time.perf_counter()
        time.sleep(0.2)
        prof.record_wait(0.15)  # a wait inside an op that runs inside a VJP
        prof.record("inner", "forward", time.perf_counter() - t0)
        time.sleep(0.1)
        prof.record("outer", "backward", time.perf_counter() - t0)
    rows = {name: (calls, f, b) for name, calls, f, b, _ in prof.rows()}
    assert "inner" not in rows  # its time is the VJP's
    assert 0.1 <= rows["outer"][2] < 0.25  # 0.3 s less the 0.15 s wait: not less twice (0), nor kept (0.3)
    assert prof.wait == 0.15 and prof.waits == 1
