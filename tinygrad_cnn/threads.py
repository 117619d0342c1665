"""Threads inside the framework: a pool for memory-bound kernels, the flag that keeps a
thread's kernels on that thread, and the shard groups of a batch split over threads.
Grad mode aside, everything here is thread-local or guarded."""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

_pool = None
# ``fn(seconds)`` of the active profiler (tinygrad_cnn.profile), told of every wait for the
# other shards of a batch, so that the time a shard spends idle at an exchange point is not
# counted as the time of the op it waited in; None when no profiler is on.
wait_listener = None
_MIN_PARALLEL = 1 << 20  # elements; below this a thread hand-off costs more than it saves
_serial = threading.local()  # .on: this thread's ops must not fan out (see run_serially)
_CPUS = max(1, os.cpu_count() or 1)  # asked once: the call costs ~10 us, and ops ask on every call


def num_threads() -> int:
    """Threads for copy-heavy primitives: ``$TINYGRAD_CNN_THREADS``, else the CPU count."""
    value = os.environ.get("TINYGRAD_CNN_THREADS")
    return max(1, int(value)) if value else _CPUS


def parallel_ranges(n: int, fn, work: int) -> None:
    """Call ``fn(lo, hi)`` over a split of ``range(n)``, on several threads when ``work`` (elements
    touched) is large. numpy releases the GIL inside copies and ufuncs, so the copy-heavy parts
    of im2col/col2im use every core, as BLAS does for the GEMMs. Each part writes its own slice.
    The calling thread does the first part itself: handing every part to the pool and waiting
    would cost one more thread wake-up (~40-80 us here) on every call."""
    global _pool
    threads = min(num_threads(), n)
    if threads < 2 or work < _MIN_PARALLEL or getattr(_serial, "on", False):
        fn(0, n)
        return
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=num_threads(), thread_name_prefix="tinygrad_cnn")
    bounds = [n * k // threads for k in range(threads + 1)]
    futures = [_pool.submit(fn, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:]) if hi > lo]
    try:
        fn(bounds[0], bounds[1])
    finally:
        for f in futures:
            f.exception()  # every part has finished before anyone reads (or frees) the output
    for f in futures:
        f.result()  # re-raises a worker's exception here


@contextmanager
def run_serially():
    """Inside the block, ops called from this thread do their work on this thread alone (for
    callers that already keep every core busy with threads of their own)."""
    prev = getattr(_serial, "on", False)
    _serial.on = True
    try:
        yield
    finally:
        _serial.on = prev


# ------------------------------------------------------------------ shards of one batch


class ShardGroup:
    """The threads that each run one shard of a batch at the same time (``tinygrad_cnn.
    parallel``). An op whose result depends on the whole batch, such as BatchNorm's
    statistics, hands its shard's partial results to ``gather`` and gets every shard's back,
    in shard order, so that every thread combines them the same way, to the same bits."""

    def __init__(self, size: int):
        self.size = size
        self._slots = ([None] * size, [None] * size)  # alternate rounds: a thread may write the
        self._rounds = [0] * size                     # next before another has read this one
        self._barrier = threading.Barrier(size)

    def gather(self, rank: int, what: str, value):
        """Wait for every shard to reach the same point; return their values in shard order.
        ``what`` names the point; shards arriving at different points (a forward pass that
        differs between them) raise instead of pairing the wrong values."""
        slots = self._slots[self._rounds[rank] % 2]
        self._rounds[rank] += 1
        slots[rank] = (what, value)
        listener, started = wait_listener, time.perf_counter()
        self._barrier.wait()
        if listener is not None:
            listener(time.perf_counter() - started)
        arrived = list(slots)
        if any(w != what for w, _ in arrived):
            raise RuntimeError(f"{what}: the shards of the batch reached different points "
                               f"({', '.join(w for w, _ in arrived)}); every shard must run the same ops")
        return [v for _, v in arrived]

    def abort(self):
        """Wake every shard waiting in ``gather`` with ``threading.BrokenBarrierError``: one
        of them failed and will not arrive."""
        self._barrier.abort()


_shard = threading.local()  # .value: (group, rank) while this thread runs one shard of a batch


@contextmanager
def batch_shard(group: ShardGroup, rank: int):
    """Inside the block, this thread's ops run shard ``rank`` of ``group``'s batch."""
    prev = getattr(_shard, "value", None)
    _shard.value = (group, rank)
    try:
        yield
    finally:
        _shard.value = prev


def current_shard():
    """``(group, rank)`` when this thread runs one shard of a batch, else None."""
    return getattr(_shard, "value", None)
