"""A batch's gradient computed over micro-batches, optionally on several threads at once.

One forward/backward pass over a large batch streams every activation and im2col column
through main memory; split into micro-batches of a few dozen images, they stay in the CPU
caches. With ``threads=2`` two micro-batches run at the same time, one per core, each with
single-threaded BLAS: numpy releases the GIL in its copies, ufuncs and GEMMs, so the
memory-bound half of a step (pooling, im2col, elementwise ops), which numpy runs on one
core, uses both.

The result is the gradient of the batch's mean loss, accumulated into ``.grad`` as
``backward()`` would, when the loss is a mean over examples and nothing in the model mixes
examples. BatchNorm in training mode does: alone, each micro-batch would be normalised by
its own statistics; with ``sync_batch_norm=True`` the micro-batches run as shards of one
batch, one per thread, that share the whole batch's statistics (``ops/norm.py``). The
sums run in a fixed order, so a given ``micro_batch`` and ``threads`` always give the same
bits; a different split differs only by rounding.
"""
from __future__ import annotations

import operator
import threading
from concurrent.futures import ThreadPoolExecutor, wait

from .blas import blas_threads, can_set_blas_threads
from .tensor import Tensor, _accumulate, grad, is_grad_enabled
from .threads import ShardGroup, batch_shard, run_serially
from .xp import array_module

__all__ = ["accumulate_gradients"]

_executors: dict[int, ThreadPoolExecutor] = {}


def accumulate_gradients(fn, arrays, params, micro_batch, threads=1, sync_batch_norm=False):
    """Add the gradient of the batch's mean loss to each parameter's ``.grad``.

    ``arrays`` (a sequence of arrays sharing their first axis, e.g. ``(images, labels)``) is
    cut into micro-batches of ``micro_batch`` rows; ``fn(*micro_arrays)`` returns that
    micro-batch's mean loss as a one-element Tensor, or a pair ``(loss, array)`` whose
    arrays (e.g. the logits) are joined in batch order and returned too. Each micro-batch's
    gradient is weighted by its share of the batch. ``threads`` micro-batches run at once
    (where numpy's BLAS is OpenBLAS, whose thread count can be set for the duration; with any
    other BLAS they run one after another, since two threads each running multi-threaded
    BLAS would fight over the cores).

    ``sync_batch_norm=True`` runs the micro-batches as shards of one batch, all at once, one
    per thread: BatchNorm layers in training mode then use the whole batch's statistics,
    gathered from every shard (as PyTorch's SyncBatchNorm does across processes), so the
    gradient and the running statistics are the full batch's, up to rounding. It needs at
    most ``threads`` micro-batches, and the same ops in every shard's forward pass. Where
    the threads cannot run at once (see above) the batch runs as one micro-batch.

    Returns the batch's mean loss (a float), or ``(loss, joined_arrays)``.
    """
    arrays, params = tuple(arrays), list(params)
    micro_batch, threads = _positive("micro_batch", micro_batch), _positive("threads", threads)
    if not arrays:
        raise ValueError("accumulate_gradients: needs at least one array to split")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays) or n == 0:
        raise ValueError(f"accumulate_gradients: arrays must share a non-empty first axis; got lengths "
                         f"{[len(a) for a in arrays]}")
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"accumulate_gradients: params must be Tensors; item {i} is a {type(p).__name__}")
    if not is_grad_enabled():
        raise RuntimeError("accumulate_gradients: called under no_grad(); there is no gradient to take")
    trained = [i for i, p in enumerate(params) if p.requires_grad]  # frozen ones get none, as in backward()
    chunks = [(lo, min(lo + micro_batch, n)) for lo in range(0, n, micro_batch)]
    if sync_batch_norm and len(chunks) > threads:
        raise ValueError(f"accumulate_gradients: sync_batch_norm runs one micro-batch per thread; a batch of {n} "
                         f"in micro-batches of {micro_batch} makes {len(chunks)}, for {threads} threads")
    threads = min(threads, len(chunks))
    if threads > 1 and not can_set_blas_threads():
        threads = 1  # two threads each running multi-threaded BLAS would fight over the cores
        if sync_batch_norm:
            chunks = [(0, n)]  # its shards must run at once: one shard, the whole batch
    shards = ShardGroup(len(chunks)) if sync_batch_norm and len(chunks) > 1 else None

    def work(worker):
        sums, results = [None] * len(params), []
        for k in range(worker, len(chunks), threads):
            lo, hi = chunks[k]
            out = fn(*(a[lo:hi] for a in arrays))
            loss, extra = out if isinstance(out, tuple) else (out, None)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise TypeError(f"accumulate_gradients: fn must return a one-element loss Tensor (or a "
                                f"(loss, array) pair); got {type(loss).__name__} "
                                f"{getattr(loss, 'shape', '')}")
            share = (hi - lo) / n
            weight = array_module(loss.data).full(loss.shape, share, dtype=loss.dtype)
            grads = grad(loss, [params[i] for i in trained], grad_output=weight, allow_unused=True)
            for i, g in zip(trained, grads):
                if g is None:  # a parameter this loss does not reach: no gradient, as backward()
                    continue
                if sums[i] is None:
                    sums[i] = g.data  # a fresh array: tc.grad returns copies
                else:
                    sums[i] += g.data
            results.append((k, float(loss.item()) * share, extra))
        return sums, results

    if threads == 1:
        parts = [work(0)]
    else:
        pool = _executors.get(threads)
        if pool is None:
            pool = _executors[threads] = ThreadPoolExecutor(threads, thread_name_prefix="tinygrad_cnn-micro")

        def serial_work(worker):
            with run_serially():
                if shards is None:
                    return work(worker)
                try:
                    with batch_shard(shards, worker):
                        done = work(worker)
                        shards.gather(worker, "the end of a shard", None)  # none is left waiting
                    return done
                except BaseException:
                    shards.abort()  # the other shards must not wait for this one
                    raise

        with blas_threads(1):
            futures = [pool.submit(serial_work, w) for w in range(threads)]
            wait(futures)  # all finish before BLAS gets its threads back, even if one failed
        failed = [f.exception() for f in futures if f.exception() is not None]
        if failed:  # a shard's failure breaks the others' waits: report its cause
            raise next((e for e in failed if not isinstance(e, threading.BrokenBarrierError)), failed[0])
        parts = [f.result() for f in futures]

    for i, p in enumerate(params):
        total = None
        for sums, _ in parts:  # in worker order: the same bits every time
            g = sums[i]
            if g is not None:
                total = g if total is None else total + g
        if total is not None:
            _accumulate(p, Tensor._wrap(total, False))
    results = sorted((r for _, rs in parts for r in rs), key=lambda r: r[0])
    loss = sum(r[1] for r in results)
    if all(r[2] is None for r in results):
        return loss
    extras = [r[2] for r in results]
    xp = array_module(*(e for e in extras if e is not None))
    return loss, xp.concatenate([xp.asarray(e) for e in extras])


def _positive(name, value):
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"accumulate_gradients: {name} must be a positive int; got {value!r}") from None
    if v < 1:
        raise ValueError(f"accumulate_gradients: {name} must be a positive int; got {v}")
    return v
