"""Allocator tuning: keep the large blocks a training step frees for the next step."""
from __future__ import annotations


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
