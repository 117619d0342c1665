"""Batch-normalisation kernels: training-mode statistics and normalisation, and the fused
backward, each a few full passes over the activations, in blocks of whole channels (a block
stays in cache between passes), on several threads for large inputs.

Written from primitives, batch norm takes about a dozen full passes forward and backward
(mean, centre, square, scale, shift and each of their VJPs); ``batch_norm`` takes six and
``batch_norm_backward`` six (two for the sums, four to route the input gradient). Run as
one shard of a batch that several threads split (``threads.current_shard()``), both use the
whole batch's statistics and sums, gathered from every shard (PyTorch's SyncBatchNorm, for
threads). ``naive_batch_norm`` and ``naive_batch_norm_backward`` are the plain numpy
formulas the tests compare them against.
"""
from __future__ import annotations

import string

from ..threads import current_shard, parallel_ranges
from ..xp import array_module

_CHUNK = 1 << 20  # elements per block of channels: enough work per call that numpy's overhead is small


def batch_norm(x, weight, bias, eps, running_mean=None, running_var=None, momentum=0.1):
    """``(out, x_hat, inv_std, count)``: out = x_hat * weight + bias, x_hat = (x - mean) *
    inv_std, inv_std = 1 / sqrt(var + eps), with the mean and the biased variance of each
    channel (axis 1) over every other axis, and ``count`` values per channel (the whole
    batch's when this thread runs one shard of it). ``running_mean``/``running_var`` (if
    given) move towards the batch's mean and unbiased variance by ``momentum``, in place,
    once per batch (by shard 0 of a sharded one). ``out`` and ``x_hat`` keep x's layout
    (e.g. a convolution's channel-major output)."""
    xp = array_module(x)
    c = x.shape[1]
    axes, shape = channel_axes(x)
    mean, var = xp.empty(c, dtype=x.dtype), xp.empty(c, dtype=x.dtype)
    inv_std = xp.empty(c, dtype=x.dtype)
    x_hat, out = xp.empty_like(x), xp.empty_like(x)  # the input's layout, e.g. channel-major
    shard = current_shard()
    count = local = x.size // c  # values per channel: the batch's, and this array's

    def centre(ch):  # x_hat = x - mean; var, over this array's values
        xb, hb = x[:, ch], x_hat[:, ch]
        mean[ch] = xb.mean(axis=axes)
        xp.subtract(xb, mean[ch].reshape(shape), out=hb)
        var[ch] = _channel_dot(xp, hb, hb) / local

    def recentre(ch):  # x_hat = x - the whole batch's mean
        xp.subtract(x[:, ch], mean[ch].reshape(shape), out=x_hat[:, ch])

    def scale(ch):  # x_hat /= std; out = x_hat * weight + bias
        hb, ob = x_hat[:, ch], out[:, ch]
        inv_std[ch] = 1 / xp.sqrt(var[ch] + eps)
        hb *= inv_std[ch].reshape(shape)
        xp.multiply(hb, weight[ch].reshape(shape), out=ob)
        ob += bias[ch].reshape(shape)

    if shard is None:
        check_count(count, x.shape)
        _in_blocks(c, local, 6 * x.size, centre, scale)
    else:  # this shard's statistics, then the whole batch's, combined from every shard's
        _in_blocks(c, local, 3 * x.size, centre)
        count = _whole_batch_statistics(shard, local, mean, var, x.shape)
        _in_blocks(c, local, 4 * x.size, recentre, scale)
    if shard is None or shard[1] == 0:  # the running statistics move once per batch
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean
        if running_var is not None:
            running_var *= 1 - momentum
            running_var += momentum * var * (count / (count - 1))
    return out, x_hat, inv_std, count


def batch_norm_backward(g, x_hat, inv_std, weight, count, input_grad=True):
    """``(g_x, g_weight, g_bias)``, batch norm's VJP from the forward's ``x_hat`` and
    ``inv_std``: g_bias = sum(g), g_weight = sum(g * x_hat) per channel, and
    g_x = weight * inv_std * (g - x_hat * g_weight / count - g_bias / count), with the whole
    batch's sums and ``count`` (so that, run as one shard, each shard gets exactly its part of
    the full batch's input gradient; its g_weight and g_bias are its own share). ``g_x`` is
    None without ``input_grad``."""
    xp = array_module(g)
    axes, shape = channel_axes(g)
    c = g.shape[1]
    local_count = g.size // c
    g_bias, g_weight = xp.empty(c, dtype=g.dtype), xp.empty(c, dtype=g.dtype)
    g_x = xp.empty_like(x_hat) if input_grad else None
    shard = current_shard()
    sum_bias, sum_weight = g_bias, g_weight  # the whole batch's sums (this array's, unsharded)

    def sums(ch):
        gb, hb = g[:, ch], x_hat[:, ch]
        g_bias[ch] = gb.sum(axis=axes)
        g_weight[ch] = _channel_dot(xp, gb, hb)

    def route(ch):
        # d/dx of the normalised value: remove the parts of g along 1 and along x_hat,
        # then scale: weight * inv_std * (g - x_hat * g_w / n - g_b / n), n over the batch
        gb, hb, gxb = g[:, ch], x_hat[:, ch], g_x[:, ch]
        xp.multiply(hb, (sum_weight[ch] / count).reshape(shape), out=gxb)
        gxb += (sum_bias[ch] / count).reshape(shape)
        xp.subtract(gb, gxb, out=gxb)
        gxb *= (weight[ch] * inv_std[ch]).reshape(shape)

    if shard is None:
        _in_blocks(c, local_count, 6 * g.size, *((sums, route) if g_x is not None else (sums,)))
    else:  # the whole batch's sums, from every shard's, before any shard routes g
        _in_blocks(c, local_count, 2 * g.size, sums)
        group, rank = shard
        parts = group.gather(rank, f"batch_norm backward of {g.shape[1:]}", (g_bias.copy(), g_weight.copy()))
        sum_bias, sum_weight = _add_in_order(p[0] for p in parts), _add_in_order(p[1] for p in parts)
        if g_x is not None:
            _in_blocks(c, local_count, 4 * g.size, route)
    return g_x, g_weight, g_bias  # this shard's share of the weight and bias gradients


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


def _channel_dot(xp, a, b):
    """sum over every axis but 1 of a * b, without a full-size temporary: one BLAS dot per
    channel where each channel's values lie in one contiguous run (a convolution's
    channel-major output), else einsum (several times slower here)."""
    a2, b2 = _rows(a), _rows(b)
    if a2 is not None and b2 is not None:
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
