"""Batch normalisation in training mode, as one primitive with a hand-written VJP.

Written from primitives, batch norm takes about a dozen full passes over the activations
forward and backward (mean, centre, square, scale, shift and each of their VJPs); this op
takes six each way, saves one array, the normalised input, and works on blocks of whole
channels, on several threads for large inputs. Its gradient is checked against
finite differences and against the same function composed from primitives
(``tests/test_ops_gradcheck.py``). Evaluation mode is a per-channel affine map and stays a
composite in ``functional.batch_norm``.
"""
from __future__ import annotations

import string

from ..backend import array_module, is_floating, parallel_ranges
from . import Op, register


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
    """(N, C, ...) as a (C, values) view when each channel is one contiguous run, else None."""
    t = a.swapaxes(0, 1)
    return t.reshape(t.shape[0], -1) if t.flags.c_contiguous else None


@register
class BatchNorm(Op):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, with the mean and the (biased)
    variance of each channel (axis 1) over the batch and every other axis. When
    ``running_mean``/``running_var`` are given they are updated in place with ``momentum``
    (the unbiased variance, as in PyTorch)."""

    name = "batch_norm"

    def forward(self, x, weight, bias, running_mean=None, running_var=None, momentum=0.1, eps=1e-5):
        if not is_floating(x.dtype):
            raise TypeError(f"batch_norm: expects a floating-point tensor; got dtype {x.dtype}")
        if x.ndim < 2:
            raise ValueError(f"batch_norm: expects (N, C, ...) input; got shape {x.shape}")
        c = x.shape[1]
        for what, a in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                        ("running_var", running_var)):
            if a is not None and a.shape != (c,):
                raise ValueError(f"batch_norm: {what} must have shape ({c},) for input of shape {x.shape}; "
                                 f"got {a.shape}")
        count = x.size // c
        if count < 2:
            raise ValueError(f"batch_norm: needs more than one value per channel in training; got input "
                             f"of shape {x.shape}")
        xp = array_module(x)
        axes, shape = _channel_axes(x)
        mean, var = xp.empty(c, dtype=x.dtype), xp.empty(c, dtype=x.dtype)
        inv_std = xp.empty(c, dtype=x.dtype)
        x_hat, out = xp.empty_like(x), xp.empty_like(x)  # the input's layout, e.g. channel-major

        def normalise(lo, hi):
            for ch in _blocks(lo, hi, count):
                xb, hb, ob = x[:, ch], x_hat[:, ch], out[:, ch]
                mean[ch] = xb.mean(axis=axes)
                xp.subtract(xb, mean[ch].reshape(shape), out=hb)
                var[ch] = _channel_dot(xp, hb, hb) / count
                inv_std[ch] = 1 / xp.sqrt(var[ch] + eps)
                hb *= inv_std[ch].reshape(shape)
                xp.multiply(hb, weight[ch].reshape(shape), out=ob)
                ob += bias[ch].reshape(shape)

        parallel_ranges(c, normalise, 6 * x.size)
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean
        if running_var is not None:
            running_var *= 1 - momentum
            running_var += momentum * var * (count / (count - 1))
        self.save(x_hat, inv_std, weight)
        return out

    def backward(self, g):
        x_hat, inv_std, weight = self.saved
        xp = array_module(g)
        axes, shape = _channel_axes(g)
        c = g.shape[1]
        count = g.size // c
        g_bias, g_weight = xp.empty(c, dtype=g.dtype), xp.empty(c, dtype=g.dtype)
        g_x = xp.empty_like(x_hat) if self.needs_input_grad[0] else None

        def route(lo, hi):
            for ch in _blocks(lo, hi, count):
                gb, hb = g[:, ch], x_hat[:, ch]
                g_bias[ch] = gb.sum(axis=axes)
                g_weight[ch] = _channel_dot(xp, gb, hb)
                if g_x is not None:
                    # d/dx of the normalised value: remove the parts of g along 1 and along
                    # x_hat, then scale: weight * inv_std * (g - x_hat * g_w / n - g_b / n)
                    gxb = g_x[:, ch]
                    xp.multiply(hb, (g_weight[ch] / count).reshape(shape), out=gxb)
                    gxb += (g_bias[ch] / count).reshape(shape)
                    xp.subtract(gb, gxb, out=gxb)
                    gxb *= (weight[ch] * inv_std[ch]).reshape(shape)

        parallel_ranges(c, route, 6 * g.size)
        return g_x, g_weight, g_bias


_CHUNK = 1 << 20  # elements per block of channels: enough work per call that numpy's overhead is small


def _channel_axes(x):
    """The axes a channel's statistics run over, and the shape that broadcasts per-channel
    values (of any block of channels) against x."""
    return (0,) + tuple(range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)


def _blocks(lo, hi, per_channel):
    """Slices covering channels [lo, hi) in blocks of about ``_CHUNK`` elements (at least one
    whole channel: its statistics need all of it)."""
    step = max(1, _CHUNK // max(1, per_channel))
    for c in range(lo, hi, step):
        yield slice(c, min(c + step, hi))
