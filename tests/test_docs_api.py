"""docs/api.md stays true: every name in its tables exists, with the arguments and defaults it
shows, and every public name of the package, functional, nn, optim, autograd, Tensor,
Module, Optimizer and LRScheduler appears in it."""
from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import tinygrad_cnn as tc
import tinygrad_cnn.functional as F
import tinygrad_cnn.nn as nn
from tinygrad_cnn import Tensor, optim

API = Path(__file__).resolve().parent.parent / "docs" / "api.md"

OWNERS = {"tc": tc, "F": F, "nn": nn, "optim": optim, "autograd": tc.autograd, "Tensor": Tensor,
          "Module": nn.Module, "Optimizer": optim.Optimizer, "LRScheduler": optim.LRScheduler}


def _entries():
    """(dotted name, argument text or None) for the first cell of every table row."""
    entries = []
    for line in API.read_text().splitlines():
        m = re.match(r"\| `([A-Za-z_][\w.]*)(\(([^`]*)\))?`", line)
        if m:
            entries.append((m.group(1), m.group(3)))
    return entries


ENTRIES = _entries()
NAMES = {name for name, _ in ENTRIES}


def _resolve(name):
    owner, _, rest = name.partition(".")
    obj = OWNERS[owner]
    for part in rest.split(".") if rest else ():
        obj = getattr(obj, part)
    return obj


def _split_args(text):
    """Top-level comma-separated parts of an argument list (defaults may hold tuples)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def test_the_page_lists_names():
    assert len(ENTRIES) > 150
    dupes = sorted({n for n, _ in ENTRIES if [m for m, _ in ENTRIES].count(n) > 1})
    assert not dupes, f"listed twice in docs/api.md: {dupes}"


@pytest.mark.parametrize("name, args", ENTRIES, ids=[n for n, _ in ENTRIES])
def test_every_listed_name_exists_with_the_arguments_shown(name, args):
    assert name.partition(".")[0] in OWNERS, f"{name}: docs/api.md rows start with one of {sorted(OWNERS)}"
    obj = _resolve(name)
    if args is None or not callable(obj):
        return
    params = inspect.signature(obj).parameters
    for part in _split_args(args):
        if part in ("...", "*"):
            continue
        arg, _, default = part.partition("=")
        arg = arg.strip().lstrip("*")
        assert arg in params, f"docs/api.md shows {name}({arg}=...), but its arguments are {list(params)}"
        if default:
            try:
                value = ast.literal_eval(default.strip())
            except (ValueError, SyntaxError):
                continue  # a name (float32) or an expression (1/3): not checked
            assert params[arg].default == value, (f"docs/api.md shows {name}({arg}={default.strip()}), but the "
                                                  f"default is {params[arg].default!r}")


def _public(obj):
    return {n for n in dir(obj) if not n.startswith("_")}


@pytest.mark.parametrize("prefix, names", [
    ("tc", tc.__all__),
    ("F", F.__all__),
    ("nn", nn.__all__),
    ("optim", optim.__all__),
    ("autograd", tc.autograd.__all__),
    ("Tensor", _public(Tensor)),
    ("Module", _public(nn.Module)),
    ("Optimizer", _public(optim.Optimizer)),
    ("LRScheduler", _public(optim.LRScheduler)),
])
def test_every_public_name_is_listed(prefix, names):
    missing = sorted(n for n in names if f"{prefix}.{n}" not in NAMES)
    assert not missing, f"add these to docs/api.md (with their PyTorch equivalents): {[f'{prefix}.{n}' for n in missing]}"


def test_functional_and_nn_export_every_public_function_and_layer():
    """A public function of functional (or a Module class of nn) missing from __all__ would
    escape the check above."""
    functions = {n for n, o in vars(F).items() if not n.startswith("_") and inspect.isfunction(o)
                 and o.__module__ == F.__name__}
    assert functions <= set(F.__all__), sorted(functions - set(F.__all__))
    layers = {n for n, o in vars(nn).items() if not n.startswith("_") and inspect.isclass(o)
              and issubclass(o, (nn.Module, Tensor)) and o.__module__ == nn.__name__}
    assert layers <= set(nn.__all__), sorted(layers - set(nn.__all__))
