"""Fashion-MNIST from its IDX files: a second, smaller and faster dataset than CIFAR-10.

Files (gzip-compressed IDX, as published and as Debian's ``dataset-fashion-mnist`` installs them
in ``/usr/share/datasets/fashion-mnist/``)::

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz   (60,000 samples)
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz    (10,000 samples)

IDX format: magic ``00 00 08 ndim`` (0x08 = unsigned byte), then ``ndim`` big-endian uint32
dimensions, then the data row-major. The loader checks the magic, the dimensions (28x28 images),
that the data length matches them, that images and labels agree in count, and that labels are
0-9. No published checksums are pinned: repackaged .gz files legitimately differ.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .dataset import ArrayDataset
from .errors import DatasetError
from .paths import ENV_VAR, DEFAULT_CACHE_DIR, user_location

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# Mean and std of the 60,000 training images, pixels scaled to [0, 1] (population std over all
# pixels), computed once from /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz with
#     x = load_fashion_mnist(split="train").images.astype(np.float64) / 255; x.mean(), x.std()
# giving 0.28604060, 0.35302424.
FASHION_MNIST_MEAN = (0.286041,)
FASHION_MNIST_STD = (0.353024,)

_IDX_UBYTE = 0x08


def _open_existing(directory: Path, name: str) -> Path | None:
    """``directory/name``, or the same file without ``.gz`` (already decompressed), if present."""
    for candidate in (directory / name, directory / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist(path: str | os.PathLike | None = None, split: str = "train") -> tuple[Path, Path]:
    """Locate the (images, labels) IDX files of ``split``.

    Looks in ``path`` (a directory, or one of the files, meaning its directory), else in
    ``$TINYGRAD_CNN_DATA``, else in ``/usr/share/datasets/fashion-mnist/``; in each place also in
    a ``fashion-mnist/`` subdirectory. An explicit ``path`` is the only place looked at; a
    ``$TINYGRAD_CNN_DATA`` that does not hold the files (e.g. it points at CIFAR-10) falls back to
    the defaults. Raises ``FileNotFoundError`` listing where it looked.
    """
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(FASHION_MNIST_FILES)}, got {split!r}")
    location, source = user_location(path)
    defaults = [FASHION_MNIST_DIR, DEFAULT_CACHE_DIR.expanduser() / "fashion-mnist"]
    if location is None:
        roots = defaults
    else:
        root = location if location.is_dir() or not location.exists() else location.parent
        roots = [root] + (defaults if source != "argument" else [])
    searched = []
    for root in roots:
        for directory in (root, root / "fashion-mnist"):
            searched.append(str(directory))
            found = [_open_existing(directory, name) for name in FASHION_MNIST_FILES[split]]
            if all(found):
                return found[0], found[1]
    names = " and ".join(FASHION_MNIST_FILES[split])
    raise FileNotFoundError(f"Fashion-MNIST {split} files ({names}) not found in: {', '.join(searched)}; "
                            f"pass --data DIR / path=, set ${ENV_VAR}, or `apt-get install "
                            f"dataset-fashion-mnist`")


MAX_IDX_BYTES = 1 << 30  # 1 GiB: twenty times Fashion-MNIST's largest file


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzip-compressed if its name ends in .gz) into a uint8 array.

    ``ndim``, if given, is the number of dimensions the file must have. The returned array is
    a read-only view of the file's bytes. Raises :class:`DatasetError` naming the file for bad
    gzip data, a wrong magic number, or a data length that does not match the dimensions.
    The header is read first and only the data it declares (at most ``MAX_IDX_BYTES``) after
    it, so a file that decompresses to gigabytes is refused without reading them.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise DatasetError(f"{path}: {len(head)} bytes, too short for an IDX header (4-byte magic)")
            magic = int.from_bytes(head, "big")
            file_ndim = head[3]
            if head[:2] != b"\0\0" or head[2] != _IDX_UBYTE or (ndim is not None and file_ndim != ndim):
                want = f"0x{(_IDX_UBYTE << 8) | ndim:08x}" if ndim is not None else "0x000008NN"
                raise DatasetError(f"{path}: IDX magic number 0x{magic:08x}, expected {want} "
                                   f"(unsigned bytes, {ndim if ndim is not None else 'N'} dimensions)")
            raw_dims = f.read(4 * file_ndim)
            if len(raw_dims) < 4 * file_ndim:
                raise DatasetError(f"{path}: {4 + len(raw_dims)} bytes, too short for an IDX header of "
                                   f"{file_ndim} dimensions")
            dims = struct.unpack(f">{file_ndim}I", raw_dims)
            expected = int(np.prod(dims, dtype=np.int64)) if dims else 1
            if expected > MAX_IDX_BYTES:
                raise DatasetError(f"{path}: the header declares dimensions {dims}, {expected:,} bytes of data, "
                                   f"more than the {MAX_IDX_BYTES:,} this reader accepts; not read")
            raw = f.read(expected + 1)  # one byte more than declared: enough to tell there is too much
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: truncated or corrupt gzip file: {type(e).__name__}: {e}") from e
    if len(raw) != expected:
        got = f"{len(raw)}" if len(raw) <= expected else f"more than {expected}"
        raise DatasetError(f"{path}: {got} data bytes, expected {expected} for dimensions {dims}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(dims)


def read_fashion_mnist(images_path: str | os.PathLike, labels_path: str | os.PathLike, *,
                       limit: int | None = None) -> ArrayDataset:
    """Read a pair of IDX files into an :class:`ArrayDataset` (uint8 (N, 1, 28, 28), int64 (N,))."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.shape[1:] != (28, 28):
        raise DatasetError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{images_path} has {images.shape[0]} images but {labels_path} has "
                           f"{labels.shape[0]} labels; expected equal counts")
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DatasetError(f"{labels_path}: label {labels[bad[0]]} at index {bad[0]}, expected 0-9 "
                           f"({bad.size} bad labels in all)")
    n = images.shape[0] if limit is None else min(limit, images.shape[0])
    # Copy into owned, writable arrays (frombuffer views of bytes are read-only).
    return ArrayDataset(images[:n].reshape(n, 1, 28, 28).copy(), labels[:n].astype(np.int64),
                        FASHION_MNIST_CLASSES)


def load_fashion_mnist(path: str | os.PathLike | None = None, split: str = "train", *,
                       limit: int | None = None) -> ArrayDataset:
    """Find (see :func:`find_fashion_mnist`) and read a Fashion-MNIST split.

    ``split`` is "train" (60,000) or "test" (10,000). Returns uint8 (N, 1, 28, 28) images,
    int64 labels and the 10 class names; ``limit`` keeps the first ``limit`` samples.
    """
    images_path, labels_path = find_fashion_mnist(path, split)
    return read_fashion_mnist(images_path, labels_path, limit=limit)
