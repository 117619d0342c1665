"""``DataLoader``: numpy batches from a dataset by whole-array indexing, reproducibly shuffled.

Design notes
------------
* A batch is ``dataset[index]`` with ``index`` a slice (no shuffle) or a slice of a permutation
  (shuffle): one fancy-indexing call per batch, no per-sample Python loop.
* Randomness comes from one ``np.random.default_rng(seed)`` generator. At the start of each epoch
  it draws the permutation (when shuffling) and one 63-bit key; batch ``b`` of that epoch is
  transformed with ``np.random.default_rng((key, b))``. So the same seed gives the same sequence
  of epochs -- orders *and* augmentations -- and a checkpoint can resume exactly, even
  mid-epoch: :meth:`DataLoader.state_dict` records the generator's ``bit_generator.state`` at the
  start of the epoch in progress plus how many of its batches were handed out, and
  :meth:`DataLoader.load_state_dict` replays the epoch's draws and skips those batches
  without computing them.
* ``seed=None`` takes a seed from the framework's default generator (``tinygrad_cnn.rng``), so
  ``tinygrad_cnn.rng.manual_seed`` makes a whole run repeatable.
"""
from __future__ import annotations

import copy
from typing import Callable, Iterator

import numpy as np

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class DataLoader:
    """Iterate over ``dataset`` in batches of ``(x, y)`` numpy arrays.

    ``dataset`` is anything with ``__len__`` and a ``__getitem__`` that accepts a slice or an
    integer array and returns ``(x, y)`` -- e.g. :class:`~tinygrad_cnn.data.ArrayDataset`.
    ``len(loader)`` is the number of batches per epoch; the last one is smaller unless
    ``drop_last``. ``transform(x, rng)`` is applied to each whole batch ``x`` (e.g. uint8 NCHW
    -> float32); without one, ``x`` is returned as stored (a copy, so callers may modify it).
    A transform with ``uses_position = True`` is called as ``transform(x, rng, indices=...,
    epoch=...)``: the batch's dataset indices and the epoch's number (0 for the first).
    Each ``iter(loader)`` is a new epoch, with a new permutation when ``shuffle``.
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = False, drop_last: bool = False,
                 seed: int | None = None, transform: Transform | None = None):
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.transform = transform
        if seed is None:
            from ..rng import default_generator
            seed = int(default_generator().integers(0, 2**63 - 1))
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.epoch = 0             # epochs started so far (the next epoch's index when idle)
        self._epoch_start_state = None  # rng state at the start of the epoch in progress
        self._batches_done = 0     # batches handed out in the epoch in progress
        self._in_epoch = False
        self._resume_batch = 0     # from load_state_dict: batches to skip in the next epoch

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n, bs, nb = self.num_samples, self.batch_size, len(self)
        start_state = copy.deepcopy(self.rng.bit_generator.state)
        perm = self.rng.permutation(n) if self.shuffle else None
        key = int(self.rng.integers(0, 2**63 - 1))
        skip, self._resume_batch = self._resume_batch, 0
        self.epoch += 1
        self._epoch_start_state = start_state
        self._batches_done = skip
        self._in_epoch = True
        return self._batches(perm, key, skip, n, bs, nb)

    def _batches(self, perm, key, skip, n, bs, nb):
        try:
            for b in range(skip, nb):
                lo, hi = b * bs, min((b + 1) * bs, n)
                index = slice(lo, hi) if perm is None else perm[lo:hi]
                x, y = self.dataset[index]
                if self.transform is not None and getattr(self.transform, "uses_position", False):
                    indices = np.arange(lo, hi) if perm is None else perm[lo:hi]
                    x = self.transform(x, np.random.default_rng((key, b)), indices=indices, epoch=self.epoch - 1)
                elif self.transform is not None:
                    x = self.transform(x, np.random.default_rng((key, b)))
                elif perm is None:
                    x = np.array(x, copy=True)
                if perm is None:
                    y = np.array(y, copy=True)
                self._batches_done = b + 1
                yield x, y
        finally:
            if self._batches_done >= nb:
                self._in_epoch = False

    def state_dict(self) -> dict:
        """Everything needed to resume iteration exactly: plain Python values, JSON-friendly.

        ``epoch`` is the index of the next epoch to (re)start, ``batch`` how many of its batches
        were already handed out, and ``rng_state`` the generator's ``bit_generator.state`` at
        that epoch's start. Take it between epochs or inside the loop after using a batch.
        """
        if self._in_epoch and self._batches_done < len(self):
            epoch, batch, state = self.epoch - 1, self._batches_done, self._epoch_start_state
        else:
            epoch, batch, state = self.epoch, 0, self.rng.bit_generator.state
        return {"epoch": epoch, "batch": batch, "rng_state": copy.deepcopy(state), "seed": self.seed,
                "batch_size": self.batch_size, "num_samples": self.num_samples, "shuffle": self.shuffle,
                "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`: the next ``iter()`` continues where that loader stood.

        Raises ``ValueError`` if the batch size, dataset length, shuffle or drop_last differ
        (the saved position would then mean something else).
        """
        for k in ("batch_size", "num_samples", "shuffle", "drop_last"):
            if k in state and state[k] != getattr(self, k):
                raise ValueError(f"DataLoader state was saved with {k}={state[k]!r}, this loader has "
                                 f"{k}={getattr(self, k)!r}")
        batch = int(state.get("batch", 0))
        if not 0 <= batch <= len(self):
            raise ValueError(f"DataLoader state has batch={batch}, expected 0..{len(self)}")
        self.rng.bit_generator.state = copy.deepcopy(state["rng_state"])
        self.epoch = int(state["epoch"])
        self.seed = state.get("seed", self.seed)
        self._resume_batch = batch
        self._in_epoch = False
        self._epoch_start_state = None
        self._batches_done = 0

    def __repr__(self) -> str:
        return (f"DataLoader(n={self.num_samples}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, transform={self.transform!r})")
