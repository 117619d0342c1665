"""Download a file atomically, with a progress bar, and verify its size and MD5.

The file is streamed into a temporary file *in the target directory* (so the final
``os.replace`` is an atomic rename on the same filesystem), hashed as it arrives, checked, and
only then moved into place. Whatever happens -- a checksum mismatch, a network error, Ctrl-C --
the temporary file is removed, so a later run never mistakes a partial download for the real
thing; one left by a killed process is removed by the next download of the same file. With
an expected size, nothing past it is read (a server that sends more is refused), and a
target that exists but is not a regular file (a directory, a device) is never replaced.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ..io import file_mode_for, remove_stale_temps, temp_file_beside
from .errors import DatasetError

_CHUNK = 1 << 20


class DownloadError(DatasetError):
    """A downloaded file does not have the expected size or checksum."""


def md5sum(path: str | os.PathLike, chunk: int = _CHUNK) -> str:
    """Hex MD5 of a file, read in chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def show_progress(progress: bool | None) -> bool:
    """``progress``, or when it is None, whether stderr is a terminal: a bar redrawn in a log
    file would fill it with one line per update."""
    if progress is not None:
        return bool(progress)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def download_file(url: str, dest: str | os.PathLike, *, md5: str | None = None, size: int | None = None,
             progress: bool | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to the file ``dest`` and return ``dest`` as a Path.

    ``md5`` (hex) and ``size`` (bytes), when given, are checked before the file is moved into
    place; a mismatch raises :class:`DownloadError` saying what was expected and what arrived,
    and leaves nothing behind. With ``size``, reading stops there: a server that announces or
    sends more is refused. Network failures raise ``OSError`` naming the URL. The parent
    directory is created if needed; a ``dest`` that exists but is not a regular file raises
    ``FileExistsError``. ``progress`` shows a tqdm bar on stderr (None: only on a terminal).
    """
    dest = Path(dest)
    if os.path.lexists(dest) and not dest.is_file():
        raise FileExistsError(f"{dest} exists and is not a regular file (a directory or a device?); not "
                              f"downloading {url} over it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest, suffix=".part")
    fd, tmp_name = temp_file_beside(dest, suffix=".part")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, file_mode_for(dest))  # the umask's mode, as any downloader gives, not mkstemp's 0600
        h = hashlib.md5(usedforsecurity=False)
        got = 0
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError) as e:
                raise OSError(f"could not download {url} to {dest}: {e}") from e
            with response:
                announced = response.headers.get("Content-Length")
                announced = int(announced) if announced and announced.isdigit() else None
                if size is not None and announced is not None and announced > size:
                    raise DownloadError(f"downloading {url} to {dest}: the server announces {announced} bytes, "
                                        f"expected {size}; nothing was kept")
                total = announced if announced is not None else size
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=f"downloading {dest.name}", disable=not show_progress(progress), leave=False) as bar:
                    while True:
                        # never read past one byte more than expected: enough to tell it is too long
                        want = _CHUNK if size is None else min(_CHUNK, size + 1 - got)
                        try:
                            block = response.read(want)
                        except (OSError, http.client.HTTPException) as e:
                            raise OSError(f"download of {url} to {dest} interrupted after {got} bytes: "
                                          f"{type(e).__name__}: {e}") from e
                        if not block:
                            break
                        out.write(block)
                        h.update(block)
                        got += len(block)
                        bar.update(len(block))
                        if size is not None and got > size:
                            raise DownloadError(f"downloading {url} to {dest}: the server sent more than the "
                                                f"expected {size} bytes; stopped reading, nothing was kept")
            # http.client returns a short read, not an error, when the server hangs up early.
            if announced is not None and got != announced:
                raise OSError(f"download of {url} to {dest} interrupted: got {got} of the {announced} "
                              f"bytes announced (the partial file was deleted)")
        if size is not None and got != size:
            raise DownloadError(f"downloaded {url} to {dest}: expected {size} bytes, got {got} "
                                f"(the partial file was deleted)")
        digest = h.hexdigest()
        if md5 is not None and digest != md5.lower():
            raise DownloadError(f"downloaded {url} to {dest}: expected MD5 {md5.lower()}, got {digest} "
                                f"(the file was deleted)")
        os.replace(tmp, dest)
    finally:
        # After a successful os.replace the temp name no longer exists; otherwise clean up.
        tmp.unlink(missing_ok=True)
    return dest
