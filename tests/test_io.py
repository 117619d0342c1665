"""Saved files load back exactly as they were saved, or the save is refused; loading never
truncates a value silently; a file is written as ``open`` would (mode, symbolic links) but
atomically, and a writer killed mid-write leaves nothing behind for good."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tinygrad_cnn import Tensor, nn, optim
from tinygrad_cnn.io import (CheckpointError, atomic_write, cast_loaded, load_arrays, load_state,
                             remove_stale_temps, save_arrays, save_state)

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------- nested state


@pytest.mark.parametrize("value", [np.complex128(1 + 2j), np.complex64(-0.5 + 3j), 1 + 2j, np.array(2 - 1j),
                                   np.complex64(complex("nan+1j")), np.float16(1.5), np.uint64(2**64 - 1),
                                   np.float32("nan"), np.bool_(True), np.str_("ab")])
def test_scalars_load_back_exactly(tmp_path, value):
    """Complex scalars used to fail or lose their imaginary part; every scalar kind round-trips."""
    save_state(tmp_path / "s.npz", {"v": value, "in": [value]})
    back = load_state(tmp_path / "s.npz")
    for got in (back["v"], back["in"][0]):
        expected = np.asarray(value)[()] if isinstance(value, np.ndarray) else value
        assert type(got) is type(expected)
        assert np.asarray(got).dtype == np.asarray(expected).dtype
        if np.asarray(expected).dtype.kind in "fc":
            np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
        else:
            assert got == expected


@pytest.mark.parametrize("key", [(1, 2), frozenset({1}), b"raw", np.str_("x").encode()])
def test_save_state_refuses_keys_that_cannot_load_back(tmp_path, key):
    path = tmp_path / "s.npz"
    save_state(path, {"old": 1})
    with pytest.raises(TypeError, match=r"save_state: cannot store the dict key .*load back as they were"):
        save_state(path, {"outer": {key: 1}})
    assert load_state(path) == {"old": 1}  # nothing was written


def test_keys_of_every_accepted_kind_load_back_and_find_their_entries(tmp_path):
    state = {"s": 1, 2: "two", 2.5: 3, True: 4, None: 5, np.int64(7): 6, np.float32(0.25): 7}
    save_state(tmp_path / "s.npz", state)
    back = load_state(tmp_path / "s.npz")
    for k, v in state.items():
        assert back[k] == v


@pytest.mark.parametrize("value", [np.datetime64("2020-01-01"), np.void(b"ab")])
def test_save_state_refuses_scalars_it_cannot_carry(tmp_path, value):
    with pytest.raises(TypeError, match=r"save_state: cannot store a .* scalar"):
        save_state(tmp_path / "s.npz", {"v": value})


@pytest.mark.parametrize("skeleton", [
    {"__scalar__": 1.5, "dtype": "int64"},           # a fraction as an integer
    {"__scalar__": 300, "dtype": "uint8"},           # out of range
    {"__scalar__": [1.0, 2.0], "dtype": "float64"},  # an imaginary part as a real
    {"__scalar__": 1.0, "dtype": "complex128"},      # not [real, imaginary]
    {"__scalar__": "x", "dtype": "object"},          # not a kind save_state writes
])
def test_a_crafted_scalar_that_its_dtype_cannot_hold_is_an_error(tmp_path, skeleton):
    path = tmp_path / "crafted.npz"
    np.savez(path, __state__=np.array(json.dumps({"__dict__": [["v", skeleton]]})))
    with pytest.raises(CheckpointError, match="crafted.npz: corrupt state structure"):
        load_state(path)


# ------------------------------------------------------------------- loading into slots


def test_loading_never_truncates_complex_or_fractional_values(tmp_path):
    model = nn.BatchNorm2d(2)
    before = model.state_dict()
    for key, bad in (("weight", before["weight"] + 1j), ("num_batches_tracked", np.array(1.5))):
        state = dict(before, **{key: bad})
        with pytest.raises(TypeError, match=rf"load_state_dict: BatchNorm2d: .*{key}: a (complex|float)"):
            model.load_state_dict(state)
        for k, v in model.state_dict().items():  # nothing was changed
            np.testing.assert_array_equal(v, before[k])
        save_arrays(tmp_path / "bad.npz", state)
        with pytest.raises(CheckpointError, match=r"bad.npz: .*without losing its"):
            model.load(tmp_path / "bad.npz")
    # casts that keep the values still work: float64 into float32, integers into floats
    model.load_state_dict(dict(before, weight=np.array([2.0, 3.0]), bias=np.array([1, 2])))
    assert model.weight.dtype == np.float32 and model.weight.data.tolist() == [2.0, 3.0]


def test_optimizer_state_refuses_complex_and_fractional_entries():
    p = nn.Parameter(np.ones(3, np.float32))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = Tensor(np.ones(3, np.float32))
    opt.step()
    good = opt.state_dict()
    bad = {"state": {0: {"momentum_buffer": good["state"][0]["momentum_buffer"] + 1j}},
           "param_groups": good["param_groups"]}
    with pytest.raises(ValueError, match="without losing its imaginary part"):
        opt.load_state_dict(bad)
    adam = optim.Adam([p], lr=0.1)
    adam.step()
    state = adam.state_dict()
    state["state"][0]["step"] = 1.5
    with pytest.raises(ValueError, match=r"'step' of parameter 0: expected a whole number, got 1.5"):
        adam.load_state_dict(state)


def test_cast_loaded_rules():
    assert cast_loaded(np.arange(3), np.float32, "x").dtype == np.float32
    assert cast_loaded(np.ones(2, np.float64), np.float32, "x").dtype == np.float32
    for value, dtype in ((np.ones(2, complex), np.float64), (np.ones(2), np.int64), (np.array(["a"]), np.float32)):
        with pytest.raises(TypeError, match="^x: a "):
            cast_loaded(value, dtype, "x")


# ----------------------------------------------------------------------- hostile .npz


def _npz_with_header(path, shape, payload=b"\0" * 16):
    import io as _io

    header = _io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", header.getvalue() + payload)


def test_a_member_claiming_more_data_than_it_holds_is_refused_before_reading(tmp_path):
    """A header claiming 1 TiB used to be allocated before any size check (MemoryError)."""
    path = tmp_path / "bomb.npz"
    _npz_with_header(path, (1 << 37,))
    with pytest.raises(CheckpointError, match=r"bomb.npz: member 'x' declares 1,099,511,627,776 bytes"):
        load_arrays(path)
    _npz_with_header(path, (2,))  # a consistent one loads
    assert load_arrays(path)["x"].shape == (2,)


def test_a_single_npy_file_is_a_checkpoint_error(tmp_path):
    np.save(tmp_path / "one.npy", np.ones(2))
    with pytest.raises(CheckpointError, match=r"one.npy: not a readable .npz file"):
        load_arrays(tmp_path / "one.npy")


# ----------------------------------------------------------------------- how files are written


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_the_mode_of_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_arrays(tmp_path / "m.npz", {"x": np.ones(2)})
        atomic_write(tmp_path / "t.txt", lambda f: f.write(b"hi"))
    finally:
        os.umask(old)
    for name in ("m.npz", "t.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(b"")
    path.chmod(0o640)
    save_arrays(path, {"x": np.ones(2)})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    link = tmp_path / "out.txt"
    link.symlink_to(precious)
    atomic_write(link, lambda f: f.write(b"new"))
    assert precious.read_text() == "keep me"
    assert not link.is_symlink() and link.read_text() == "new"


_KILLED_WRITER = """
import os, signal, sys
from tinygrad_cnn.io import atomic_write
def die(f):
    f.write(b"half")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write(sys.argv[1], die)
"""


def test_a_writer_killed_mid_write_leaves_a_temp_file_the_next_write_removes(tmp_path):
    target = tmp_path / "checkpoint.npz"
    r = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], cwd=ROOT, timeout=60)
    assert r.returncode == -signal.SIGKILL
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert len(left) == 1 and not target.exists()
    mine = tmp_path / f".tmp-{os.getpid()}-inflight-checkpoint.npz"  # a live writer's: kept
    mine.write_bytes(b"")
    other = tmp_path / ".tmp-999999999-x-other.npz"                    # another file's: not ours to judge
    other.write_bytes(b"")
    save_arrays(target, {"x": np.ones(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, mine.name, other.name])
    assert remove_stale_temps(target) == []
    np.testing.assert_array_equal(load_arrays(target)["x"], np.ones(2))
