"""Which array library an op should use: taken from its inputs, never hard-wired.

Every op asks ``array_module(*arrays)`` for the namespace that owns its inputs, so the
same forward/VJP code runs on numpy arrays today and on CuPy arrays (a GPU) tomorrow.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager

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
    that cost. Threads other than the main one allocate from arenas of their own, which serve a
    block that big with a fresh ``mmap`` whatever the threshold, so every thread is also sent
    to the main heap (micro-batches run on worker threads). Process-wide and opt-in (the
    training scripts and benchmarks call it); returns False where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
    return all(mallopt(option, value) for option, value in ((M_MMAP_THRESHOLD, int(limit_bytes)),
                                                            (M_TRIM_THRESHOLD, 2 * int(limit_bytes)),
                                                            (M_ARENA_MAX, 1)))


_ALIAS_BYTES = 4096  # rows this many bytes apart (or a multiple) share the same L1 cache sets
_LINE_BYTES = 64  # one cache line: the padding that breaks the pattern
_MIN_PADDED_BYTES = 1 << 20  # smaller matrices sit in cache whatever their rows


def empty_matrix(xp, rows: int, cols: int, dtype):
    """An uninitialised (rows, cols) matrix for a large GEMM operand or result, whose rows do
    not start a multiple of 4 KiB apart.

    A row of 4,096, 16,384 or 65,536 float32 values (a convolution's pixels over a batch of 64)
    puts every row on the same cache sets, and the BLAS kernels, which touch several rows at
    once, evict their own data: OpenBLAS ran FastCNN's products 10-30% slower on such rows
    than on rows one cache line longer. Such a matrix is returned as the leading ``cols``
    columns of a buffer one cache line wider: a strided view, which numpy's ``matmul`` hands
    to BLAS as it is (``dot`` copies it first). Any other matrix is a plain contiguous array:
    float64 ones too (SeedCNN's float64 products ran no faster padded, its input gradient
    7% slower), and those of another array module (CuPy; only CPU caches were measured)."""
    itemsize = np.dtype(dtype).itemsize
    row_bytes = cols * itemsize
    if (xp is np and np.dtype(dtype) == np.float32 and rows > 1 and row_bytes % _ALIAS_BYTES == 0
            and rows * row_bytes >= _MIN_PADDED_BYTES):
        return xp.empty((rows, cols + _LINE_BYTES // itemsize), dtype=dtype)[:, :cols]
    return xp.empty((rows, cols), dtype=dtype)


# ------------------------------------------------------------------ threads for memory-bound ops

_pool = None
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
        self._barrier.wait()
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


# ------------------------------------------------------------------ BLAS thread count

_openblas = None  # (set, get) of numpy's OpenBLAS thread count, or False where not found


def _find_openblas():
    """``openblas_set_num_threads``/``openblas_get_num_threads`` of the OpenBLAS numpy uses:
    the copy bundled in numpy's wheel (``numpy.libs``, symbols prefixed ``scipy_``), else
    one already loaded in this process."""
    import ctypes
    import glob

    paths = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*"))
    try:
        with open("/proc/self/maps") as maps:
            paths += sorted({line.split()[-1] for line in maps if "openblas" in line.split()[-1].lower()})
    except OSError:
        pass
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_", ""):
            for suffix in ("64_", "_64_", ""):
                try:
                    set_n = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}")
                    get_n = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}")
                except AttributeError:
                    continue
                set_n.argtypes, set_n.restype, get_n.restype = [ctypes.c_int], None, ctypes.c_int
                return set_n, get_n
    return False


def can_set_blas_threads() -> bool:
    """Whether ``blas_threads`` can change numpy's BLAS thread count here (OpenBLAS found)."""
    global _openblas
    if _openblas is None:
        _openblas = _find_openblas()
    return bool(_openblas)


@contextmanager
def blas_threads(n: int):
    """Run the block with numpy's OpenBLAS using ``n`` threads (process-wide), restoring the
    previous count afterwards; yields False, changing nothing, where that is not possible."""
    if not can_set_blas_threads():
        yield False
        return
    set_n, get_n = _openblas
    prev = get_n()
    set_n(int(n))
    try:
        yield True
    finally:
        set_n(prev)
