"""Data files and downloads as an attacker (or an accident) shapes them: sizes are checked
before anything is read, a download stops at the expected size, and a path that is not a
regular file is never replaced or filled. Nothing here touches the network."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile

import numpy as np
import pytest

import tinygrad_cnn.data.download as download_module
from data_fixtures import META, TRAIN_MEMBERS, cifar_members, http_server, idx_bytes, md5_hex, write_gz
from tinygrad_cnn import data
from tinygrad_cnn.data import DatasetError, DownloadError, download_file, find_cifar10, read_cifar10, read_idx

NAME = "cifar-10-binary.tar.gz"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch, tmp_path):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _tar_claiming(path, name, claimed, actual=b"\0" * 4096):
    """A .tar.gz whose member ``name`` has a header claiming ``claimed`` bytes (but holds ``actual``)."""
    members, _ = cifar_members(4)
    out = io.BytesIO()
    meta = tarfile.TarInfo(META)
    meta.size = len(members[META])
    out.write(meta.tobuf(tarfile.GNU_FORMAT) + members[META].ljust(512, b"\0"))
    big = tarfile.TarInfo(name)
    big.size = claimed
    out.write(big.tobuf(tarfile.GNU_FORMAT) + actual)
    path.write_bytes(gzip.compress(out.getvalue(), compresslevel=1))
    return path


@pytest.mark.parametrize("claimed, records_per_batch, needle", [
    (2 << 30, 4, "2147483648 bytes, expected a positive multiple"),
    (3073 * 10_000, 4, "10000 records, expected 4"),
    (3073 * 70_000, None, "70000 records, more than the 60000 images"),
])
def test_a_member_claiming_gigabytes_is_refused_before_a_byte_is_read(tmp_path, monkeypatch, claimed,
                                                                      records_per_batch, needle):
    """Such a member used to be read whole (a raw MemoryError for 2 GiB) before any size check."""
    opened = []
    real = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: opened.append(m.name) or real(self, m))
    path = _tar_claiming(tmp_path / NAME, TRAIN_MEMBERS[0], claimed)
    with pytest.raises(DatasetError, match=f"member {TRAIN_MEMBERS[0]} has {needle}"):
        read_cifar10(path, "train", records_per_batch=records_per_batch)
    assert TRAIN_MEMBERS[0] not in opened


def test_a_huge_class_list_is_refused_before_reading(tmp_path):
    path = tmp_path / NAME
    out = io.BytesIO()
    meta = tarfile.TarInfo(META)
    meta.size = 1 << 30
    out.write(meta.tobuf(tarfile.GNU_FORMAT) + b"cat\n" * 100)
    path.write_bytes(gzip.compress(out.getvalue()))
    with pytest.raises(DatasetError, match="batches.meta.txt has 1073741824 bytes, expected at most 65536"):
        read_cifar10(path, "test")


def test_an_idx_file_is_read_no_further_than_its_header_declares(tmp_path):
    """A .gz that decompresses to far more than its header declares is refused after one byte
    past the declared data, not read to its end."""
    path = write_gz(tmp_path / "x-idx3-ubyte.gz", idx_bytes(np.zeros((1, 28, 28), np.uint8)) + b"\0" * (8 << 20))
    with pytest.raises(DatasetError, match=r"more than 784 data bytes, expected 784"):
        read_idx(path, ndim=3)
    huge = tmp_path / "huge-idx3-ubyte.gz"
    huge.write_bytes(gzip.compress(b"\0\0\x08\x03" + (1 << 31).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2))
    with pytest.raises(DatasetError, match=r"more than the 1,073,741,824 this reader accepts; not read"):
        read_idx(huge, ndim=3)


# ------------------------------------------------------------------------------ downloads


_REAL_MD5 = hashlib.md5


class _CountingMd5:
    """hashlib.md5 that counts the bytes it is given (what the download read)."""

    total = 0

    def __init__(self, *args, **kwargs):
        self._h = _REAL_MD5()

    def update(self, block):
        _CountingMd5.total += len(block)
        self._h.update(block)

    def hexdigest(self):
        return self._h.hexdigest()


@pytest.fixture
def counting(monkeypatch):
    _CountingMd5.total = 0
    monkeypatch.setattr(download_module.hashlib, "md5", _CountingMd5)
    return _CountingMd5


@pytest.mark.parametrize("announced", [False, True])
def test_a_download_stops_at_the_expected_size(tmp_path, counting, announced):
    """A server sending far more than expected (here 50 times the file) used to be read to its end."""
    raw = os.urandom(300_000)
    unannounced = () if announced else ("/c.tgz",)
    with http_server({"/c.tgz": raw}, unannounced=unannounced, repeat={"/c.tgz": 50}) as base:
        with pytest.raises(DownloadError) as info:
            download_file(base + "/c.tgz", tmp_path / NAME, size=len(raw), md5=md5_hex(raw), progress=False)
    if announced:  # refused before reading anything
        assert f"announces {50 * len(raw)} bytes, expected {len(raw)}" in str(info.value) and counting.total == 0
    else:
        assert f"sent more than the expected {len(raw)} bytes; stopped reading" in str(info.value)
        assert counting.total == len(raw) + 1
    assert os.listdir(tmp_path) == []


def test_a_download_without_expected_size_still_works(tmp_path):
    raw = os.urandom(5000)
    with http_server({"/c.tgz": raw}, unannounced=("/c.tgz",)) as base:
        assert download_file(base + "/c.tgz", tmp_path / NAME, progress=False).read_bytes() == raw


def test_a_partial_file_a_killed_download_left_is_removed_by_the_next(tmp_path):
    stale = tmp_path / f".tmp-999999999-abcd-{NAME}.part"
    stale.write_bytes(b"half")
    raw = os.urandom(5000)
    with http_server({"/c.tgz": raw}) as base:
        download_file(base + "/c.tgz", tmp_path / NAME, size=len(raw), progress=False)
    assert sorted(os.listdir(tmp_path)) == [NAME]


def test_download_never_replaces_something_that_is_not_a_regular_file(tmp_path):
    folder = tmp_path / NAME
    folder.mkdir()
    (folder / "keep").write_text("x")
    for dest in (folder, "/dev/null"):
        with pytest.raises(FileExistsError, match="exists and is not a regular file"):
            download_file("http://127.0.0.1:9/never-contacted", dest, progress=False)
    assert os.listdir(folder) == ["keep"] and os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


@pytest.mark.parametrize("where", ["device", "directory in the archive's place"])
def test_a_data_path_that_is_not_a_regular_file_is_an_error(tmp_path, where):
    if where == "device":
        path = "/dev/null"
    else:
        path = tmp_path / "data"
        (path / NAME).mkdir(parents=True)
    with pytest.raises(DatasetError, match="is not a regular file; expected the CIFAR-10 binary archive"):
        find_cifar10(path, url="http://127.0.0.1:9/never-contacted")


def test_offline_the_error_says_how_to_provide_the_archive(tmp_path):
    with pytest.raises(OSError) as info:
        find_cifar10(url="http://127.0.0.1:9/unreachable", progress=False)
    msg = str(info.value)
    assert "downloading it failed" in msg and "127.0.0.1:9" in msg
    for hint in ("--data PATH", "$TINYGRAD_CNN_DATA", "~/.cache/tinygrad_cnn/"):
        assert hint in msg, msg
    assert not isinstance(info.value, DatasetError)


def test_the_download_bar_only_shows_on_a_terminal(tmp_path, capsys):
    raw = os.urandom(5000)
    with http_server({"/c.tgz": raw}) as base:
        download_file(base + "/c.tgz", tmp_path / "a.tgz")  # stderr is captured here, as in a log file
        assert capsys.readouterr().err == ""
        download_file(base + "/c.tgz", tmp_path / "b.tgz", progress=True)
        assert "downloading b.tgz" in capsys.readouterr().err


def test_a_downloaded_file_gets_the_mode_of_the_umask(tmp_path):
    raw = os.urandom(100)
    old = os.umask(0o022)
    try:
        with http_server({"/c.tgz": raw}) as base:
            path = download_file(base + "/c.tgz", tmp_path / NAME, progress=False)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
