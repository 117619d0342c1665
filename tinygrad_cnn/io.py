"""Files we write never end up half-written, and files we read never pass silently when bad.

``save_arrays`` writes an ``.npz`` to a temporary file in the target directory and renames
it into place (atomic on POSIX), so a crash leaves either the old file or the new one. The
temporary file is named after the writing process (``.tmp-<pid>-<random>-<name>``), so one
that a killed writer left behind is removed by the next write of the same file. A new file
gets the mode the umask gives (as ``open`` would), a replaced one keeps its mode, and a
symbolic link at the target is replaced, never written through.
``load_arrays`` reads with ``allow_pickle=False``, checks each member's declared size against
the archive before reading it, and turns any corruption into one error that names the file.
"""
from __future__ import annotations

import json
import math
import os
import stat
import tempfile
import zipfile

import numpy as np


class CheckpointError(ValueError):
    """A saved file is missing, truncated, corrupt or not what was expected."""


_TMP_PREFIX = ".tmp-"


def _umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting (briefly process-wide)
    os.umask(mask)
    return mask


def file_mode_for(path) -> int:
    """The mode a plain ``open(path, "w")`` would leave: the existing file's, else 0666 less the umask."""
    try:
        st = os.stat(path)  # through a symlink: the file the name meant
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    return 0o666 & ~_umask()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # exists (another user's), or a number no process has: leave it alone
    return True


def remove_stale_temps(path, suffix="") -> list:
    """Delete the temporary files that writers of ``path`` killed mid-write left beside it
    (``.tmp-<pid>-<random>-<name><suffix>`` whose process is gone); return the paths removed.
    A temporary file of a writer still running is left alone."""
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for entry in entries:
        if not (entry.startswith(_TMP_PREFIX) and entry.endswith(f"-{name}{suffix}")):
            continue
        pid = entry[len(_TMP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        try:
            os.unlink(os.path.join(directory, entry))
            removed.append(os.path.join(directory, entry))
        except OSError:
            pass
    return removed


def temp_file_beside(path, suffix=""):
    """``(fd, name)`` of a new private file in ``path``'s directory, named so that
    ``remove_stale_temps(path)`` can tell when its writer is gone. Its name starts with a dot,
    never with ``-`` (safe to pass to programs)."""
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    return tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", suffix=f"-{name}{suffix}", dir=directory)


def atomic_write(path, write):
    """Call ``write(fileobj)`` on a temp file beside ``path``, then rename it to ``path``.

    The file gets the mode ``open`` would give it (the umask's, or the replaced file's own);
    a symbolic link at ``path`` is replaced by the new file, its target left untouched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temps(path)
    mode = file_mode_for(path)
    fd, tmp = temp_file_beside(path)
    try:
        os.fchmod(fd, mode)
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


def _check_member_size(path, npz, key):
    """Refuse a member whose ``.npy`` header declares more data than the member holds, before
    numpy allocates the array the header claims (a crafted header could ask for terabytes)."""
    info = npz.zip.getinfo(key + ".npy") if key + ".npy" in npz.zip.namelist() else npz.zip.getinfo(key)
    with npz.zip.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        else:  # newer header versions: numpy checks them as it reads
            return
        header = member.tell()
    declared = math.prod(shape) * dtype.itemsize
    if declared != info.file_size - header:
        raise CheckpointError(f"{path}: member {key!r} declares {declared:,} bytes of {dtype} data (shape "
                              f"{shape}) but holds {info.file_size - header:,}; the file is corrupt")


def load_arrays(path) -> dict:
    """Load every array of an ``.npz`` file into memory, or raise ``CheckpointError``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        if not zipfile.is_zipfile(path):
            raise ValueError("not a zip archive, as every .npz file is")
        with np.load(path, allow_pickle=False) as f:
            out = {}
            for k in f.files:
                _check_member_size(path, f, k)
                out[k] = f[k]
            return out
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, MemoryError) as e:
        raise CheckpointError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None


def cast_loaded(value, dtype, what):
    """A loaded ``value`` as a new array of ``dtype``, when the cast keeps its meaning: a
    float64 checkpoint into float32 parameters, integers into floats. A cast that would drop
    part of each value (complex to real loses the imaginary part, float to integer the
    fraction, text to numbers everything) raises ``TypeError`` naming ``what``."""
    a = np.asarray(value)
    dtype = np.dtype(dtype)
    if not np.can_cast(a.dtype, dtype, casting="same_kind"):
        lost = {"c": "its imaginary part", "f": "its fractional part"}.get(a.dtype.kind, "its meaning")
        raise TypeError(f"{what}: a {a.dtype} value cannot be loaded as {dtype} without losing {lost}")
    return a.astype(dtype, copy=True)


# --------------------------------------------------------------------- nested state (checkpoints)

_SKELETON = "__state__"


_SCALAR_KINDS = "biufcU"  # bool, integers, floats, complex, text: what JSON carries exactly


def _encode_scalar(obj):
    a = np.asarray(obj)
    if a.dtype.kind not in _SCALAR_KINDS:
        raise TypeError(f"save_state: cannot store a {a.dtype} scalar (only numbers, booleans and text)")
    value = [a.real.item(), a.imag.item()] if a.dtype.kind == "c" else a.item()
    return {"__scalar__": value, "dtype": str(a.dtype)}


def _key(k):
    """A dict key as JSON carries it back exactly: str, int, float, bool or None (numpy scalars
    become the Python number they equal, which finds the same entry)."""
    if isinstance(k, np.generic) and k.dtype.kind in "biuf":
        k = k.item()
    if k is None or isinstance(k, (str, int, float, bool)):
        return k
    raise TypeError(f"save_state: cannot store the dict key {k!r} ({type(k).__name__}); keys must be "
                    f"strings, integers, floats, booleans or None so that they load back as they were")


def _encode(obj, arrays):
    if hasattr(obj, "shape") and hasattr(obj, "dtype") and getattr(obj, "ndim", 0) > 0:
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(obj)
        return {"__array__": key}
    if isinstance(obj, np.generic) or (hasattr(obj, "dtype") and getattr(obj, "ndim", 1) == 0):
        return _encode_scalar(obj)
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k), _encode(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_encode(v, arrays) for v in obj], "tuple": isinstance(obj, tuple)}
    if isinstance(obj, complex):
        return {"__complex__": [obj.real, obj.imag]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"save_state: cannot store a {type(obj).__name__} (only arrays, numbers, strings, "
                    f"lists and dicts)")


def _same(a, b):
    return a == b or (a != a and b != b)  # NaN equals NaN here


def _decode_scalar(value, dtype):
    """A numpy scalar of ``dtype`` holding exactly ``value``: a value the dtype cannot hold
    (a fraction as an integer, an imaginary part as a real) is an error, never truncated."""
    dtype = np.dtype(dtype)
    if dtype.kind not in _SCALAR_KINDS:
        raise ValueError(f"a scalar of dtype {dtype} is not something save_state writes")
    parts = value if dtype.kind == "c" else [value]
    if dtype.kind == "c" and not (isinstance(value, list) and len(value) == 2):
        raise ValueError(f"a {dtype} scalar needs [real, imaginary]; got {value!r}")
    out = np.asarray(complex(*parts) if dtype.kind == "c" else value, dtype=dtype)[()]
    got = [out.real.item(), out.imag.item()] if dtype.kind == "c" else [out.item()]
    if not all(_same(a, b) for a, b in zip(parts, got)) or any(isinstance(p, (list, dict)) for p in parts):
        raise ValueError(f"the value {value!r} is not a {dtype}")
    return out


def _decode(obj, arrays):
    if isinstance(obj, dict):
        if "__array__" in obj:
            return arrays[obj["__array__"]]
        if "__scalar__" in obj:
            return _decode_scalar(obj["__scalar__"], obj["dtype"])
        if "__complex__" in obj:
            return complex(*obj["__complex__"])
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
    except (ValueError, KeyError, TypeError, OverflowError) as e:
        raise CheckpointError(f"{path}: corrupt state structure ({type(e).__name__}: {e})") from None
