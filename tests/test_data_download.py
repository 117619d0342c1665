"""Downloading: against a local HTTP server on 127.0.0.1 serving a small fabricated archive,
never the internet. Checks the checksum/size verification and that nothing partial is left."""
from __future__ import annotations

import os

import numpy as np
import pytest

from data_fixtures import cifar_members, http_server, md5_hex, write_tar_gz
from tinygrad_cnn import data
import tinygrad_cnn.data.download as download_module
from tinygrad_cnn.data import DatasetError, DownloadError, download_file, find_cifar10, load_cifar10, md5sum

R = 4
NAME = "cifar-10-binary.tar.gz"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch, tmp_path):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def fake_archive(tmp_path_factory):
    members, expected = cifar_members(R, seed=3)
    path = write_tar_gz(tmp_path_factory.mktemp("src") / NAME, members)
    return path.read_bytes(), expected


def test_download_into_directory_and_load(tmp_path, fake_archive):
    raw, expected = fake_archive
    target = tmp_path / "data"
    with http_server({"/c.tgz": raw}) as base:
        ds = load_cifar10(target, "test", url=base + "/c.tgz", md5=md5_hex(raw), size=len(raw),
                          records_per_batch=R, progress=False)
    assert np.array_equal(ds.labels, expected["test"][1])
    assert sorted(os.listdir(target)) == [NAME]  # no temp file left
    assert (target / NAME).read_bytes() == raw
    assert md5sum(target / NAME) == md5_hex(raw)
    # second call finds the file and does not download (the server is gone)
    assert find_cifar10(target, url="http://127.0.0.1:9/none") == target / NAME


def test_download_to_default_cache(tmp_path, fake_archive):
    raw, _ = fake_archive
    with http_server({"/c.tgz": raw}) as base:
        path = find_cifar10(url=base + "/c.tgz", md5=md5_hex(raw), size=len(raw), progress=False)
    assert path == tmp_path / "home" / ".cache" / "tinygrad_cnn" / NAME and path.read_bytes() == raw


def test_download_to_env_file_path(tmp_path, monkeypatch, fake_archive):
    raw, _ = fake_archive
    dest = tmp_path / "elsewhere" / "my-cifar.tar.gz"
    monkeypatch.setenv(data.ENV_VAR, str(dest))
    with http_server({"/c.tgz": raw}) as base:
        assert find_cifar10(url=base + "/c.tgz", md5=md5_hex(raw), size=None, progress=False) == dest
    assert dest.read_bytes() == raw


@pytest.mark.parametrize("bad", ["md5", "size"])
def test_download_mismatch_raises_and_leaves_nothing(tmp_path, fake_archive, bad):
    raw, _ = fake_archive
    target = tmp_path / "data"
    md5 = "0" * 32 if bad == "md5" else md5_hex(raw)
    size = len(raw) + 1 if bad == "size" else len(raw)
    with http_server({"/c.tgz": raw}) as base, pytest.raises(DownloadError) as info:
        find_cifar10(target, url=base + "/c.tgz", md5=md5, size=size, progress=False)
    msg = str(info.value)
    if bad == "md5":
        assert f"expected MD5 {'0' * 32}, got {md5_hex(raw)}" in msg
    else:
        assert f"expected {len(raw) + 1} bytes, got {len(raw)}" in msg
    assert isinstance(info.value, DatasetError)
    assert os.listdir(target) == []


def test_download_http_error_leaves_nothing(tmp_path):
    with http_server({}) as base, pytest.raises(OSError, match="404"):
        download_file(base + "/missing.tgz", tmp_path / NAME, progress=False)
    assert os.listdir(tmp_path) == []


def test_interrupted_download_leaves_nothing(tmp_path, fake_archive):
    """The server announces the full length and closes half-way."""
    raw, _ = fake_archive
    with http_server({"/c.tgz": raw}, cut={"/c.tgz": len(raw) // 2}) as base:
        with pytest.raises(OSError, match="interrupted"):
            download_file(base + "/c.tgz", tmp_path / NAME, md5=md5_hex(raw), size=len(raw), progress=False)
    assert os.listdir(tmp_path) == []


def test_keyboard_interrupt_leaves_nothing(tmp_path, fake_archive, monkeypatch):
    raw, _ = fake_archive

    class Boom:
        def __init__(self, *a, **k):
            self.n = 0

        def update(self, block):
            raise KeyboardInterrupt

    monkeypatch.setattr(download_module.hashlib, "md5", Boom)
    with http_server({"/c.tgz": raw}) as base, pytest.raises(KeyboardInterrupt):
        download_file(base + "/c.tgz", tmp_path / NAME, progress=False)
    assert os.listdir(tmp_path) == []


def test_no_download_when_disabled(tmp_path):
    with pytest.raises(FileNotFoundError, match="allow download"):
        load_cifar10(tmp_path, download=False)
    assert os.listdir(tmp_path) == []


def test_downloaded_file_is_still_validated(tmp_path):
    """A download with matching checksum but broken content still fails structurally."""
    members, _ = cifar_members(R)
    members["cifar-10-batches-bin/test_batch.bin"] = None
    buf = write_tar_gz(tmp_path / "src.tgz", members).read_bytes()
    with http_server({"/c.tgz": buf}) as base, pytest.raises(DatasetError, match="missing member"):
        load_cifar10(tmp_path / "dl", "test", url=base + "/c.tgz", md5=md5_hex(buf), size=len(buf),
                     records_per_batch=R, progress=False)
