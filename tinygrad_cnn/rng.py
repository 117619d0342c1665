"""The framework's default random generator, so that ``manual_seed`` makes runs repeatable.

Layer initialisation and dropout draw from ``default_generator()`` unless given their own
numpy ``Generator``; a training script checkpoints ``get_state()`` and restores it with
``set_state()`` to resume bit-for-bit.
"""
from __future__ import annotations

import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the default generator (as ``torch.manual_seed``) and return it."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def default_generator() -> np.random.Generator:
    return _generator


def get_state() -> dict:
    return _generator.bit_generator.state


def set_state(state: dict) -> None:
    _generator.bit_generator.state = state
