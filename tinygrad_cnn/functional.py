"""Functions users call on tensors. Composites (conv2d, linear, cross_entropy, softmax, ...)
are written from the primitives in ``ops/``, so their gradients come from the graph and are
never written by hand here.
"""
from __future__ import annotations

import numpy as np

from . import ops
from .ops.conv import window_geometry
from .tensor import Tensor
from .xp import array_module, is_floating

__all__ = ["conv2d", "linear", "max_pool2d", "relu", "sigmoid", "tanh", "log_softmax", "softmax",
           "cross_entropy", "nll_loss", "mse_loss", "dropout", "batch_norm", "im2col", "col2im", "pad",
           "flatten"]


def _tensor(x, name, what):
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: {what} must be a Tensor; got {type(x).__name__}")
    return x


# ------------------------------------------------------------------------------ primitives


def im2col(x, kernel_size, stride=1, padding=0, ones_row=False):
    """(N, C, H, W) -> (C*kH*kW, N*Ho*Wo) patch columns (zero padding folded in), plus a last
    row of ones with ``ones_row``. Primitive."""
    return ops.Im2col.apply(x, kernel_size=kernel_size, stride=stride, padding=padding, ones_row=ones_row)


def col2im(cols, input_shape, kernel_size, stride=1, padding=0):
    """The adjoint of ``im2col``: scatter-add columns back to an (N, C, H, W) tensor. Primitive."""
    return ops.Col2im.apply(cols, input_shape=tuple(input_shape), kernel_size=kernel_size,
                            stride=stride, padding=padding)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max over kH x kW windows of an NCHW tensor (stride defaults to the kernel). Primitive."""
    return ops.MaxPool2d.apply(x, kernel_size=kernel_size, stride=stride, padding=padding)


def _int(n):
    return type(n) is int or (isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)))


def _pad_width(pad_width):
    """``pad_width`` in Python ints, or a TypeError: a float width (1.5) would be truncated, or
    fail deep inside the op."""
    if _int(pad_width):
        return int(pad_width)
    if isinstance(pad_width, (tuple, list)):
        out = []
        for p in pad_width:
            if _int(p):
                out.append(int(p))
            elif isinstance(p, (tuple, list)) and len(p) == 2 and _int(p[0]) and _int(p[1]):
                out.append((int(p[0]), int(p[1])))
            elif isinstance(p, (tuple, list)) and all(_int(n) for n in p):  # a wrong length: the op says so
                out.append(tuple(int(n) for n in p))
            else:
                break
        else:
            return tuple(out)
    raise TypeError(f"pad: pad_width must be an int or one (before, after) pair of ints per axis; got {pad_width!r}")


def pad(x, pad_width, value=0.0):
    """Constant padding; ``pad_width`` is an int or one ``(before, after)`` pair per axis. Primitive."""
    return ops.Pad.apply(x, pad_width=_pad_width(pad_width), value=value)


def relu(x):
    return ops.Relu.apply(x)


def sigmoid(x):
    return ops.Sigmoid.apply(x)


def tanh(x):
    return ops.Tanh.apply(x)


def log_softmax(x, axis=-1):
    return ops.LogSoftmax.apply(x, axis=axis)


# ------------------------------------------------------------------------------ composites


def softmax(x, axis=-1):
    """exp(log_softmax(x)): stable, and its gradient comes from the two primitives."""
    return log_softmax(x, axis=axis).exp()


def flatten(x, start=1):
    return _tensor(x, "flatten", "input").flatten(start)


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """2-d convolution (cross-correlation, as in PyTorch) of an NCHW tensor.

    ``weight`` is (C_out, C_in, kH, kW), ``bias`` (C_out,). Built as im2col -> matmul ->
    reshape -> permute; im2col folds the zero padding in so no padded copy is made. A bias
    rides in the GEMM as ``[W | b] @ [cols; 1]`` (im2col appends the row of ones), which
    saves a pass over the output each way.
    """
    _tensor(x, "conv2d", "input")
    _tensor(weight, "conv2d", "weight")
    if x.ndim != 4:
        raise ValueError(f"conv2d: expects a 4-d NCHW input; got shape {x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"conv2d: weight must be 4-d (C_out, C_in, kH, kW); got shape {weight.shape}")
    c_out, c_in, kh, kw = weight.shape
    if x.shape[1] != c_in:
        raise ValueError(f"conv2d: input has {x.shape[1]} channels (shape {x.shape}) but the weight "
                         f"{weight.shape} expects {c_in}")
    if bias is not None and bias.shape != (c_out,):
        raise ValueError(f"conv2d: bias must have shape ({c_out},); got {bias.shape}")
    n = x.shape[0]
    # validate stride/padding/kernel here so that errors name conv2d, not the inner im2col
    _, _, _, (ho, wo) = window_geometry("conv2d", x.shape, (kh, kw), stride, padding)
    k = c_in * kh * kw
    w = weight.reshape(c_out, k)
    if bias is not None:  # [W | b] @ [cols; 1]: the bias rides in the GEMM
        w = pad(w, ((0, 0), (0, 1))) + pad(bias.reshape(c_out, 1), ((0, 0), (k, 0)))
    cols = im2col(x, (kh, kw), stride, padding, ones_row=bias is not None)  # (k [+ 1], N*Ho*Wo)
    out = (w @ cols).reshape(c_out, n, ho, wo)
    return out.permute(1, 0, 2, 3)                             # (N, C_out, Ho, Wo)


def linear(x, weight, bias=None):
    """x @ weight.T + bias, with ``weight`` of shape (out, in) as in PyTorch."""
    _tensor(x, "linear", "input")
    _tensor(weight, "linear", "weight")
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-d (out_features, in_features); got shape {weight.shape}")
    if x.shape[-1:] != weight.shape[1:]:
        raise ValueError(f"linear: input of shape {x.shape} has {x.shape[-1] if x.ndim else 0} features but "
                         f"the weight {weight.shape} expects {weight.shape[1]}")
    out = x @ weight.T
    if bias is not None:
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"linear: bias must have shape ({weight.shape[0]},); got {bias.shape}")
        out = out + bias
    return out


def _class_targets(name, targets, n, n_classes):
    t = targets.data if isinstance(targets, Tensor) else targets
    t = array_module(t).asarray(t) if not isinstance(t, (list, tuple)) else np.asarray(t)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{name}: targets must be integer class indices; got dtype {t.dtype}")
    if t.shape != (n,):
        raise ValueError(f"{name}: targets must have shape ({n},) for logits of shape ({n}, {n_classes}); "
                         f"got {t.shape}")
    if n and (int(t.min()) < 0 or int(t.max()) >= n_classes):
        raise ValueError(f"{name}: target classes must lie in [0, {n_classes}); got values from "
                         f"{int(t.min())} to {int(t.max())}")
    return t


def _reduce(name, loss, reduction):
    if reduction == "mean":
        if loss.numel() == 0:  # an empty batch: NaN, as numpy's and PyTorch's mean
            return loss.sum() * float("nan")
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"{name}: reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")


def nll_loss(log_probs, targets, reduction="mean"):
    """Negative log-likelihood of integer ``targets`` under (N, C) log-probabilities."""
    _tensor(log_probs, "nll_loss", "log_probs")
    if log_probs.ndim != 2:
        raise ValueError(f"nll_loss: expects (N, C) log-probabilities; got shape {log_probs.shape}")
    n, c = log_probs.shape
    t = _class_targets("nll_loss", targets, n, c)
    picked = log_probs[array_module(t).arange(n), t]
    return _reduce("nll_loss", -picked, reduction)


def cross_entropy(logits, targets, reduction="mean", label_smoothing=0.0):
    """Softmax cross-entropy of (N, C) logits against integer class ``targets``:
    log_softmax -> pick each row's target -> mean over the batch (as PyTorch's).
    ``label_smoothing`` mixes in the uniform distribution over classes."""
    _tensor(logits, "cross_entropy", "logits")
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: expects (N, C) logits; got shape {logits.shape}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must lie in [0, 1]; got {label_smoothing}")
    targets = _class_targets("cross_entropy", targets, *logits.shape)  # errors name cross_entropy
    logp = log_softmax(logits, axis=-1)
    loss = nll_loss(logp, targets, reduction="none")
    if label_smoothing:
        loss = loss * (1.0 - label_smoothing) - logp.mean(axis=-1) * label_smoothing
    return _reduce("cross_entropy", loss, reduction)


def mse_loss(input, target, reduction="mean"):
    """Mean squared error."""
    _tensor(input, "mse_loss", "input")
    target = target if isinstance(target, Tensor) else input._lift(target)
    if input.shape != target.shape:
        raise ValueError(f"mse_loss: input shape {input.shape} and target shape {target.shape} differ")
    return _reduce("mse_loss", (input - target) ** 2, reduction)


def dropout(x, p=0.5, training=True, rng=None):
    """Inverted dropout: zero each element with probability ``p`` and scale the rest by
    1/(1-p), so evaluation needs no rescaling. ``rng`` is a numpy Generator (seeded)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must lie in [0, 1); got {p}")
    if not training or p == 0.0:
        return x
    rng = np.random.default_rng() if rng is None else rng
    keep = rng.random(x.shape) >= p
    mask = Tensor(keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p)))
    return x * mask


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=True, momentum=0.1, eps=1e-5):
    """Batch normalisation over all axes but the channel axis 1 (PyTorch's semantics).

    In training it normalises with the batch statistics (the ``batch_norm`` primitive) and
    updates ``running_mean`` and ``running_var`` (ndarrays, in place; the unbiased variance,
    as PyTorch); in evaluation it is the affine map those statistics define, composed from
    primitives."""
    _tensor(x, "batch_norm", "input")
    if x.ndim < 2:
        raise ValueError(f"batch_norm: expects (N, C, ...) input; got shape {x.shape}")
    c = x.shape[1]
    xp = array_module(x.data)
    weight = weight if weight is not None else Tensor(xp.ones(c, dtype=x.dtype))
    bias = bias if bias is not None else Tensor(xp.zeros(c, dtype=x.dtype))
    if training:
        return ops.BatchNorm.apply(x, weight, bias, running_mean=running_mean, running_var=running_var,
                                   momentum=momentum, eps=eps)
    if not is_floating(x.dtype):  # as the training primitive: statistics are never cast to integers
        raise TypeError(f"batch_norm: expects a floating-point tensor; got dtype {x.dtype}")
    if running_mean is None or running_var is None:
        raise ValueError("batch_norm: evaluation (training=False) normalises with running_mean and "
                         "running_var; got None (pass the statistics, or training=True for the batch's own)")
    shape = (1, c) + (1,) * (x.ndim - 2)
    centered = x - Tensor(running_mean.reshape(shape).astype(x.dtype, copy=False))
    scale = Tensor((1.0 / xp.sqrt(running_var.reshape(shape) + eps)).astype(x.dtype, copy=False))
    return centered * (scale * weight.reshape(*shape)) + bias.reshape(*shape)
