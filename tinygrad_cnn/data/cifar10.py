"""CIFAR-10 from the official *binary* archive ``cifar-10-binary.tar.gz``, read without extraction.

The archive is streamed member by member (``tarfile`` in ``r|gz`` mode: one pass of gzip
decompression, nothing written to disk, no pickle) and each ``.bin`` member is turned into uint8
arrays with ``np.frombuffer``. Layout (https://www.cs.toronto.edu/~kriz/cifar.html)::

    cifar-10-batches-bin/batches.meta.txt      class names, one a line
    cifar-10-batches-bin/data_batch_{1..5}.bin 10,000 records each  (split "train")
    cifar-10-batches-bin/test_batch.bin        10,000 records       (split "test")
    record = 1 label byte (0-9) + 3,072 pixel bytes (1,024 R, 1,024 G, 1,024 B, row-major)

A local archive is validated structurally (members present, sizes, record counts, label range),
not against the official MD5: a copy rebuilt from another source is legitimate and differs
byte-wise. Only a *download* is checked against the official size and MD5. Each member's size
is checked against its expected size from the tar header *before* it is read, so a header
claiming gigabytes is refused without reading (or allocating) them.
"""
from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np

from .dataset import ArrayDataset
from .download import download_file
from .errors import DatasetError
from .paths import DEFAULT_CACHE_DIR, ENV_VAR, file_in, user_location

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_SIZE = 170_052_171
CIFAR10_FILENAME = "cifar-10-binary.tar.gz"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

# Per-channel mean and std of the 50,000 training images, pixels scaled to [0, 1] (population
# std over all N*H*W values of a channel). Computed once from the project's copy of the archive,
# ``shared/data/cifar-10-binary.tar.gz`` beside the repository (sha256 8da5152f...; rebuilt from
# JPEGs), with
#     d = load_cifar10(path, "train"); x = d.images.astype(np.float64) / 255
#     x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))
# giving mean (0.49125038, 0.48209027, 0.44652094), std (0.24523161, 0.24278155, 0.26062877).
# The constants commonly quoted for the original archive are mean (0.4914, 0.4822, 0.4465),
# std (0.2470, 0.2435, 0.2616); the JPEG round trip shifts them slightly.
CIFAR10_MEAN = (0.491250, 0.482090, 0.446521)
CIFAR10_STD = (0.245232, 0.242782, 0.260629)

MEMBER_DIR = "cifar-10-batches-bin/"
META_MEMBER = MEMBER_DIR + "batches.meta.txt"
SPLIT_MEMBERS = {
    "train": tuple(f"{MEMBER_DIR}data_batch_{i}.bin" for i in range(1, 6)),
    "test": (f"{MEMBER_DIR}test_batch.bin",),
}
RECORD_BYTES = 1 + 3 * 32 * 32
RECORDS_PER_BATCH = 10_000
MAX_RECORDS = 60_000       # a member of any record count (records_per_batch=None) holds at most all of CIFAR-10
MAX_META_BYTES = 64 * 1024  # ten class names, one a line (the official file has 61 bytes)


def find_cifar10(path: str | os.PathLike | None = None, *, download: bool = True,
                 url: str = CIFAR10_URL, md5: str | None = CIFAR10_MD5, size: int | None = CIFAR10_SIZE,
                 progress: bool | None = None) -> Path:
    """Locate ``cifar-10-binary.tar.gz``, downloading it if it is absent and ``download`` is set.

    Looks at ``path`` (the archive itself or a directory holding it), else ``$TINYGRAD_CNN_DATA``
    (same meaning), else ``~/.cache/tinygrad_cnn/``. A missing archive is downloaded from ``url``
    into that place and checked against ``size`` and ``md5`` (None skips a check); without
    ``download`` it raises ``FileNotFoundError`` saying where it looked. A path that exists but
    is neither a regular file nor a directory holding one (a device, a directory where the
    archive should be) is a ``DatasetError``, never replaced by a download. A failed download
    raises ``OSError`` saying how to provide the archive without a network.
    """
    location, source = user_location(path)
    if location is None:
        location, source = DEFAULT_CACHE_DIR.expanduser(), "default cache"
    archive = file_in(location, CIFAR10_FILENAME)
    if archive.is_file():
        return archive
    if archive.exists():
        raise DatasetError(f"{archive} (from {source}) is not a regular file; expected the CIFAR-10 binary "
                           f"archive {CIFAR10_FILENAME} or a folder holding it")
    how = (f"pass --data PATH / path= (the archive or a folder holding it), set ${ENV_VAR}, or put it in "
           f"{DEFAULT_CACHE_DIR}/")
    if not download:
        raise FileNotFoundError(f"CIFAR-10 archive not found: {archive} (location from {source}); {how}, or allow "
                                f"download (without --data, python -m train.cifar10 downloads it into "
                                f"${ENV_VAR} or {DEFAULT_CACHE_DIR}/)")
    try:
        return download_file(url, archive, md5=md5, size=size, progress=progress)
    except DatasetError:
        raise
    except OSError as e:
        raise OSError(f"CIFAR-10 archive not found at {archive} (location from {source}) and downloading it "
                      f"failed ({e}); without a network, copy {CIFAR10_FILENAME} there, or {how}") from e


def _member_name(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def _read_members(archive: Path, wanted: dict) -> dict[str, bytes]:
    """Stream the whole tar.gz once and return the bytes of the ``wanted`` members found in it.

    ``wanted`` maps each member name to a check of its size in bytes (raising ``DatasetError``),
    applied to the size the member's header declares before a byte of it is read."""
    found: dict[str, bytes] = {}
    current = None  # the member being read, if any
    last = None     # the last member header seen (a truncation while skipping it is reported there)
    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            for member in tar:
                name = _member_name(member.name)
                last = name
                if name not in wanted or name in found:
                    continue
                current = name
                if not member.isfile():
                    raise DatasetError(f"{archive}: member {name} is not a regular file")
                wanted[name](member.size)
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if len(data) != member.size:
                    raise DatasetError(f"{archive}: member {name} is truncated: header says "
                                       f"{member.size} bytes, read {len(data)}")
                found[name] = data
                current = None
            # No early exit once everything wanted is in hand: reading on to the end of the
            # stream (~0.2 s for the official layout) means a truncated or corrupt archive is
            # reported whichever split is asked for.
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise  # not a data problem
        if current:
            where = f"reading member {current}"
        elif last:
            where = f"in or after member {last}"
        else:
            where = "at the start of the archive"
        raise DatasetError(f"{archive}: truncated or corrupt {where}; expected a gzip-compressed tar "
                           f"of the CIFAR-10 binary version: {type(e).__name__}: {e}") from e
    return found


def _parse_classes(archive: Path, data: bytes) -> tuple[str, ...]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{archive}: member {META_MEMBER} is not UTF-8 text: {e}") from e
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 10:
        raise DatasetError(f"{archive}: member {META_MEMBER} lists {len(names)} class names, expected 10: "
                           f"{names!r}")
    return names


def _check_meta_size(archive: Path, nbytes: int) -> None:
    if nbytes > MAX_META_BYTES:
        raise DatasetError(f"{archive}: member {META_MEMBER} has {nbytes} bytes, expected at most {MAX_META_BYTES} "
                           f"(ten class names)")


def _check_batch_size(archive: Path, name: str, nbytes: int, records_per_batch: int | None) -> int:
    """The record count of a ``.bin`` member of ``nbytes`` bytes, or a ``DatasetError``."""
    if nbytes == 0 or nbytes % RECORD_BYTES:
        raise DatasetError(f"{archive}: member {name} has {nbytes} bytes, expected a positive "
                           f"multiple of the {RECORD_BYTES}-byte record (1 label + 3072 pixels)")
    n = nbytes // RECORD_BYTES
    if records_per_batch is not None and n != records_per_batch:
        raise DatasetError(f"{archive}: member {name} has {n} records, expected {records_per_batch}")
    if n > MAX_RECORDS:
        raise DatasetError(f"{archive}: member {name} has {n} records, more than the {MAX_RECORDS} images of "
                           f"all of CIFAR-10")
    return n


def _parse_batch(archive: Path, name: str, data: bytes, records_per_batch: int | None) -> np.ndarray:
    """Validate one ``.bin`` member and return its records as a read-only (n, 3073) uint8 view."""
    n = _check_batch_size(archive, name, len(data), records_per_batch)
    records = np.frombuffer(data, dtype=np.uint8).reshape(n, RECORD_BYTES)
    bad = np.flatnonzero(records[:, 0] > 9)
    if bad.size:
        raise DatasetError(f"{archive}: member {name}: record {bad[0]} has label {records[bad[0], 0]}, "
                           f"expected 0-9 ({bad.size} bad labels in all)")
    return records


def read_cifar10(archive: str | os.PathLike, split: str = "train", *, limit: int | None = None,
                 records_per_batch: int | None = RECORDS_PER_BATCH) -> ArrayDataset:
    """Read one split of a CIFAR-10 binary archive into an :class:`ArrayDataset`.

    ``images`` is uint8 (N, 3, 32, 32) (RGB, NCHW), ``labels`` int64 (N,), ``classes`` the 10
    names from ``batches.meta.txt``. ``limit`` keeps the first ``limit`` samples.
    ``records_per_batch`` is the record count every ``.bin`` member must have (None: any).
    Raises :class:`DatasetError` naming the file and member for a corrupt or truncated archive,
    a missing member, a member of the wrong size, or a label outside 0-9.
    """
    if split not in SPLIT_MEMBERS:
        raise ValueError(f"split must be one of {sorted(SPLIT_MEMBERS)}, got {split!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    archive = Path(archive)
    if not archive.is_file():
        raise FileNotFoundError(f"CIFAR-10 archive not found: {archive}")
    batch_names = SPLIT_MEMBERS[split]
    checks = {META_MEMBER: lambda nbytes: _check_meta_size(archive, nbytes)}
    for name in batch_names:  # sizes are checked from the tar headers, before anything is read
        checks[name] = lambda nbytes, name=name: _check_batch_size(archive, name, nbytes, records_per_batch)
    found = _read_members(archive, checks)
    missing = [m for m in (META_MEMBER, *batch_names) if m not in found]
    if missing:
        raise DatasetError(f"{archive}: missing member(s) {', '.join(missing)} "
                           f"(is this cifar-10-binary.tar.gz, the binary version?)")
    classes = _parse_classes(archive, found.pop(META_MEMBER))
    batches = [_parse_batch(archive, name, found.pop(name), records_per_batch) for name in batch_names]
    total = sum(b.shape[0] for b in batches)
    n = total if limit is None else min(limit, total)
    images = np.empty((n, 3, 32, 32), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int64)
    start = 0
    for records in batches:
        take = min(records.shape[0], n - start)
        if take <= 0:
            break
        images[start:start + take] = records[:take, 1:].reshape(take, 3, 32, 32)
        labels[start:start + take] = records[:take, 0]
        start += take
    return ArrayDataset(images, labels, classes)


def load_cifar10(path: str | os.PathLike | None = None, split: str = "train", *, download: bool = True,
                 limit: int | None = None, records_per_batch: int | None = RECORDS_PER_BATCH,
                 url: str = CIFAR10_URL, md5: str | None = CIFAR10_MD5, size: int | None = CIFAR10_SIZE,
                 progress: bool | None = None) -> ArrayDataset:
    """Find (or download, see :func:`find_cifar10`) and read a CIFAR-10 split.

    ``split`` is "train" (50,000 images) or "test" (10,000). Returns an :class:`ArrayDataset`
    with uint8 (N, 3, 32, 32) images and int64 labels; ``limit`` keeps the first ``limit``.
    """
    archive = find_cifar10(path, download=download, url=url, md5=md5, size=size, progress=progress)
    return read_cifar10(archive, split, limit=limit, records_per_batch=records_per_batch)
