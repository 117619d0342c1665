"""An in-memory dataset: whole arrays of images and labels, indexed all at once.

Everything here is a numpy array so that a batch is one fancy-indexing operation over the
whole array (see :class:`~tinygrad_cnn.data.loader.DataLoader`), never a Python loop over items.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


class ArrayDataset:
    """Images and labels held as two arrays of the same length, plus the class names.

    ``dataset[i]`` -- with ``i`` an int, a slice, or an integer/boolean array -- returns
    ``(images[i], labels[i])``. ``len(dataset)`` is the number of samples. ``subset(i)`` and
    ``head(n)`` return a new ``ArrayDataset`` (handy for small smoke-test runs).

    The arrays are stored as given, not copied; ``images`` is typically uint8 (N, C, H, W) and
    ``labels`` int64 (N,).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str] | None = None):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
        if images.ndim < 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"images and labels must have the same length, got images {images.shape} "
                             f"and labels {labels.shape}")
        self.images = images
        self.labels = labels
        self.classes: tuple[str, ...] = tuple(classes) if classes is not None else ()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    @property
    def num_classes(self) -> int:
        """Number of class names (0 when none were given)."""
        return len(self.classes)

    def subset(self, index) -> "ArrayDataset":
        """A new dataset of ``self[index]`` (an int array, a boolean mask, or a slice)."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1 if int(index) != -1 else None)
        return ArrayDataset(self.images[index], self.labels[index], self.classes)

    def head(self, n: int | None) -> "ArrayDataset":
        """The first ``n`` samples (all of them when ``n`` is None)."""
        if n is None:
            return self
        if n < 0:
            raise ValueError(f"head(n) needs n >= 0, got {n}")
        return self.subset(slice(0, n))

    def __repr__(self) -> str:
        return (f"ArrayDataset(n={len(self)}, images={self.images.dtype}{tuple(self.images.shape)}, "
                f"labels={self.labels.dtype}, classes={len(self.classes)})")
