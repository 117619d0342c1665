"""Parameter initialisers that fill a parameter in place, named as ``torch.nn.init``'s.

    init.dirac_(conv.weight)                       # identity filters
    init.whitening_(conv.weight, images, eps=5e-4) # a data-dependent patch-whitening filter bank

Each writes through ``tensor.writing`` (so it also works on a parameter a live graph holds,
marking that graph stale) and returns the parameter. ``whitening_`` needs training images:
it is the first layer of the airbench networks (Keller Jordan, 2024), a frozen convolution
whose filters decorrelate the pixels of every patch.
"""
from __future__ import annotations

import numpy as np

from .tensor import Tensor, writing
from .xp import array_module

__all__ = ["dirac_", "patch_whitening", "whitening_"]


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
