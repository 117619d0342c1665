"""Dataset files: CIFAR-10 binary archives and Fashion-MNIST IDX files, read, located and
validated. Fabricated small files in tmp_path, plus one test each on the real files (skipped
when they are absent)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import (CLASSES, META, TEST_MEMBER, TRAIN_MEMBERS, cifar_batch, cifar_members,
                           idx_bytes, write_cifar_archive, write_fashion_mnist, write_gz, write_tar_gz)
from tinygrad_cnn import data
from tinygrad_cnn.data import (ArrayDataset, DatasetError, find_cifar10, find_fashion_mnist, load_cifar10,
                               load_fashion_mnist, read_cifar10, read_idx)
from tinygrad_cnn.data import fashion_mnist as fm_module

REAL_CIFAR = Path(__file__).resolve().parents[1].parent / "shared/data/cifar-10-binary.tar.gz"
REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")
R = 4  # records per fake batch


@pytest.fixture(autouse=True)
def _no_env(monkeypatch, tmp_path):
    """No test sees the user's $TINYGRAD_CNN_DATA or real ~/.cache."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / "cifar-10-binary.tar.gz"
    return path, write_cifar_archive(path, records_per_batch=R)


# ----------------------------------------------------------------------------- ArrayDataset


def test_array_dataset_indexing():
    x = np.arange(5 * 2 * 2, dtype=np.uint8).reshape(5, 1, 2, 2)
    y = np.arange(5, dtype=np.int64) * 10
    ds = ArrayDataset(x, y, ["a", "b"])
    assert len(ds) == 5 and ds.classes == ("a", "b") and ds.num_classes == 2
    xi, yi = ds[3]
    assert np.array_equal(xi, x[3]) and yi == 30
    xs, ys = ds[1:3]
    assert xs.shape == (2, 1, 2, 2) and list(ys) == [10, 20]
    xa, ya = ds[np.array([4, 0])]
    assert np.array_equal(xa, x[[4, 0]]) and list(ya) == [40, 0]
    assert len(ds.head(2)) == 2 and ds.head(None) is ds and len(ds.head(99)) == 5
    sub = ds.subset(np.array([2, 4]))
    assert list(sub.labels) == [20, 40] and sub.classes == ds.classes


def test_array_dataset_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same length"):
        ArrayDataset(np.zeros((3, 1)), np.zeros(4))


# ----------------------------------------------------------------------------- CIFAR-10 reading


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar_reads_fake_archive(archive, split):
    path, expected = archive
    ds = read_cifar10(path, split, records_per_batch=R)
    x, y = expected[split]
    assert ds.images.dtype == np.uint8 and ds.images.shape == (len(x), 3, 32, 32)
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (len(x),)
    assert np.array_equal(ds.images, x) and np.array_equal(ds.labels, y)
    assert ds.classes == tuple(CLASSES)
    assert ds.images.flags.c_contiguous and ds.images.flags.writeable


def test_cifar_record_layout_is_rgb_planes_row_major(tmp_path):
    """Byte 1 + c*1024 + r*32 + col of a record is pixel (c, r, col)."""
    members, _ = cifar_members(R)
    rec = np.zeros(3073, dtype=np.uint8)
    rec[0] = 7
    rec[1 + 0 * 1024 + 0 * 32 + 1] = 11   # R, row 0, col 1
    rec[1 + 1 * 1024 + 2 * 32 + 0] = 22   # G, row 2, col 0
    rec[1 + 2 * 1024 + 31 * 32 + 31] = 33  # B, row 31, col 31
    members[TEST_MEMBER] = rec.tobytes() * R
    path = write_tar_gz(tmp_path / "c.tar.gz", members)
    ds = read_cifar10(path, "test", records_per_batch=R)
    img = ds.images[0]
    assert ds.labels[0] == 7
    assert img[0, 0, 1] == 11 and img[1, 2, 0] == 22 and img[2, 31, 31] == 33
    assert int(img.sum()) == 66


def test_cifar_limit_and_member_order(tmp_path):
    """Members may come in any order (and with ./ prefixes); batches are concatenated 1..5."""
    members, expected = cifar_members(R)
    shuffled = {("./" + k): members[k] for k in reversed(list(members))}
    path = write_tar_gz(tmp_path / "c.tar.gz", shuffled, directory_entry=False)
    ds = read_cifar10(path, "train", records_per_batch=R)
    assert np.array_equal(ds.labels, expected["train"][1])
    small = read_cifar10(path, "train", records_per_batch=R, limit=6)
    assert len(small) == 6 and np.array_equal(small.images, expected["train"][0][:6])
    assert len(read_cifar10(path, "train", records_per_batch=R, limit=0)) == 0


def test_cifar_records_per_batch_none_accepts_any_count(tmp_path):
    members, _ = cifar_members(R)
    members[TEST_MEMBER] = cifar_batch(3, 5)[0]
    path = write_tar_gz(tmp_path / "c.tar.gz", members)
    assert len(read_cifar10(path, "test", records_per_batch=None)) == 3


def test_cifar_bad_split(archive):
    with pytest.raises(ValueError, match="split"):
        read_cifar10(archive[0], "valid")


# ----------------------------------------------------------------------------- CIFAR-10 validation


def _expect_dataset_error(path, *fragments, split="train"):
    with pytest.raises(DatasetError) as info:
        read_cifar10(path, split, records_per_batch=R)
    msg = str(info.value)
    assert str(path) in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    assert isinstance(info.value, ValueError)
    return msg


def test_cifar_not_gzip(tmp_path):
    path = tmp_path / "cifar-10-binary.tar.gz"
    path.write_bytes(b"this is not a gzip file at all" * 10)
    _expect_dataset_error(path, "corrupt")


def test_cifar_gzip_but_not_tar(tmp_path):
    path = write_gz(tmp_path / "cifar-10-binary.tar.gz", b"\x01" * 5000)
    _expect_dataset_error(path)


def test_cifar_corrupt_gzip_stream(tmp_path):
    path = tmp_path / "c.tar.gz"
    members, _ = cifar_members(R)
    write_tar_gz(path, members)
    raw = bytearray(path.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 64):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    _expect_dataset_error(path)


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.97])
def test_cifar_truncated_archive(tmp_path, fraction):
    path = tmp_path / "c.tar.gz"
    members, _ = cifar_members(50)  # ~150 KB of incompressible pixels per member
    write_tar_gz(path, members)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * fraction)])
    msg = _expect_dataset_error(path, split="test")
    _expect_dataset_error(path, split="train")  # the whole archive is checked, whatever the split
    if fraction == 0.5:  # cut in the middle of a data member: the member is named
        assert "member cifar-10-batches-bin/" in msg, msg


def test_cifar_empty_file(tmp_path):
    path = tmp_path / "c.tar.gz"
    path.write_bytes(b"")
    _expect_dataset_error(path)


@pytest.mark.parametrize("missing", [META, TRAIN_MEMBERS[2]])
def test_cifar_missing_member(tmp_path, missing):
    members, _ = cifar_members(R)
    members[missing] = None
    path = write_tar_gz(tmp_path / "c.tar.gz", members)
    _expect_dataset_error(path, "missing", missing)


def test_cifar_member_not_multiple_of_record(tmp_path):
    members, _ = cifar_members(R)
    members[TRAIN_MEMBERS[1]] = members[TRAIN_MEMBERS[1]][:-5]
    path = write_tar_gz(tmp_path / "c.tar.gz", members)
    _expect_dataset_error(path, TRAIN_MEMBERS[1], str(R * 3073 - 5), "3073")


def test_cifar_member_wrong_record_count(tmp_path):
    members, _ = cifar_members(R)
    members[TEST_MEMBER] = cifar_batch(R + 1, 9)[0]
    path = write_tar_gz(tmp_path / "c.tar.gz", members)
    _expect_dataset_error(path, TEST_MEMBER, f"{R + 1} records, expected {R}", split="test")
    # the default expects the official 10,000 per batch
    with pytest.raises(DatasetError, match="expected 10000"):
        read_cifar10(path, "test")


def test_cifar_empty_member(tmp_path):
    members, _ = cifar_members(R)
    members[TEST_MEMBER] = b""
    path = write_tar_gz(tmp_path / "c.tar.gz", members)
    _expect_dataset_error(path, TEST_MEMBER, "0 bytes", split="test")


def test_cifar_label_out_of_range(tmp_path):
    members, _ = cifar_members(R)
    rec = bytearray(members[TRAIN_MEMBERS[4]])
    rec[2 * 3073] = 10
    members[TRAIN_MEMBERS[4]] = bytes(rec)
    path = write_tar_gz(tmp_path / "c.tar.gz", members)
    _expect_dataset_error(path, TRAIN_MEMBERS[4], "record 2", "label 10", "0-9")


def test_cifar_bad_meta(tmp_path):
    members, _ = cifar_members(R)
    members[META] = b"cat\ndog\n"
    path = write_tar_gz(tmp_path / "c.tar.gz", members)
    _expect_dataset_error(path, META, "2 class names, expected 10")


def test_cifar_member_that_is_a_directory(tmp_path):
    members, _ = cifar_members(R)
    members[TEST_MEMBER] = None
    path = write_tar_gz(tmp_path / "c.tar.gz", members)
    # add a directory entry under the member's name
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(path, "r:gz") as src, tarfile.open(fileobj=buf, mode="w:gz") as dst:
        for m in src:
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        d = tarfile.TarInfo(TEST_MEMBER)
        d.type = tarfile.DIRTYPE
        dst.addfile(d)
    path.write_bytes(buf.getvalue())
    _expect_dataset_error(path, TEST_MEMBER, "not a regular file", split="test")


# ----------------------------------------------------------------------------- CIFAR-10 lookup


def test_cifar_path_may_be_file_or_directory(archive):
    path, expected = archive
    assert find_cifar10(path, download=False) == path
    assert find_cifar10(path.parent, download=False) == path
    assert find_cifar10(str(path.parent), download=False) == path
    ds = load_cifar10(path.parent, "test", download=False, records_per_batch=R)
    assert np.array_equal(ds.labels, expected["test"][1])


def test_cifar_local_file_is_not_checked_against_official_md5(archive):
    """Our archive differs from the official one by construction; only structure is checked."""
    ds = load_cifar10(archive[0], "test", records_per_batch=R)  # default md5/size, download=True
    assert len(ds) == R


def test_cifar_env_var(archive, monkeypatch, tmp_path):
    path, _ = archive
    monkeypatch.setenv(data.ENV_VAR, str(path))
    assert find_cifar10(download=False) == path
    monkeypatch.setenv(data.ENV_VAR, str(path.parent))
    assert find_cifar10(download=False) == path
    # an explicit path wins over the environment
    other = tmp_path / "other" / "cifar-10-binary.tar.gz"
    write_cifar_archive(other, records_per_batch=R)
    assert find_cifar10(other.parent, download=False) == other


def test_cifar_default_cache_dir(monkeypatch, tmp_path):
    cached = tmp_path / "home" / ".cache" / "tinygrad_cnn" / "cifar-10-binary.tar.gz"
    with pytest.raises(FileNotFoundError, match="cifar-10-binary.tar.gz"):
        find_cifar10(download=False)
    write_cifar_archive(cached, records_per_batch=R)
    assert find_cifar10(download=False) == cached


def test_cifar_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path / "nowhere", download=False)
    assert str(tmp_path / "nowhere") in str(info.value)


@pytest.mark.skipif(not REAL_CIFAR.is_file(), reason=f"real archive not at {REAL_CIFAR}")
def test_real_cifar10_test_split():
    ds = load_cifar10(REAL_CIFAR, "test", download=False)
    assert ds.images.shape == (10_000, 3, 32, 32) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and np.array_equal(np.bincount(ds.labels), [1000] * 10)
    assert ds.classes == data.CIFAR10_CLASSES
    # real photographs: every channel uses most of the range and has a sensible mean
    mean = ds.images.mean(axis=(0, 2, 3)) / 255
    assert np.all(np.abs(mean - np.array(data.CIFAR10_MEAN)) < 0.02), mean


# ----------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mnist_fake_files(tmp_path, split):
    expected = write_fashion_mnist(tmp_path, n_train=12, n_test=5)
    ds = load_fashion_mnist(tmp_path, split)
    x, y = expected[split]
    assert ds.images.shape == (len(x), 1, 28, 28) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and np.array_equal(ds.labels, y)
    assert np.array_equal(ds.images[:, 0], x)
    assert ds.classes == data.FASHION_MNIST_CLASSES
    assert ds.images.flags.writeable
    assert len(load_fashion_mnist(tmp_path, split, limit=3)) == 3


def test_fashion_mnist_lookup(tmp_path, monkeypatch):
    fake_default = tmp_path / "default"
    write_fashion_mnist(fake_default, n_train=3, n_test=2)
    monkeypatch.setattr(fm_module, "FASHION_MNIST_DIR", fake_default)
    assert len(load_fashion_mnist(split="test")) == 2
    # a file path means its directory; a fashion-mnist/ subdirectory is looked in too
    mine = tmp_path / "mine"
    write_fashion_mnist(mine / "fashion-mnist", n_train=4, n_test=1)
    assert len(load_fashion_mnist(mine, "train")) == 4
    assert len(load_fashion_mnist(mine / "fashion-mnist" / "train-images-idx3-ubyte.gz", "train")) == 4
    # the env var is used, and when it doesn't hold the files (it points at CIFAR) we fall back
    monkeypatch.setenv(data.ENV_VAR, str(mine))
    assert len(load_fashion_mnist(split="train")) == 4
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "cifar-only"))
    assert len(load_fashion_mnist(split="train")) == 3
    # an explicit path does not fall back
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        find_fashion_mnist(tmp_path / "empty", "test")


def test_fashion_mnist_uncompressed_files(tmp_path):
    x = np.full((2, 28, 28), 9, np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(x))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([1, 2], np.uint8)))
    ds = load_fashion_mnist(tmp_path, "test")
    assert list(ds.labels) == [1, 2] and ds.images.max() == 9


def _fm_error(tmp_path, images: bytes, labels: bytes, *fragments, name="train-images-idx3-ubyte.gz"):
    write_gz(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_gz(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DatasetError) as info:
        load_fashion_mnist(tmp_path, "train")
    msg = str(info.value)
    assert name in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg


GOOD_X = np.zeros((3, 28, 28), np.uint8)
GOOD_Y = np.array([0, 9, 4], np.uint8)


def test_fashion_mnist_bad_magic(tmp_path):
    _fm_error(tmp_path, idx_bytes(GOOD_X, magic=0x00000801), idx_bytes(GOOD_Y),
              "magic number 0x00000801", "expected 0x00000803")
    _fm_error(tmp_path, idx_bytes(GOOD_X), idx_bytes(GOOD_Y, magic=0x00000C01),
              "0x00000c01", name="train-labels-idx1-ubyte.gz")


def test_fashion_mnist_wrong_dims(tmp_path):
    _fm_error(tmp_path, idx_bytes(np.zeros((3, 32, 32), np.uint8)), idx_bytes(GOOD_Y), "32x32", "28x28")


def test_fashion_mnist_truncated_data(tmp_path):
    _fm_error(tmp_path, idx_bytes(GOOD_X)[:-10], idx_bytes(GOOD_Y), "data bytes", "expected 2352")


def test_fashion_mnist_count_mismatch(tmp_path):
    _fm_error(tmp_path, idx_bytes(GOOD_X), idx_bytes(GOOD_Y[:2]), "3 images", "2 labels")


def test_fashion_mnist_bad_label(tmp_path):
    _fm_error(tmp_path, idx_bytes(GOOD_X), idx_bytes(np.array([0, 12, 1], np.uint8)),
              "label 12", "index 1", name="train-labels-idx1-ubyte.gz")


def test_fashion_mnist_corrupt_gzip(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(GOOD_X))[:-20])
    write_gz(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(GOOD_Y))
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz.*corrupt"):
        load_fashion_mnist(tmp_path, "train")
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"garbage!" * 8)
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz"):
        load_fashion_mnist(tmp_path, "train")


def test_read_idx_short_header(tmp_path):
    p = write_gz(tmp_path / "x.gz", b"\x00\x00")
    with pytest.raises(DatasetError, match="too short"):
        read_idx(p)
    p = write_gz(tmp_path / "y.gz", b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DatasetError, match="too short"):
        read_idx(p)


@pytest.mark.skipif(not (REAL_FMNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason=f"Fashion-MNIST not installed in {REAL_FMNIST}")
def test_real_fashion_mnist():
    ds = load_fashion_mnist(REAL_FMNIST, "test")
    assert ds.images.shape == (10_000, 1, 28, 28) and ds.images.dtype == np.uint8
    assert np.array_equal(np.bincount(ds.labels), [1000] * 10)
    train = load_fashion_mnist(REAL_FMNIST, "train", limit=1000)
    assert train.images.shape == (1000, 1, 28, 28)
