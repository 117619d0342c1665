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
