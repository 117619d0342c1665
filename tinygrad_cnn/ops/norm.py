"""Batch normalisation in training mode: two primitives, the op and its VJP.

``batch_norm``'s forward and ``batch_norm_backward``'s forward are fused kernels
(``kernels/norm.py``: one read of x per block of channels each way instead of a dozen
passes, only per-channel values saved, channel blocks on threads, statistics synced across
the shards of a batch). ``batch_norm``'s VJP is one call of ``batch_norm_backward``, a
primitive with three outputs (the gradients of x, weight and bias); that one's VJP is Tensor
code, so batch norm is differentiable to any order. Evaluation mode is ``channel_affine``
(``x * scale + shift`` per channel, one blocked pass), with scale and shift computed from
the running statistics, the weight and the bias in ``functional.batch_norm``.
"""
from __future__ import annotations

from ..kernels import norm as kernels
from ..tensor import Tensor, enable_grad, grad, is_grad_enabled
from ..threads import current_shard
from ..xp import is_floating
from . import Op, register


@register
class BatchNorm(Op):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, with the mean and the (biased)
    variance of each channel (axis 1) over the batch and every other axis. When
    ``running_mean``/``running_var`` are given they are updated in place with ``momentum``
    (the unbiased variance, as in PyTorch).

    Run as one shard of a batch that several threads split (``tinygrad_cnn.parallel``,
    ``sync_batch_norm=True``), it normalises with the whole batch's statistics, gathered
    from every shard, and its VJP with the whole batch's sums, so each shard gets exactly
    its part of the full batch's gradient (PyTorch's SyncBatchNorm, for threads)."""

    name = "batch_norm"
    reads = ("inputs",)

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
        out, stats, self.count = kernels.batch_norm(x, weight, bias, eps, running_mean, running_var, momentum)
        self.save(*stats)  # per channel: the mean and 1/std, for the fused VJP (x is a parent)
        return out

    def backward(self, g):
        x, weight, _ = self.parents
        need_x, need_weight, need_bias = self.needs_input_grad
        stats = self.saved
        if need_x or (x.requires_grad and is_grad_enabled()):  # g_weight may be differentiated in x later
            mean, inv_std = stats
            g_x, g_weight, g_bias = BatchNormBackward.apply(g, x, weight, mean=mean, inv_std=inv_std,
                                                            count=self.count, eps=self.params.get("eps", 1e-5))
        elif not is_grad_enabled():  # nothing will differentiate through x: the parameters' gradients, two sums
            _, g_weight, g_bias = kernels.batch_norm_backward(g.data, x.data, stats, weight.data, self.count,
                                                              input_grad=False)
            g_x, g_weight, g_bias = None, Tensor._wrap(g_weight, False), Tensor._wrap(g_bias, False)
        else:  # the same sums in Tensor code (g may carry a graph); x_hat is a constant
            axes, _ = kernels.channel_axes(g)
            g_x, g_bias = None, g.sum(axis=axes)
            x_hat = kernels.normalised(x.data, stats)
            g_weight = (g * Tensor._wrap(x_hat, False)).sum(axis=axes) if need_weight else None
        return (g_x if need_x else None), (g_weight if need_weight else None), (g_bias if need_bias else None)

    def label(self):
        return f"eps={self.params.get('eps', 1e-5):g} momentum={self.params.get('momentum', 0.1):g}"


@register
class BatchNormBackward(Op):
    """``(g_x, g_weight, g_bias)``: training-mode batch norm's VJP at input ``x`` with
    ``weight``, for the gradient ``g`` of its output, as one fused kernel (with the whole
    batch's sums when run as a shard of a synced batch).

    ``mean`` and ``inv_std`` are the forward's per-channel statistics (float64) and ``count``
    the values per channel over the whole batch; ``batch_norm`` passes them so that nothing is recomputed. They are functions
    of ``x``, not inputs of their own: omitted, they are computed from ``x``.

    Its VJP differentiates the same function written in Tensor code
    (``batch_norm_vjp``: mean, variance and x_hat recomputed from ``x``) with ``grad``,
    against aliases of exactly the inputs that need a gradient, recording a graph when grad
    mode is on. That is a handful of lines and plainly right, where batch norm's explicit
    double backward is a page of formulas (PyTorch's ``batchnorm_double_backward``); it
    costs a second-order pass one recomputation of the statistics, which first-order
    training never pays. A synced shard's second order would need the batch's sums of those Tensors from
    every shard; it raises ``NotImplementedError`` instead."""

    name = "batch_norm_backward"
    reads = ("inputs",)

    def forward(self, g, x, weight, mean=None, inv_std=None, count=None, eps=1e-5):
        if not (g.shape == x.shape and x.ndim >= 2 and weight.shape == (x.shape[1],)):
            raise ValueError(f"batch_norm_backward: expects g and x of one shape (N, C, ...) and weight of "
                             f"shape (C,); got {g.shape}, {x.shape} and {weight.shape}")
        if mean is None or inv_std is None:
            (mean, inv_std), count = kernels.statistics(x, eps)
        elif count is None:
            count = x.size // x.shape[1]
        self.sharded = current_shard() is not None
        return kernels.batch_norm_backward(g, x, (mean, inv_std), weight, count)

    def backward(self, gg_x, gg_weight, gg_bias):
        if self.sharded:
            raise NotImplementedError(
                "batch_norm_backward: the second derivative of batch norm over synced shards "
                "(parallel.accumulate_gradients with sync_batch_norm=True) is not implemented; take "
                "higher-order gradients of the whole batch in one thread")
        need = self.needs_input_grad
        create = is_grad_enabled()  # the engine turns it on for create_graph=True

        def alias(t, needed):  # what the Tensor-code VJP is differentiated against
            if not needed:
                return t.detach()
            # a fresh node: the partial derivative, not through t's own history (g may depend on x)
            return t.reshape(t.shape) if create else t.detach().requires_grad_()

        inputs = [alias(t, n) for t, n in zip(self.parents, need)]
        with enable_grad():
            outs = batch_norm_vjp(*inputs, eps=self.params.get("eps", 1e-5))
            pairs = [(o, gg) for o, gg in zip(outs, (gg_x, gg_weight, gg_bias)) if o.requires_grad]
            found = iter(grad([o for o, _ in pairs], [t for t, n in zip(inputs, need) if n],
                              [gg for _, gg in pairs], create_graph=create, allow_unused=True))
        return tuple(next(found) if n else None for n in need)

    def label(self):
        return f"eps={self.params.get('eps', 1e-5):g}"

    def __repr__(self):  # its params hold per-channel arrays
        return f"{self.name}({self.label()})"


@register
class ChannelAffine(Op):
    """``x * scale + shift``, one value of each per channel (axis 1): evaluation-mode batch
    norm's map, as one blocked pass instead of a subtraction, a multiplication and an
    addition over the whole activation. Its VJP is Tensor code: ``g * scale`` for x, and the
    per-channel sums of ``g * x`` and ``g`` for scale and shift."""

    name = "channel_affine"
    reads = ("inputs",)

    def forward(self, x, scale, shift):
        if x.ndim < 2 or scale.shape != (x.shape[1],) or shift.shape != (x.shape[1],):
            raise ValueError(f"channel_affine: expects x of shape (N, C, ...) and scale and shift of shape (C,); "
                             f"got {x.shape}, {scale.shape} and {shift.shape}")
        return kernels.channel_affine(x, scale, shift)

    def backward(self, g):
        x, scale, _ = self.parents
        need_x, need_scale, need_shift = self.needs_input_grad
        axes, shape = kernels.channel_axes(x)
        return (g * scale.reshape(*shape) if need_x else None,
                (g * x).sum(axis=axes) if need_scale else None,
                g.sum(axis=axes) if need_shift else None)


def batch_norm_vjp(g, x, weight, eps=1e-5):
    """``(g_x, g_weight, g_bias)`` of training-mode batch norm, in Tensor code: what
    ``batch_norm_backward`` computes, differentiable (its VJP, and the reference for it)."""
    axes, shape = kernels.channel_axes(x)
    n = x.numel() // x.shape[1]
    centred = x - x.mean(axis=axes, keepdims=True)
    inv_std = ((centred * centred).mean(axis=axes, keepdims=True) + eps) ** -0.5
    x_hat = centred * inv_std
    g_bias, g_weight = g.sum(axis=axes), (g * x_hat).sum(axis=axes)
    g_x = (g - x_hat * (g_weight.reshape(shape) / n) - g_bias.reshape(shape) / n) * (weight.reshape(shape) * inv_std)
    return g_x, g_weight, g_bias
