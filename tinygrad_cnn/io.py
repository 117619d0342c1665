"""Files we write never end up half-written, and files we read never pass silently when bad.

``save_arrays`` writes an ``.npz`` to a temporary file in the target directory and renames
it into place (atomic on POSIX), so a crash leaves either the old file or the new one.
``load_arrays`` reads with ``allow_pickle=False`` and turns any corruption into one error
that names the file.
"""
from __future__ import annotations

import json
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


# --------------------------------------------------------------------- nested state (checkpoints)

_SKELETON = "__state__"


def _encode(obj, arrays):
    if hasattr(obj, "shape") and hasattr(obj, "dtype") and getattr(obj, "ndim", 0) > 0:
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(obj)
        return {"__array__": key}
    if isinstance(obj, np.generic) or (hasattr(obj, "dtype") and getattr(obj, "ndim", 1) == 0):
        return {"__scalar__": np.asarray(obj).item(), "dtype": str(np.asarray(obj).dtype)}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _encode(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_encode(v, arrays) for v in obj], "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"save_state: cannot store a {type(obj).__name__} (only arrays, numbers, strings, "
                    f"lists and dicts)")


def _decode(obj, arrays):
    if isinstance(obj, dict):
        if "__array__" in obj:
            return arrays[obj["__array__"]]
        if "__scalar__" in obj:
            return np.asarray(obj["__scalar__"], dtype=obj["dtype"])[()]
        if "__dict__" in obj:
            return {k: _decode(v, arrays) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [_decode(v, arrays) for v in obj["__list__"]]
            return tuple(items) if obj["tuple"] else items
    return obj


def save_state(path, state):
    """Save nested state (dicts, lists, arrays, numbers, strings; e.g. a whole training
    checkpoint) as one ``.npz``: arrays as members, the structure as JSON. No pickle, atomic."""
    arrays = {}
    skeleton = json.dumps(_encode(state, arrays))
    arrays[_SKELETON] = np.array(skeleton)
    save_arrays(path, arrays)


def load_state(path):
    """Read what ``save_state`` wrote, or raise ``CheckpointError`` naming the file."""
    arrays = load_arrays(path)
    if _SKELETON not in arrays:
        raise CheckpointError(f"{path}: not a saved state (no {_SKELETON!r} entry)")
    try:
        return _decode(json.loads(str(arrays.pop(_SKELETON))), arrays)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: corrupt state structure ({type(e).__name__}: {e})") from None
