"""Batch-normalisation kernels: training-mode statistics and normalisation, the fused
backward, and evaluation mode's per-channel affine map, in blocks of whole channels (a block
stays in cache between steps), on several threads for large inputs.

Written from primitives, batch norm takes about a dozen full passes forward and backward
(mean, centre, square, scale, shift and each of their VJPs). Here the forward reads x once
per block (statistics from each example's sums around a shift, added in float64, then the
output normalised while the block is in cache) and saves only per-channel values; the
backward works from x and those values (near 0 without materialising x_hat; else x_hat is
recomputed block by block into the gradient's memory and routed there). Run as one shard of a batch that several threads split
(``threads.current_shard()``), both use the whole batch's statistics and sums, gathered
from every shard (PyTorch's SyncBatchNorm, for threads). ``naive_batch_norm``,
``naive_batch_norm_backward`` and ``naive_channel_affine`` are the plain formulas the tests
compare them against.
"""
from __future__ import annotations

import string

import numpy as np

from ..threads import current_shard, parallel_ranges
from ..xp import array_module

_NEAR = 4.0  # |mean| / std below which the normalisation is x * a + b (see _affine_from_mean)
_MIN_PARTIAL = 32  # values of one example per channel from which its sums are taken in x's dtype
_CHUNK = 1 << 19  # elements per block of channels: enough work per call that numpy's overhead is small,
# few enough that a block and its temporary stay in cache (L2 or the large L3)


def batch_norm(x, weight, bias, eps, running_mean=None, running_var=None, momentum=0.1):
    """``(out, stats, count)``: out = (x - mean) * inv_std * weight + bias, with the mean and
    the biased variance of each channel (axis 1) over every other axis, ``stats`` =
    ``(mean, inv_std)`` (float64; what ``batch_norm_backward`` needs besides x), and ``count``
    values per channel (the whole batch's when this thread runs one shard of it).
    ``running_mean``/``running_var`` (if given) move towards the batch's mean and unbiased
    variance by ``momentum``, in place, once per batch (by shard 0 of a sharded one). ``out``
    keeps x's layout (e.g. a convolution's channel-major output).

    Per block of channels: the statistics in one pass (the sums of d and d^2 for
    d = x - shift, ``shift`` each channel's mean over the batch's first example, so that d is
    small and the variance ``sum(d^2)/n - (sum(d)/n)^2`` keeps its digits for data whose mean
    is far larger than its spread; each example's sums in x's dtype, added in float64, see
    ``_shifted_moments``), then ``out = x * a + b`` while the block is in cache (for data far
    from 0 ``(x - m) * a + b``, m the mean rounded to x's dtype and ``b`` carrying the
    rounding's remainder). Synced shards all use shard 0's shift, so they and one pass over
    the batch get the same statistics to float64 rounding and round their outputs alike."""
    xp = array_module(x)
    c = x.shape[1]
    mean, var, inv_std = xp.empty(c), xp.empty(c), xp.empty(c)
    out = xp.empty_like(x)  # the input's layout, e.g. channel-major
    shard = current_shard()
    count = local = x.size // c  # values per channel: the batch's, and this array's

    shift = _shifts(x, shard)

    def moments(ch):
        _shifted_moments(xp, x[:, ch], shift, mean, var, ch, local)

    def normalise(ch):
        inv_std[ch] = 1 / xp.sqrt(var[ch] + eps)
        _affine_from_mean(xp, x[:, ch], out[:, ch], mean[ch], inv_std[ch], inv_std[ch] * weight[ch], bias[ch])

    if shard is None:
        check_count(count, x.shape)
        _in_blocks(c, local, 2 * x.size, moments, normalise)
    else:  # this shard's statistics, then the whole batch's, combined from every shard's
        _in_blocks(c, local, 2 * x.size, moments)
        count = _whole_batch_statistics(shard, local, mean, var, x.shape)
        _in_blocks(c, local, 2 * x.size, normalise)
    if shard is None or shard[1] == 0:  # the running statistics move once per batch
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean
        if running_var is not None:
            running_var *= 1 - momentum
            running_var += momentum * var * (count / (count - 1))
    return out, (mean, inv_std), count


def statistics(x, eps):
    """``(stats, count)`` of ``batch_norm`` without its output (for a backward whose forward
    statistics are not at hand); whole-batch ones when run as a shard."""
    xp = array_module(x)
    c = x.shape[1]
    _, stats, count = batch_norm(x, xp.ones(c, x.dtype), xp.zeros(c, x.dtype), eps)
    return stats, count


def batch_norm_backward(g, x, stats, weight, count, input_grad=True):
    """``(g_x, g_weight, g_bias)``, batch norm's VJP at ``x`` with the forward's ``stats``:
    g_bias = sum(g), g_weight = sum(g * x_hat) per channel, and
    g_x = weight * inv_std * (g - x_hat * g_weight / count - g_bias / count), with the whole
    batch's sums and ``count`` (so that, run as one shard, each shard gets exactly its part of
    the full batch's input gradient; its g_weight and g_bias are its own share). ``g_x`` is
    None without ``input_grad`` (and then a shard exchanges nothing).

    Nothing but the statistics comes from the forward: where the channels' means are near 0
    (``_near_zero``), sum(g * x_hat) is inv_std * (sum(g * x) - mean * sum(g)) and g_x is
    one affine map of x and g (six passes per block, as with a saved x_hat); else x_hat is
    recomputed block by block as in the forward, into g_x's memory, where the routing then
    runs in place."""
    xp = array_module(g)
    mean, inv_std = stats
    c = g.shape[1]
    local_count = g.size // c
    g_bias, g_weight = xp.empty(c), xp.empty(c)  # float64 while summed; g's dtype on return
    g_x = xp.empty_like(x) if input_grad else None
    shard = current_shard() if input_grad else None
    sum_bias, sum_weight = g_bias, g_weight  # the whole batch's sums (this array's, unsharded)

    def sums(ch):
        gb = g[:, ch]
        g_bias[ch] = _channel_sum(xp, gb)
        if _near_zero(xp, mean[ch], inv_std[ch]):  # sum(g * x_hat) = inv_std * (sum(g * x) - mean * sum(g))
            g_weight[ch] = inv_std[ch] * (_channel_dot(xp, gb, x[:, ch]) - mean[ch] * g_bias[ch])
            return
        hb = g_x[:, ch] if g_x is not None else xp.empty_like(gb)
        _affine_from_mean(xp, x[:, ch], hb, mean[ch], inv_std[ch], inv_std[ch], 0.0)  # x_hat, kept for route
        g_weight[ch] = _channel_dot(xp, gb, hb)

    def route(ch):
        # d/dx of the normalised value: remove the parts of g along 1 and along x_hat,
        # then scale: weight * inv_std * (g - x_hat * g_w / n - g_b / n), n over the batch
        gb, gxb = g[:, ch], g_x[:, ch]
        scale = weight[ch] * inv_std[ch]
        if _near_zero(xp, mean[ch], inv_std[ch]):  # from x: ((x * a + g) * scale + b, four passes
            a = -inv_std[ch] * sum_weight[ch] / count
            xp.multiply(x[:, ch], _per_channel(a, x.dtype, gxb), out=gxb)
            gxb += gb
            gxb *= _per_channel(scale, x.dtype, gxb)
            gxb += _per_channel(-scale * (mean[ch] * a + sum_bias[ch] / count), x.dtype, gxb)
            return
        # g_x holds x_hat here
        gxb *= _per_channel(sum_weight[ch] / count, x.dtype, gxb)
        gxb += _per_channel(sum_bias[ch] / count, x.dtype, gxb)
        xp.subtract(gb, gxb, out=gxb)
        gxb *= _per_channel(scale, x.dtype, gxb)

    if shard is None:
        _in_blocks(c, local_count, 3 * g.size, *((sums, route) if g_x is not None else (sums,)))
    else:  # the whole batch's sums, from every shard's, before any shard routes g
        _in_blocks(c, local_count, 2 * g.size, sums)
        group, rank = shard
        parts = group.gather(rank, f"batch_norm backward of {g.shape[1:]}", (g_bias.copy(), g_weight.copy()))
        sum_bias, sum_weight = _add_in_order(p[0] for p in parts), _add_in_order(p[1] for p in parts)
        _in_blocks(c, local_count, 2 * g.size, route)
    # this shard's share of the weight and bias gradients
    return g_x, g_weight.astype(g.dtype, copy=False), g_bias.astype(g.dtype, copy=False)


def normalised(x, stats):
    """x_hat = (x - mean) * inv_std from the forward's ``stats``, as one new array."""
    xp = array_module(x)
    mean, inv_std = stats
    out = xp.empty_like(x)
    _in_blocks(x.shape[1], x.size // x.shape[1], 3 * x.size,
               lambda ch: _affine_from_mean(xp, x[:, ch], out[:, ch], mean[ch], inv_std[ch], inv_std[ch], 0.0))
    return out


def channel_affine(x, scale, shift):
    """``x * scale + shift`` with one value of each per channel (axis 1), in one blocked pass
    (evaluation-mode batch norm), in x's layout."""
    xp = array_module(x)
    out = xp.empty_like(x)
    c = x.shape[1] if x.ndim > 1 else 0
    if x.size == 0 or c == 0:
        return out

    def affine(ch):
        ob = out[:, ch]
        xp.multiply(x[:, ch], _per_channel(scale[ch], x.dtype, ob), out=ob)
        ob += _per_channel(shift[ch], x.dtype, ob)

    _in_blocks(c, x.size // c, 2 * x.size, affine)
    return out


def naive_channel_affine(x, scale, shift):
    """``channel_affine`` element by element (plain loops)."""
    out = np.empty(x.shape, dtype=x.dtype)
    for i, v in np.ndenumerate(x):
        out[i] = v * scale[i[1]] + shift[i[1]]
    return out


# ------------------------------------------------------------------ the reference formulas


def naive_batch_norm(x, weight, bias, eps):
    """Training-mode batch norm as the textbook formula, in plain numpy (one shard only)."""
    axes, shape = channel_axes(x)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    x_hat = (x - mean) / array_module(x).sqrt(var + eps)
    return x_hat * weight.reshape(shape) + bias.reshape(shape)


def naive_batch_norm_backward(g, x, weight, eps):
    """``(g_x, g_weight, g_bias)`` of ``naive_batch_norm`` by the textbook formula, in plain
    numpy: g_x = weight / std * (g - mean(g) - x_hat * mean(g * x_hat)), per channel."""
    axes, shape = channel_axes(x)
    mean = x.mean(axis=axes, keepdims=True)
    std = array_module(x).sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    x_hat = (x - mean) / std
    g_x = weight.reshape(shape) / std * (g - g.mean(axis=axes, keepdims=True)
                                         - x_hat * (g * x_hat).mean(axis=axes, keepdims=True))
    return g_x, (g * x_hat).sum(axis=axes), g.sum(axis=axes)


# ------------------------------------------------------------------------------ helpers


def channel_axes(x):
    """The axes a channel's statistics run over, and the shape that broadcasts per-channel
    values (of any block of channels) against x."""
    return (0,) + tuple(range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)


def check_count(count, shape):
    if count < 2:
        raise ValueError(f"batch_norm: needs more than one value per channel in training; got input "
                         f"of shape {shape}")


def _shape(block):
    return (1, -1) + (1,) * (block.ndim - 2)


def _per_channel(values, dtype, block):
    """Per-channel values as x's dtype, shaped to broadcast against a block. Where examples
    are outermost (NCHW), the values are expanded over the spatial axes, so that numpy runs
    each example's whole block of channels as one contiguous loop instead of one loop of
    H*W elements per channel (2-3x faster on small maps)."""
    v = values.astype(dtype, copy=False).reshape(_shape(block))
    if block.ndim > 2 and block.shape[0] > 1 and abs(block.strides[0]) > abs(block.strides[1]):
        return array_module(block).ascontiguousarray(array_module(block).broadcast_to(v, (1,) + block.shape[1:]))
    return v


def _shifted_moments(xp, xb, shift, mean, var, ch, count):
    """``mean`` and ``var`` (float64) of the channels ``ch`` of one block, from the sums of d
    and d^2 over this array's ``count`` values per channel, d = xb - shift in x's dtype (a
    block-sized temporary): each example's sums in x's dtype (short, accurate sums), added
    over the examples in float64 (for examples of fewer than ``_MIN_PARTIAL`` values per
    channel, d and its sums in float64 instead). Each example's partial sums depend on that example and the
    shift alone, so a batch split into synced shards gets the same statistics as one pass, to
    float64 rounding."""
    per_example = xb[0, 0].size  # values of one example in one channel
    if per_example >= _MIN_PARTIAL:
        d = xp.empty_like(xb)
        xp.subtract(xb, shift[ch].reshape(_shape(xb)), out=d)
        axes = string.ascii_lowercase[:d.ndim]
        s1 = d.sum(axis=tuple(range(2, d.ndim))).sum(axis=0, dtype=np.float64)
        s2 = xp.einsum(f"{axes},{axes}->{axes[:2]}", d, d).sum(axis=0, dtype=np.float64)
    else:  # short runs (3x3 maps, (N, C) input): d in float64, summed there
        d = xp.empty_like(xb, dtype=np.float64)
        xp.subtract(xb, shift[ch].reshape(_shape(xb)), out=d)
        s1, s2 = _channel_sum(xp, d), _channel_dot(xp, d, d)
    s1, s2 = s1 / count, s2 / count
    mean[ch] = shift[ch] + s1
    var[ch] = xp.maximum(s2 - s1 * s1, 0.0)


def _shifts(x, shard):
    """Each channel's mean over the batch's first example, in x's dtype: what the sums are
    taken around, so that d = x - shift is small for data far from 0. Every shard of a synced
    batch takes shard 0's (the batch's first example), so that each example's d, and with it
    the statistics, are the same as in one pass over the batch."""
    shift = x[0].reshape(x.shape[1], -1).mean(axis=1, dtype=np.float64).astype(x.dtype)
    if shard is not None:
        group, rank = shard
        shift = group.gather(rank, f"batch_norm shift of {x.shape[1:]}", (shift,))[0][0]
    return shift


def _affine_from_mean(xp, xb, ob, mean, inv_std, scale, bias):
    """``ob = (xb - mean) * scale + bias`` per channel (float64 mean, 1/std, scale, bias).
    Where every channel's mean is within ``_NEAR`` standard deviations of 0 (activations),
    as ``xb * scale + (bias - mean * scale)``, two passes, as PyTorch computes it (rounding
    error a few units of the output's last place); else as
    ``(xb - m) * scale + ((m - mean) * scale + bias)`` with m = mean in x's dtype, whose
    subtraction is exact near the mean (data far from 0: 1e4 + noise in float32)."""
    if _near_zero(xp, mean, inv_std):
        xp.multiply(xb, _per_channel(scale, xb.dtype, ob), out=ob)
        ob += _per_channel(bias - mean * scale, xb.dtype, ob)
        return
    m = mean.astype(xb.dtype)
    xp.subtract(xb, _per_channel(m, xb.dtype, xb), out=ob)
    ob *= _per_channel(scale, xb.dtype, ob)
    ob += _per_channel((m - mean) * scale + bias, xb.dtype, ob)


def _near_zero(xp, mean, inv_std):
    """Whether every channel's mean lies within ``_NEAR`` standard deviations of 0."""
    return bool(xp.all(xp.abs(mean) * inv_std <= _NEAR))


def _channel_sum(xp, a):
    """sum over every axis but 1 (one reduction per contiguous channel run where possible)."""
    rows = _rows(a)
    return rows.sum(axis=1) if rows is not None else a.sum(axis=channel_axes(a)[0])


def _channel_dot(xp, a, b):
    """sum over every axis but 1 of a * b, without a full-size temporary: one BLAS dot per
    channel where each channel's values lie in one contiguous run (a convolution's
    channel-major output), else einsum (several times slower here)."""
    a2, b2 = _rows(a), _rows(b)
    if a2 is not None and b2 is not None:
        if a2.dtype == np.float64:  # einsum's own loop: OpenBLAS's ddot here is 100x slower when threaded
            return xp.einsum("ij,ij->i", a2, b2)
        return (a2[:, None, :] @ b2[:, :, None])[:, 0, 0]
    axes = string.ascii_lowercase[:a.ndim]
    return xp.einsum(f"{axes},{axes}->{axes[1]}", a, b)


def _rows(a):
    """(N, C, ...) as a (C, values) view when each channel is one contiguous run (the
    channels themselves may lie apart, as in a GEMM's padded rows), else None."""
    t = a.swapaxes(0, 1)
    return t.reshape(t.shape[0], -1) if t.shape[0] and t[0].flags.c_contiguous else None


def _in_blocks(c, per_channel, work, *steps):
    """Run each of ``steps`` on every block of channels in turn (a block stays in cache
    between steps), the blocks split over threads when ``work`` is large."""
    def run(lo, hi):
        for ch in _blocks(lo, hi, per_channel):
            for step in steps:
                step(ch)

    parallel_ranges(c, run, work)


def _blocks(lo, hi, per_channel):
    """Slices covering channels [lo, hi) in blocks of about ``_CHUNK`` elements (at least one
    whole channel: its statistics need all of it)."""
    step = max(1, _CHUNK // max(1, per_channel))
    for c in range(lo, hi, step):
        yield slice(c, min(c + step, hi))


def _whole_batch_statistics(shard, count, mean, var, shape):
    """Replace this shard's per-channel ``mean`` and ``var`` (in place) by the whole batch's,
    combined from every shard's count, mean and variance (Chan et al.'s pairwise formula, in
    shard order); returns the batch's count per channel."""
    group, rank = shard
    # copies: the other shards read these while this one overwrites mean and var below
    parts = group.gather(rank, f"batch_norm forward of {shape[1:]}", (count, mean.copy(), var.copy()))
    total = sum(n for n, _, _ in parts)
    check_count(total, f"{shape} (one of {group.size} shards)")
    mean[...] = _add_in_order(m * (n / total) for n, m, _ in parts)
    var[...] = _add_in_order((v + (m - mean) ** 2) * (n / total) for n, m, v in parts)
    return total


def _add_in_order(arrays):
    total = None
    for a in arrays:
        total = a.copy() if total is None else total + a
    return total
