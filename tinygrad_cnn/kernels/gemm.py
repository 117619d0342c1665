"""Matrix products arranged for BLAS: the orientation of a product, the GIL around small
ones, and the layout of large matrices (rows off 4 KiB multiples)."""
from __future__ import annotations

import numpy as np

from ..xp import array_module

_ALIAS_BYTES = 4096  # rows this many bytes apart (or a multiple) share the same L1 cache sets
_LINE_BYTES = 64  # one cache line: the padding that breaks the pattern
_MIN_PADDED_BYTES = 1 << 20  # smaller matrices sit in cache whatever their rows


def empty_matrix(xp, rows: int, cols: int, dtype):
    """An uninitialised (rows, cols) matrix for a large GEMM operand or result, whose rows do
    not start a multiple of 4 KiB apart.

    A row of 4,096, 16,384 or 65,536 float32 values (a convolution's pixels over a batch of 64)
    puts every row on the same cache sets, and the BLAS kernels, which touch several rows at
    once, evict their own data: OpenBLAS ran FastCNN's products 10-30% slower on such rows
    than on rows one cache line longer. Such a matrix is returned as the leading ``cols``
    columns of a buffer one cache line wider: a strided view, which numpy's ``matmul`` hands
    to BLAS as it is (``dot`` copies it first). Any other matrix is a plain contiguous array:
    float64 ones too (SeedCNN's float64 products ran no faster padded, its input gradient
    7% slower), and those of another array module (CuPy; only CPU caches were measured)."""
    itemsize = np.dtype(dtype).itemsize
    row_bytes = cols * itemsize
    if (xp is np and np.dtype(dtype) == np.float32 and rows > 1 and row_bytes % _ALIAS_BYTES == 0
            and rows * row_bytes >= _MIN_PADDED_BYTES):
        return xp.empty((rows, cols + _LINE_BYTES // itemsize), dtype=dtype)[:, :cols]
    return xp.empty((rows, cols), dtype=dtype)


def _transposed(m):
    """True for a matrix stored column by column (e.g. ``cols.T``), padded rows or not."""
    return m.ndim == 2 and m.strides[0] == m.itemsize and m.strides[1] != m.itemsize and m.shape[1] > 1


def product(a, b):
    """``a @ b``, arranged for BLAS. A weight gradient such as ``g @ cols.T`` (one operand
    transposed, a long shared axis, a small result) runs 1.3-1.6x faster in OpenBLAS here
    when the longer side of the result is its row side, so a result with more columns than
    rows is computed as ``(b.T @ a.T).T`` (returned as that transposed view)."""
    if (a.ndim == 2 and b.ndim == 2 and _transposed(a) != _transposed(b)
            and a.shape[1] > b.shape[1] > a.shape[0]):
        return _mm(b.T, a.T).T
    if (a.ndim == 3 and b.ndim == 3 and a.shape[0] == b.shape[0]
            and a.shape[2] >= _LONG_SHARED * max(a.shape[1], b.shape[2])):
        return _stacked_small_results(a, b)
    if a.ndim >= 2 and b.ndim >= 2 and a.shape[-1] == 1 and a.dtype == b.dtype:
        # outer products (a depthwise convolution's column gradient, (C, kH*kW, 1) @ (C, 1, N*Ho*Wo)):
        # one broadcast multiply, the same numbers; numpy's matmul ran it 4-8x slower
        return array_module(a, b).multiply(a, b)
    return _mm(a, b)


# A stack of products whose shared axis is this many times longer than the result's sides
# (a grouped convolution's weight gradient, ``g @ cols.T`` per group) goes to BLAS one
# product at a time: numpy's stacked matmul took 1.6 s for (8, 8, 32768) @ (8, 32768, 72)
# with one operand transposed, the loop over 2-d products 0.13 s (docs/performance.md).
_LONG_SHARED = 8


def _stacked_small_results(a, b):
    """``a @ b`` for two (G, M, K) @ (G, K, N) stacks with small M x N results, one 2-d
    product (in ``product``'s orientation) per slice."""
    xp = array_module(a, b)
    out = xp.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=xp.result_type(a, b))
    for i in range(a.shape[0]):
        out[i] = product(a[i], b[i])
    return out


def _mm(a, b):
    """``a @ b`` that lets other threads run meanwhile. numpy's matmul releases the GIL only
    when the result has more than 500 elements, so a small result with a long shared axis
    (a convolution's weight gradient: 16 x 28 numbers, each summed over 256,000 pixels at
    batch 250) would stop every other Python thread for its whole run; ``dot`` releases it
    for 2-d operands whatever their size (after zero-filling its result, which is why
    large results still go to matmul)."""
    if a.ndim == 2 and b.ndim == 2:
        if a.shape[0] * b.shape[1] <= _SMALL_RESULT:
            return a.dot(b)
        if a.dtype == b.dtype:  # a large result: rows laid out for the next GEMM (see empty_matrix)
            xp = array_module(a, b)
            return xp.matmul(a, b, out=empty_matrix(xp, a.shape[0], b.shape[1], a.dtype))
    return a @ b


_SMALL_RESULT = 500  # numpy's matmul keeps the GIL for results of this many elements or fewer
