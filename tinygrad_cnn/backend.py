"""Which array library an op should use: taken from its inputs, never hard-wired.

Every op asks ``array_module(*arrays)`` for the namespace that owns its inputs, so the
same forward/VJP code runs on numpy arrays today and on CuPy arrays (a GPU) tomorrow.
"""
from __future__ import annotations

import numpy as np


def array_module(*arrays):
    """The array namespace (numpy or cupy) that owns ``arrays``; numpy by default."""
    for a in arrays:
        if type(a).__module__.partition(".")[0] == "cupy":
            import cupy  # optional; only reached when a CuPy array is passed in

            return cupy
    return np


def is_array(x) -> bool:
    """True for a numpy or cupy ndarray."""
    return isinstance(x, np.ndarray) or type(x).__module__.partition(".")[0] == "cupy"


def is_floating(dtype) -> bool:
    return np.issubdtype(np.dtype(dtype), np.floating)


def reuse_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Ask glibc's malloc to keep freed blocks up to ``limit_bytes`` for reuse instead of
    returning them to the OS.

    A training step allocates and frees the same large arrays (im2col columns, activations)
    every step; above glibc's mmap threshold (at most 32 MiB by default) each one is a fresh
    ``mmap`` whose pages the kernel faults in and zeroes again. Keeping them in the heap removes
    that cost. Process-wide and opt-in (the training scripts and benchmarks call it); returns
    False where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, int(limit_bytes))) and bool(mallopt(M_TRIM_THRESHOLD, 2 * int(limit_bytes)))


# ------------------------------------------------------------------ threads for memory-bound ops

_pool = None
_MIN_PARALLEL = 1 << 20  # elements; below this a thread hand-off costs more than it saves


def num_threads() -> int:
    """Threads for copy-heavy primitives: ``$TINYGRAD_CNN_THREADS``, else the CPU count."""
    import os

    value = os.environ.get("TINYGRAD_CNN_THREADS")
    return max(1, int(value)) if value else max(1, os.cpu_count() or 1)


def parallel_ranges(n: int, fn, work: int) -> None:
    """Call ``fn(lo, hi)`` over a split of ``range(n)``, on several threads when ``work`` (elements
    touched) is large. numpy releases the GIL inside copies and ufuncs, so the copy-heavy parts
    of im2col/col2im use every core, as BLAS does for the GEMMs. Each part writes its own slice."""
    global _pool
    threads = min(num_threads(), n)
    if threads < 2 or work < _MIN_PARALLEL:
        fn(0, n)
        return
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=num_threads(), thread_name_prefix="tinygrad_cnn")
    bounds = [n * k // threads for k in range(threads + 1)]
    futures = [_pool.submit(fn, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    for f in futures:
        f.result()  # re-raises a worker's exception here
