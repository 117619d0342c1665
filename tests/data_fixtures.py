"""Small fabricated dataset files for the data tests: CIFAR-10 binary archives, IDX files, and a
local HTTP server. Nothing here touches the network or the real 170 MB archive."""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import io
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np

CIFAR_DIR = "cifar-10-batches-bin/"
META = CIFAR_DIR + "batches.meta.txt"
TRAIN_MEMBERS = [f"{CIFAR_DIR}data_batch_{i}.bin" for i in range(1, 6)]
TEST_MEMBER = CIFAR_DIR + "test_batch.bin"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_batch(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """``n`` random records in the CIFAR binary layout, and the (images, labels) they encode."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    records = np.empty((n, 3073), dtype=np.uint8)
    records[:, 0] = labels
    # Planes R, G, B, each row-major: exactly the C-order flattening of (3, 32, 32).
    records[:, 1:] = images.reshape(n, 3072)
    return records.tobytes(), images, labels


def cifar_members(records_per_batch: int = 4, seed: int = 0) -> tuple[dict[str, bytes], dict]:
    """Member name -> bytes for a complete small archive, and the expected arrays per split."""
    members = {META: ("\n".join(CLASSES) + "\n\n").encode()}
    train_x, train_y = [], []
    for i, name in enumerate(TRAIN_MEMBERS):
        data, x, y = cifar_batch(records_per_batch, seed + i)
        members[name] = data
        train_x.append(x)
        train_y.append(y)
    data, test_x, test_y = cifar_batch(records_per_batch, seed + 100)
    members[TEST_MEMBER] = data
    expected = {"train": (np.concatenate(train_x), np.concatenate(train_y)), "test": (test_x, test_y)}
    return members, expected


def write_tar_gz(path: Path, members: dict[str, bytes | None], directory_entry: bool = True) -> Path:
    """A .tar.gz with the given members (None values are skipped), in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        if directory_entry:
            info = tarfile.TarInfo(CIFAR_DIR.rstrip("/"))
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members.items():
            if data is None:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def write_cifar_archive(path: Path, records_per_batch: int = 4, seed: int = 0) -> dict:
    """Write a complete fake cifar-10-binary.tar.gz and return the expected arrays per split.
    (For broken archives, edit :func:`cifar_members`' dict and call :func:`write_tar_gz`.)"""
    members, expected = cifar_members(records_per_batch, seed)
    write_tar_gz(path, members)
    return expected


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding of a uint8 array: magic 0x000008<ndim>, big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_gz(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, compresslevel=1))
    return path


def write_fashion_mnist(directory: Path, n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict:
    """Fabricated Fashion-MNIST IDX .gz files in ``directory``; returns the arrays per split."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_gz(Path(directory) / f"{prefix}-images-idx3-ubyte.gz", idx_bytes(x))
        write_gz(Path(directory) / f"{prefix}-labels-idx1-ubyte.gz", idx_bytes(y))
        out[split] = (x, y)
    return out


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut: dict[str, int] = {}
    unannounced: frozenset = frozenset()
    repeat: dict[str, int] = {}

    def do_GET(self):  # noqa: N802 (http.server API)
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if self.path not in self.unannounced:  # else the end of the connection ends the file
            self.send_header("Content-Length", str(len(data) * self.repeat.get(self.path, 1)))
        self.end_headers()
        try:
            # A "cut" file announces its full length but the connection closes early; a
            # "repeat" one is sent that many times over (a server sending more than expected).
            for _ in range(self.repeat.get(self.path, 1)):
                self.wfile.write(data[: self.cut.get(self.path, len(data))])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading

    def log_message(self, *args):  # keep test output quiet
        pass


@contextlib.contextmanager
def http_server(files: dict[str, bytes], cut: dict[str, int] | None = None, unannounced=(),
                repeat: dict[str, int] | None = None):
    """Serve ``files`` (URL path -> bytes) on 127.0.0.1 from a thread; yields the base URL.
    Paths in ``unannounced`` are sent without a Content-Length; ``repeat`` sends a file N times."""
    handler = type("Handler", (_Handler,), {"files": dict(files), "cut": dict(cut or {}),
                                            "unannounced": frozenset(unannounced), "repeat": dict(repeat or {})})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def have_fashion_mnist() -> bool:
    """True when the real Fashion-MNIST files are where the loader looks (Debian's package)."""
    from tinygrad_cnn import data

    try:
        data.find_fashion_mnist(None, "train")
        data.find_fashion_mnist(None, "test")
        return True
    except FileNotFoundError:
        return False
