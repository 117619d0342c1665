"""Parameter initialisers that fill a parameter in place, named as ``torch.nn.init``'s.

    init.dirac_(conv.weight)                       # identity filters
    init.whitening_(conv.weight, images, eps=5e-4) # a data-dependent patch-whitening filter bank
    init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # He et al. 2015

Each writes through ``tensor.writing`` (so it also works on a parameter a live graph holds,
marking that graph stale) and returns the parameter. ``whitening_`` needs training images:
it is the first layer of the airbench networks (Keller Jordan, 2024), a frozen convolution
whose filters decorrelate the pixels of every patch.
"""
from __future__ import annotations

import math

import numpy as np

from .rng import default_generator
from .tensor import Tensor, writing
from .xp import array_module

__all__ = ["calculate_gain", "dirac_", "kaiming_normal_", "patch_whitening", "whitening_"]


def _param(fn, weight, ndim=None):
    if not isinstance(weight, Tensor):
        raise TypeError(f"{fn}: expects a Tensor (a parameter); got {type(weight).__name__}")
    if ndim is not None and weight.ndim != ndim:
        raise ValueError(f"{fn}: expects a {ndim}-d convolution weight (C_out, C_in, kH, kW); got shape "
                         f"{weight.shape}")
    return weight


def dirac_(weight):
    """Make a (C_out, C_in, kH, kW) convolution weight the identity: output channel i copies
    input channel i through the kernel's centre tap (``kH // 2``, ``kW // 2``), as
    ``torch.nn.init.dirac_`` with one group. Output channels beyond C_in are zero, and so are
    the other input channels of each filter. To make only the first filters the identity (as
    airbench does, keeping the default init of the rest), pass a view: ``dirac_`` of
    ``Tensor(w.data[:c_in])`` writes into ``w``."""
    _param("dirac_", weight, 4)
    c_out, c_in, kh, kw = weight.shape
    with writing(weight.data, "init.dirac_") as w:
        w[...] = 0
        n = min(c_out, c_in)
        w[np.arange(n), np.arange(n), kh // 2, kw // 2] = 1
    return weight


_GAINS = {"linear": 1.0, "conv1d": 1.0, "conv2d": 1.0, "conv3d": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3,
          "relu": math.sqrt(2.0), "selu": 3.0 / 4}


def calculate_gain(nonlinearity, param=None):
    """The factor by which ``nonlinearity`` shrinks a signal's second moment, undone by an
    initialisation's std (``torch.nn.init.calculate_gain``): sqrt(2) for relu,
    sqrt(2 / (1 + a**2)) for leaky_relu with negative slope ``param`` (default 0.01)."""
    if nonlinearity == "leaky_relu":
        a = 0.01 if param is None else param
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
            raise ValueError(f"calculate_gain: the negative slope of leaky_relu must be a finite number; got {a!r}")
        return math.sqrt(2.0 / (1 + a * a))
    if nonlinearity not in _GAINS:
        raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}; expected one of "
                         f"{', '.join(sorted([*_GAINS, 'leaky_relu']))}")
    return _GAINS[nonlinearity]


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """Fill a weight with N(0, std**2), std = gain / sqrt(fan) (He et al. 2015, "Delving deep
    into rectifiers"), as ``torch.nn.init.kaiming_normal_``. ``mode="fan_in"`` keeps the
    forward signal's variance, ``"fan_out"`` the backward gradient's (torchvision's ResNets);
    fan_in = in_features * kernel area, fan_out = out_features * kernel area. ``generator``:
    a ``numpy.random.Generator`` (default: the one ``tc.manual_seed`` seeds)."""
    _param("kaiming_normal_", tensor)
    if tensor.ndim < 2:
        raise ValueError(f"kaiming_normal_: fan in and fan out need a weight of at least 2 axes "
                         f"(out, in, *kernel); got shape {tensor.shape}")
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming_normal_: mode must be 'fan_in' or 'fan_out'; got {mode!r}")
    receptive = int(np.prod(tensor.shape[2:], dtype=np.int64))
    fan = (tensor.shape[1] if mode == "fan_in" else tensor.shape[0]) * receptive
    if fan == 0:
        raise ValueError(f"kaiming_normal_: a weight of shape {tensor.shape} has {mode} 0")
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    rng = default_generator() if generator is None else generator
    values = rng.standard_normal(tensor.shape) * std
    with writing(tensor.data, "init.kaiming_normal_") as w:
        w[...] = array_module(w).asarray(values, dtype=w.dtype)
    return tensor


def patch_whitening(images, kernel_size=2, eps=5e-4):
    """The filters that whiten ``kernel_size`` x ``kernel_size`` patches of ``images``.

    ``images`` is a float (N, C, H, W) array (normalised as the network will see them). Every
    patch position of every image is one sample of a d = C*k*k vector; with the (uncentred)
    second-moment matrix ``S = E[p p^T]`` and its eigendecomposition ``S = V diag(l) V^T``,
    filter j is ``v_j / sqrt(l_j + eps)``, ordered by decreasing eigenvalue. Applied as a
    convolution the d outputs are uncorrelated with unit second moment (up to ``eps``).
    Returns (2d, C, k, k): the d filters followed by their negatives, so that a following
    GELU passes both signs of every whitened direction (airbench's layout)."""
    x = np.asarray(images)
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"patch_whitening: images must be a float (N, C, H, W) array; got "
                         f"{x.dtype} {x.shape}")
    k = int(kernel_size)
    n, c, h, w = x.shape
    if k < 1 or k > min(h, w):
        raise ValueError(f"patch_whitening: kernel_size must lie in [1, {min(h, w)}] for images of "
                         f"shape {x.shape}; got {kernel_size}")
    if eps < 0:
        raise ValueError(f"patch_whitening: eps must be >= 0; got {eps}")
    d = c * k * k
    # (n, c, h-k+1, w-k+1, k, k) windows -> one row per patch, laid out as a filter (c, kh, kw)
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))
    patches = windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, d).astype(np.float64)
    if patches.shape[0] < d:
        raise ValueError(f"patch_whitening: {patches.shape[0]} patches cannot estimate a {d}x{d} "
                         f"covariance; give more images")
    second_moment = patches.T @ patches / patches.shape[0]
    eigenvalues, eigenvectors = np.linalg.eigh(second_moment)  # ascending
    order = np.argsort(eigenvalues)[::-1]
    filters = eigenvectors[:, order].T / np.sqrt(np.maximum(eigenvalues[order], 0) + eps)[:, None]
    filters = filters.reshape(d, c, k, k)
    return np.concatenate([filters, -filters]).astype(x.dtype)


def whitening_(weight, images, eps=5e-4):
    """Fill a (2*C*k*k, C, k, k) convolution weight with ``patch_whitening(images, k, eps)``."""
    _param("whitening_", weight, 4)
    c_out, c_in, kh, kw = weight.shape
    if kh != kw or c_out != 2 * c_in * kh * kw:
        raise ValueError(f"whitening_: the weight must have shape (2*C*k*k, C, k, k) for a square k x k "
                         f"kernel; got {weight.shape}")
    if np.shape(images)[1:2] != (c_in,):
        raise ValueError(f"whitening_: images of shape {np.shape(images)} do not have the weight's "
                         f"{c_in} input channels")
    filters = patch_whitening(images, kh, eps)
    with writing(weight.data, "init.whitening_") as w:
        w[...] = array_module(w).asarray(filters, dtype=w.dtype)
    return weight
