"""Where dataset files are looked for: an explicit path, else ``$TINYGRAD_CNN_DATA``, else a default.

The explicit path (the CLI's ``--data PATH``) and the environment variable mean the same thing:
either the data file itself or a directory holding it. The first one given wins; nothing falls
back from an explicit path to a default, so a typo in ``--data`` is an error, not a silent
download into the cache.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "TINYGRAD_CNN_DATA"
DEFAULT_CACHE_DIR = Path("~/.cache/tinygrad_cnn")


def user_location(path: str | os.PathLike | None) -> tuple[Path | None, str]:
    """The location the user asked for, and where it came from ("argument", env var name, or "").

    Returns ``(None, "")`` when neither an argument nor ``$TINYGRAD_CNN_DATA`` is set.
    """
    if path is not None and str(path) != "":
        return Path(path).expanduser(), "argument"
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser(), "$" + ENV_VAR
    return None, ""


def file_in(location: Path, filename: str) -> Path:
    """``location`` itself if it names a file, else ``location / filename``.

    A path that does not exist yet is taken for a file when its name is ``filename`` or ends in
    ``.gz`` (a download target), and for a directory otherwise.
    """
    if location.is_dir():
        return location / filename
    if location.exists() or location.name == filename or location.name.endswith(".gz"):
        return location
    return location / filename
