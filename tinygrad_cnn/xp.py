"""Which array library a kernel should use: taken from its inputs, never hard-wired.

Every kernel asks ``array_module(*arrays)`` for the namespace that owns its inputs, so the
same code runs on numpy arrays today and on CuPy arrays (a GPU) tomorrow.
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
