"""Files we write never end up half-written, and files we read never pass silently when bad.

``save_arrays`` writes an ``.npz`` to a temporary file in the target directory and renames
it into place (atomic on POSIX), so a crash leaves either the old file or the new one.
``load_arrays`` reads with ``allow_pickle=False`` and turns any corruption into one error
that names the file.
"""
from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np


class CheckpointError(ValueError):
    """A saved file is missing, truncated, corrupt or not what was expected."""


def atomic_write(path, write):
    """Call ``write(fileobj)`` on a temp file beside ``path``, then rename it to ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_arrays(path, arrays: dict):
    """Save a flat {name: ndarray} mapping as ``.npz`` atomically (no pickled objects)."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype == object:
            raise TypeError(f"save_arrays: entry {k!r} is a Python object, not numeric data; only "
                            f"arrays and numbers can be saved")
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_arrays(path) -> dict:
    """Load every array of an ``.npz`` file into memory, or raise ``CheckpointError``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
