"""Batch normalisation in training mode, as one primitive with a hand-written VJP.

Written from primitives, batch norm takes about a dozen full passes over the activations
forward and backward (mean, centre, square, scale, shift and each of their VJPs); this op
takes six each way and saves one array, the normalised input. Its gradient is checked
against finite differences and against the same function composed from primitives
(``tests/test_ops_gradcheck.py``). Evaluation mode is a per-channel affine map and stays a
composite in ``functional.batch_norm``.
"""
from __future__ import annotations

import string

from ..backend import array_module, is_floating
from . import Op, register


def _channel_dot(xp, a, b):
    """sum over every axis but 1 of a * b, without a full-size temporary."""
    axes = string.ascii_lowercase[:a.ndim]
    return xp.einsum(f"{axes},{axes}->{axes[1]}", a, b)


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
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, c) + (1,) * (x.ndim - 2)
        mean = x.mean(axis=axes)
        x_hat = x - mean.reshape(shape)
        var = _channel_dot(xp, x_hat, x_hat) / count
        inv_std = 1 / xp.sqrt(var + eps)
        x_hat *= inv_std.reshape(shape)
        out = x_hat * weight.reshape(shape)
        out += bias.reshape(shape)
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
        axes = (0,) + tuple(range(2, g.ndim))
        shape = (1, g.shape[1]) + (1,) * (g.ndim - 2)
        count = g.size // g.shape[1]
        g_bias = g.sum(axis=axes)
        g_weight = _channel_dot(xp, g, x_hat)
        g_x = None
        if self.needs_input_grad[0]:
            # d/dx of the normalised value: remove the parts of g along 1 and along x_hat
            scale = weight * inv_std
            g_x = g * scale.reshape(shape)
            correction = x_hat * (scale * g_weight / count).reshape(shape)
            g_x -= correction
            g_x -= (scale * g_bias / count).reshape(shape)
        return g_x, g_weight, g_bias
