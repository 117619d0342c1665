"""``pip install -e .`` works wherever the user runs Python, including from the parent of a
clone that is itself named ``tinygrad_cnn`` (where the clone's folder would otherwise be
imported as an empty namespace package: "cannot import name 'Tensor'")."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_BUILD = """
import sys
from setuptools import build_meta
print(build_meta.build_editable(sys.argv[1]))
"""


def _editable_pth(clone, tmp_path):
    """The .pth line(s) the editable wheel of ``clone`` installs."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 64:
        pytest.skip(f"setuptools {setuptools.__version__} has no PEP 660 editable wheels")
    out = tmp_path / "wheel"
    out.mkdir()
    r = subprocess.run([sys.executable, "-c", _BUILD, str(out)], cwd=clone, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = out / r.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as z:
        pths = [n for n in z.namelist() if n.endswith(".pth")]
        assert len(pths) == 1, z.namelist()
        return z.read(pths[0]).decode().splitlines()


def test_an_editable_install_is_found_from_the_parent_of_a_clone_named_like_the_package(tmp_path):
    parent = tmp_path / "work"
    clone = parent / "tinygrad_cnn"
    clone.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, clone / name)
    for package in ("tinygrad_cnn", "models", "train"):
        shutil.copytree(ROOT / package, clone / package, ignore=shutil.ignore_patterns("__pycache__"))
    lines = _editable_pth(clone, tmp_path)
    # a plain path entry, which Python's own path search sees, not an import hook that runs after it
    assert not any(line.startswith("import") for line in lines), lines
    assert [Path(line) for line in lines if line.strip()] == [clone]
    # what `python -c ...` in the parent folder then sees ('' first on sys.path, the .pth entry
    # later); entries of other installs of the package (CI installs its own clone editable) are
    # taken out first, so that only this clone's entry can answer
    check = ("import os, sys; sys.path[:] = [p for p in sys.path if not os.path.isfile(os.path.join(p, "
             "'tinygrad_cnn', '__init__.py'))]; sys.path.append(sys.argv[1]); import tinygrad_cnn, train.cifar10; "
             "from tinygrad_cnn import Tensor; print(tinygrad_cnn.__file__)")
    r = subprocess.run([sys.executable, "-c", check, lines[0]], cwd=parent, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert Path(r.stdout.strip()) == clone / "tinygrad_cnn" / "__init__.py"
