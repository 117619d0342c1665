"""Batch transforms: augmentation and normalisation vectorised over a whole (N, C, H, W) batch.

Each transform is a callable ``t(x, rng) -> array`` applied to a *batch*, never to one image, so
there is no per-image Python loop: per-image randomness (crop offsets, flip decisions) is drawn
as arrays of N values and applied with advanced indexing. ``rng`` is the ``np.random.Generator``
the :class:`~tinygrad_cnn.data.loader.DataLoader` passes in (seeded, so runs are reproducible);
called without one, a transform draws from the framework's default generator
(``tinygrad_cnn.rng``).

Random transforms keep the input dtype, so crop and flip can run on uint8 (4x less memory
traffic) before ``Normalize`` / ``ToFloat`` turn the batch into float32.

A transform whose result depends on *which* images it gets and in which epoch (such as
:class:`AlternatingFlip`) sets ``uses_position = True``; the loader then calls it as
``t(x, rng, indices=..., epoch=...)`` with the images' dataset indices and the epoch number,
and :class:`Compose` passes them on to such members.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is not None:
        return rng
    from ..rng import default_generator
    return default_generator()


def _check_nchw(x: np.ndarray, who: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{who} expects a batch of shape (N, C, H, W), got shape {x.shape}")


def _to_unit_float(x: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [0, 1]; float input is taken to be in [0, 1] already (as float32)."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) * np.float32(1.0 / 255.0)
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32, copy=True)
    raise TypeError(f"expected a uint8 or floating batch, got dtype {x.dtype}")


class Compose:
    """Apply transforms in order, passing each the same ``rng`` (and, to the members that use
    them, the batch's dataset ``indices`` and ``epoch``)."""

    def __init__(self, transforms: Iterable[Callable]):
        self.transforms = list(transforms)
        self.uses_position = any(getattr(t, "uses_position", False) for t in self.transforms)

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None, **position) -> np.ndarray:
        for t in self.transforms:
            x = t(x, rng, **position) if getattr(t, "uses_position", False) else t(x, rng)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class ToFloat:
    """uint8 in [0, 255] -> float32 in [0, 1] (a float batch is cast to float32 unchanged)."""

    random = False

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return _to_unit_float(np.asarray(x))

    def __repr__(self) -> str:
        return "ToFloat()"


class Normalize:
    """Per-channel ``(x / 255 - mean) / std`` -> float32, for a (N, C, H, W) batch.

    A uint8 batch is scaled to [0, 1] first; a floating batch is taken to be in [0, 1] already.
    ``mean``/``std`` are per-channel sequences (or scalars) on the [0, 1] scale, e.g.
    ``CIFAR10_MEAN``/``CIFAR10_STD``.
    """

    random = False

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float):
        self.mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        self.std = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if self.mean.ndim != 1 or self.std.ndim != 1 or self.mean.shape != self.std.shape:
            raise ValueError(f"mean and std must be scalars or equal-length 1-D sequences, got "
                             f"mean {self.mean.shape} and std {self.std.shape}")
        if np.any(self.std <= 0):
            raise ValueError(f"std must be positive, got {self.std.tolist()}")

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        x = np.asarray(x)
        _check_nchw(x, "Normalize")
        c = x.shape[1]
        if self.mean.size not in (1, c):
            raise ValueError(f"Normalize has {self.mean.size} channel statistics, batch has {c} channels")
        # One pass: out = x * scale - shift, with scale = 1/(255 std) for uint8 (1/std for floats).
        pixel = 255.0 if x.dtype == np.uint8 else 1.0
        if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
            raise TypeError(f"Normalize expects a uint8 or floating batch, got dtype {x.dtype}")
        scale = (1.0 / (pixel * self.std)).astype(np.float32).reshape(-1, 1, 1)
        shift = (self.mean / self.std).astype(np.float32).reshape(-1, 1, 1)
        out = x.astype(np.float32)
        out *= scale
        out -= shift
        return out

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class RandomCrop:
    """Pad each side by ``padding``, then crop a ``size`` window at a random offset per image.

    Every image in the batch gets its own offset, drawn uniformly from all valid positions. The
    crop is one gather over a ``sliding_window_view`` of the padded batch (no per-image loop).
    With ``padding=0`` and ``size`` equal to the image size it is the identity.
    ``padding_mode`` is torchvision's: ``"constant"`` (zeros, the default), ``"edge"``,
    ``"reflect"`` (mirror without repeating the edge pixel: a random translation that invents
    no flat border, as airbench's) or ``"symmetric"`` (mirror repeating it).
    """

    random = True
    PADDING_MODES = ("constant", "edge", "reflect", "symmetric")

    def __init__(self, size: int | tuple[int, int] = 32, padding: int = 4, padding_mode: str = "constant"):
        self.size = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be a positive int or (h, w), got {size!r}")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        if padding_mode not in self.PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {', '.join(self.PADDING_MODES)}; got {padding_mode!r}")
        self.padding = int(padding)
        self.padding_mode = padding_mode

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        x = np.asarray(x)
        _check_nchw(x, "RandomCrop")
        n, c, h, w = x.shape
        p = self.padding
        ch, cw = self.size
        hp, wp = h + 2 * p, w + 2 * p
        if ch > hp or cw > wp:
            raise ValueError(f"RandomCrop size {self.size} is larger than the padded image {(hp, wp)}")
        rng = _rng(rng)
        oy = rng.integers(0, hp - ch + 1, size=n)
        ox = rng.integers(0, wp - cw + 1, size=n)
        if p and self.padding_mode == "constant":
            padded = np.zeros((n, c, hp, wp), dtype=x.dtype)
            padded[:, :, p:p + h, p:p + w] = x
        elif p:
            if self.padding_mode == "reflect" and p >= min(h, w):
                raise ValueError(f"RandomCrop: reflect padding of {p} needs images larger than {p} pixels; "
                                 f"got {h}x{w}")
            padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), mode=self.padding_mode)
        else:
            padded = x
        windows = sliding_window_view(padded, (ch, cw), axis=(2, 3))  # (n, c, hp-ch+1, wp-cw+1, ch, cw)
        # Advanced indices on axes 0, 2, 3 separated by a slice -> broadcast dim first: (n, c, ch, cw).
        return windows[np.arange(n), :, oy, ox]

    def __repr__(self) -> str:
        mode = "" if self.padding_mode == "constant" else f", padding_mode={self.padding_mode!r}"
        return f"RandomCrop(size={self.size}, padding={self.padding}{mode})"


class RandomHorizontalFlip:
    """Mirror each image left-right independently with probability ``p``."""

    random = True

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim < 2:
            raise ValueError(f"RandomHorizontalFlip expects a batch (N, ..., W), got shape {x.shape}")
        flip = _rng(rng).random(x.shape[0]) < self.p
        out = x.copy()
        out[flip] = x[flip, ..., ::-1]
        return out

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class AlternatingFlip:
    """Derandomised horizontal flips (airbench's "alternating flip", Jordan 2024): each image
    is mirrored in every other epoch, so that over any two consecutive epochs the network sees
    it both ways, instead of a fresh coin per image and epoch.

    Image ``i`` is mirrored in epoch ``e`` when ``bit(i) XOR (e odd)``, where ``bit(i)`` is a
    fixed fair coin per dataset index (a hash of ``seed`` and ``i``, so no table is kept and a
    resumed run flips the same images). The loader supplies ``indices`` and ``epoch`` (see the
    module docstring); called without them, every image counts as index ``0..N-1`` of epoch 0.
    """

    random = True
    uses_position = True

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def first_epoch_bits(self, indices: np.ndarray) -> np.ndarray:
        """Whether each dataset index is mirrored in even epochs (epoch 0, 2, ...)."""
        with np.errstate(over="ignore"):  # splitmix64: wraps modulo 2**64 by design
            z = np.asarray(indices, dtype=np.uint64) + np.uint64(self.seed % 2**64) * np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z ^= z >> np.uint64(31)
        return (z >> np.uint64(63)).astype(bool)

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None, *, indices=None,
                 epoch: int = 0) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim < 2:
            raise ValueError(f"AlternatingFlip expects a batch (N, ..., W), got shape {x.shape}")
        indices = np.arange(x.shape[0]) if indices is None else np.asarray(indices)
        if indices.shape != (x.shape[0],):
            raise ValueError(f"AlternatingFlip: indices must have shape ({x.shape[0]},); got {indices.shape}")
        flip = self.first_epoch_bits(indices) ^ bool(int(epoch) % 2)
        out = x.copy()
        out[flip] = x[flip, ..., ::-1]
        return out

    def __repr__(self) -> str:
        return f"AlternatingFlip(seed={self.seed})"
