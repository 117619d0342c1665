"""Functions users call on tensors. Composites (conv2d, linear, cross_entropy, softmax, ...)
are written from the primitives in ``ops/``, so their gradients come from the graph and are
never written by hand here. Names, arguments and defaults are PyTorch's
(``torch.nn.functional``), so code ports by changing the import; docs/api.md lists them all.

Composites that choose between formulas elementwise (ELU's two sides, softplus above its
threshold) use ``where`` with each formula fed only the inputs it is chosen for, so that
the branch not taken can neither overflow nor send a NaN into the gradient.
"""
from __future__ import annotations

import os as _os

import numpy as np

from . import ops
from .ops.conv import as_pair, conv_geometry
from .tensor import Tensor, _axis, where
from .xp import array_module, is_floating

__all__ = ["conv2d", "linear", "max_pool2d", "relu", "sigmoid", "tanh", "log_softmax", "softmax",
           "cross_entropy", "nll_loss", "mse_loss", "dropout", "batch_norm", "im2col", "col2im", "pad",
           "flatten", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "conv_transpose2d",
           # activations
           "leaky_relu", "elu", "celu", "selu", "gelu", "silu", "swish", "softplus", "logsigmoid", "relu6",
           "hardtanh", "hardsigmoid", "hardswish", "mish",
           # joining, splitting, choosing
           "cat", "concatenate", "stack", "split", "chunk", "where", "one_hot",
           # normalisation and lookup
           "layer_norm", "group_norm", "embedding",
           # losses
           "binary_cross_entropy", "binary_cross_entropy_with_logits", "l1_loss", "smooth_l1_loss",
           "huber_loss"]


def _tensor(x, name, what):
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: {what} must be a Tensor; got {type(x).__name__}")
    return x


# ------------------------------------------------------------------------------ primitives


def im2col(x, kernel_size, stride=1, padding=0, ones_row=False, dilation=1):
    """(N, C, H, W) -> (C*kH*kW, N*Ho*Wo) patch columns (zero padding folded in), plus a last
    row of ones with ``ones_row``. ``padding``: an int, a pair, (top, bottom, left, right),
    'same' or 'valid'. Primitive."""
    if dilation == 1:  # the parameters as before: graphs and labels of plain windows unchanged
        return ops.Im2col.apply(x, kernel_size=kernel_size, stride=stride, padding=padding, ones_row=ones_row)
    return ops.Im2col.apply(x, kernel_size=kernel_size, stride=stride, padding=padding, ones_row=ones_row,
                            dilation=dilation)


def col2im(cols, input_shape, kernel_size, stride=1, padding=0, dilation=1):
    """The adjoint of ``im2col``: scatter-add columns back to an (N, C, H, W) tensor. Primitive."""
    if dilation == 1:
        return ops.Col2im.apply(cols, input_shape=tuple(input_shape), kernel_size=kernel_size,
                                stride=stride, padding=padding)
    return ops.Col2im.apply(cols, input_shape=tuple(input_shape), kernel_size=kernel_size,
                            stride=stride, padding=padding, dilation=dilation)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max over kH x kW windows of an NCHW (or unbatched CHW) tensor, as ``torch.nn.functional.
    max_pool2d``: stride defaults to the kernel, padding counts as -inf and may be at most
    half the kernel (the undilated one, as PyTorch), ``ceil_mode`` keeps a last partial window that starts inside the
    input or the left padding. ``padding`` may also be a (top, bottom, left, right) tuple
    (beyond PyTorch, as conv2d takes). With ``return_indices``, also the winners (the first
    maximum in row-major order, as PyTorch) as int64 flat indices into each (H, W) plane,
    without gradient. Primitive."""
    _tensor(x, "max_pool2d", "input")
    return _unbatched(x, "max_pool2d", lambda x4: _max_pool2d(x4, kernel_size, stride, padding, dilation,
                                                              ceil_mode, return_indices))


def _max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    params = dict(kernel_size=kernel_size, stride=stride, padding=padding)
    if dilation != 1:
        params["dilation"] = dilation
    if ceil_mode:
        params["ceil_mode"] = True
    if not return_indices:
        return ops.MaxPool2d.apply(x, **params)
    out, indices = ops.MaxPool2d.apply(x, **params, return_indices=True)
    return out, indices.detach()


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Mean over kH x kW windows of an NCHW (or unbatched CHW) tensor, as
    ``torch.nn.functional.avg_pool2d``: stride defaults to the kernel, padding adds zeros and
    may be at most half the kernel; each window's sum is divided by ``divisor_override`` if
    given, else by its size cut at the end of the padding (``count_include_pad``, the
    default; a ceil-mode window past the padding counts only up to it) or by the number of
    input elements it holds. ``padding`` may also be (top, bottom, left, right). Primitive
    (see ``ops.pool.AvgPool2d`` for why)."""
    _tensor(x, "avg_pool2d", "input")
    return _unbatched(x, "avg_pool2d", lambda x4: ops.AvgPool2d.apply(
        x4, kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=bool(ceil_mode),
        count_include_pad=bool(count_include_pad), divisor_override=divisor_override))


def _adaptive_size(name, x, output_size):
    """(Ho, Wo) from an int or a pair whose None entries keep the input's size."""
    if x.ndim not in (3, 4):
        raise ValueError(f"{name}: expects a 4-d NCHW or 3-d CHW tensor; got shape {tuple(x.shape)}")
    sizes = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(sizes) != 2:
        raise ValueError(f"{name}: output_size must be an int or an (h, w) pair (None keeps a side); "
                         f"got {output_size!r}")
    out = []
    for size, have in zip(sizes, x.shape[-2:]):
        if size is None:
            size = have
        if not _int(size) or size < 1:
            raise ValueError(f"{name}: output_size must be positive integers (or None to keep a side); "
                             f"got {output_size!r}")
        out.append(int(size))
    if 0 in x.shape[-2:]:
        raise ValueError(f"{name}: expects a non-empty input; got shape {tuple(x.shape)}")
    return tuple(out)


def _bins(size, out):
    """PyTorch's adaptive bins along one axis: bin i is [floor(i*size/out), ceil((i+1)*size/out))."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def adaptive_avg_pool2d(x, output_size):
    """Average over PyTorch's adaptive bins (bin i of ``out`` along a side of ``size`` is
    [floor(i*size/out), ceil((i+1)*size/out))), as ``torch.nn.functional.adaptive_avg_pool2d``;
    ``output_size`` is an int or a pair, None keeping that side. Global pooling (output 1) is
    a mean, bins that divide the input evenly are one avg_pool2d, and any other size is two
    small matmuls with bin-averaging matrices (rows of 1/len over each bin)."""
    _tensor(x, "adaptive_avg_pool2d", "input")
    (Ho, Wo), (H, W) = _adaptive_size("adaptive_avg_pool2d", x, output_size), x.shape[-2:]
    if (Ho, Wo) == (H, W):  # one element per bin
        return x
    if (Ho, Wo) == (1, 1):
        return x.mean(axis=(-2, -1), keepdims=True)
    if H % Ho == 0 and W % Wo == 0:
        return avg_pool2d(x, (H // Ho, W // Wo))
    xp = array_module(x.data)

    def averaging(size, out):  # (out, size): row i averages bin i
        a = xp.zeros((out, size), dtype=x.dtype)
        for i, (lo, hi) in enumerate(_bins(size, out)):
            a[i, lo:hi] = 1.0 / (hi - lo)
        return Tensor(a)

    if W != Wo:
        x = x @ averaging(W, Wo).transpose(0, 1)
    if H != Ho:
        x = averaging(H, Ho) @ x
    return x


def adaptive_max_pool2d(x, output_size, return_indices=False):
    """Max over PyTorch's adaptive bins (see ``adaptive_avg_pool2d``), as
    ``torch.nn.functional.adaptive_max_pool2d``, with the first maximum winning ties (values,
    gradient and ``return_indices``). Bins that divide the input evenly are one max_pool2d;
    otherwise bins come in at most two lengths per side, and the bins of each (height,
    width) are read off one stride-1 max_pool2d of that window size."""
    _tensor(x, "adaptive_max_pool2d", "input")
    (Ho, Wo), (H, W) = _adaptive_size("adaptive_max_pool2d", x, output_size), x.shape[-2:]
    if H % Ho == 0 and W % Wo == 0:
        return max_pool2d(x, (H // Ho, W // Wo), return_indices=return_indices)
    return _unbatched(x, "adaptive_max_pool2d", lambda x4: _adaptive_max_general(x4, Ho, Wo, return_indices))


def _adaptive_max_general(x, Ho, Wo, return_indices):
    """Adaptive max-pooling for bins that do not divide the input: bins of each (height,
    width) combination (at most four) are windows of one stride-1 max_pool2d, read at the
    bins' starts and chosen by ``where``, so ties and indices are max_pool2d's."""
    (H, W) = x.shape[-2:]
    rows, cols = _bins(H, Ho), _bins(W, Wo)
    xp = array_module(x.data)
    out = indices = None
    for lh in sorted({hi - lo for lo, hi in rows}):
        for lw in sorted({hi - lo for lo, hi in cols}):
            pooled, where_ = max_pool2d(x, (lh, lw), 1, return_indices=True)
            r = xp.array([min(lo, H - lh) for lo, _ in rows]).reshape(Ho, 1)
            c = xp.array([min(lo, W - lw) for lo, _ in cols]).reshape(1, Wo)
            picked, picked_at = pooled[:, :, r, c], where_.data[:, :, r, c]
            mask = (xp.array([hi - lo == lh for lo, hi in rows]).reshape(Ho, 1)
                    & xp.array([hi - lo == lw for lo, hi in cols]).reshape(1, Wo))
            if out is None:
                out, indices = picked, picked_at
            else:
                out = where(Tensor(mask), picked, out)
                indices = xp.where(mask, picked_at, indices)
    return (out, Tensor(indices)) if return_indices else out


def _unbatched(x, name, fn):
    """Run a 4-d pooling ``fn`` on a 3-d (C, H, W) input too, as PyTorch's pools accept it."""
    if x.ndim not in (3, 4):
        raise ValueError(f"{name}: expects a 4-d NCHW or 3-d CHW tensor; got shape {tuple(x.shape)}")
    if x.ndim == 4:
        return fn(x)
    result = fn(x.reshape((1,) + x.shape))
    if isinstance(result, tuple):
        return tuple(r.reshape(r.shape[1:]) for r in result)
    return result.reshape(result.shape[1:])


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


_PAD_MODES = ("constant", "reflect", "replicate", "circular")


def pad(x, pad_width, value=0.0, mode="constant"):
    """Padding; ``pad_width`` is an int or one ``(before, after)`` pair per axis (numpy's form).

    ``mode`` as PyTorch's: 'constant' (``value``; the ``pad`` primitive), 'reflect' (mirror
    without repeating the edge: each pad smaller than its axis), 'replicate' (the edge
    repeated) or 'circular' (wrap around: each pad at most its axis). The last three are one
    ``getitem`` per padded axis with an integer index; its VJP, ``scatter_add``, adds each
    copied element's gradient back to its source, so they are differentiable to any order."""
    if mode == "constant":
        return ops.Pad.apply(x, pad_width=_pad_width(pad_width), value=value)
    if mode not in _PAD_MODES:
        raise ValueError(f"pad: mode must be one of {', '.join(map(repr, _PAD_MODES))}; got {mode!r}")
    _tensor(x, "pad", "input")
    pairs = ops.shape.normalize_pad_width("pad", _pad_width(pad_width), x.ndim)
    for axis, (before, after) in enumerate(pairs):
        if not before and not after:
            continue
        n = x.shape[axis]
        limit, rule = (n - 1, "smaller than") if mode == "reflect" else (n, "at most")
        if n == 0 or (mode != "replicate" and max(before, after) > limit):
            raise ValueError(f"pad: {mode} padding {(before, after)} of axis {axis} must be {rule} its size {n} "
                             f"(input shape {x.shape})")
        i = np.arange(-before, n + after)
        if mode == "reflect":
            i = np.abs(i)
            i = np.where(i >= n, 2 * (n - 1) - i, i)
        elif mode == "replicate":
            i = np.clip(i, 0, n - 1)
        else:
            i = i % n
        x = x[(slice(None),) * axis + (i,)]
    return x


def relu(x):
    return ops.Relu.apply(x)


def sigmoid(x):
    return ops.Sigmoid.apply(x)


def tanh(x):
    return ops.Tanh.apply(x)


def log_softmax(x, axis=-1, *, dim=None):
    """log(softmax(x)) along ``axis`` (alias ``dim``); a 0-d input takes axis 0 or -1 and gives 0."""
    return ops.LogSoftmax.apply(x, axis=axis if dim is None else dim)


# ------------------------------------------------------------------------------ composites


def softmax(x, axis=-1, *, dim=None):
    """exp(log_softmax(x)) along ``axis`` (alias ``dim``): stable, and its gradient comes from
    the two primitives. The default is the last axis (PyTorch, given no ``dim``, guesses one
    with a deprecation warning)."""
    return log_softmax(x, axis=axis, dim=dim).exp()


def flatten(x, start_dim=0, end_dim=-1):
    """Axes ``start_dim`` to ``end_dim`` merged into one (``torch.flatten``)."""
    return _tensor(x, "flatten", "input").flatten(start_dim, end_dim)


def _groups(name, groups, channels):
    """``groups`` as a positive int that divides every count in ``channels`` ({what: count})."""
    if not _int(groups) or groups < 1:
        raise ValueError(f"{name}: groups must be a positive integer; got {groups!r}")
    for what, count in channels.items():
        if count % groups:
            raise ValueError(f"{name}: {what} ({count}) must be divisible by groups ({groups})")
    return int(groups)


def _window_padding(padding):
    """A resolved (top, bottom, left, right) padding in the shortest form im2col takes (an
    int or a pair when symmetric), so plain convolutions keep their graphs and labels."""
    pt, pb, pl, pr = padding
    if pt == pb and pl == pr:
        return pt if pt == pl else (pt, pl)
    return padding


# conv2d (groups 1) as the ``conv2d`` primitive, which keeps only its input for backward and
# makes the columns again for the weight gradient, instead of the composite, which keeps the
# columns (kH*kW times the input). Off by default: measured, the recomputation costs more time
# than it saves (SeedCNN, FastCNN and airbench's layers; docs/performance.md, issue 18); turn
# it on (``TINYGRAD_CNN_CONV_KEEPS_INPUT_ONLY=1``, or set this at run time) to trade that
# time for memory (SeedCNN keeps 23 MiB instead of 54 MiB for backward at batch 128).
CONV_KEEPS_INPUT_ONLY = _os.environ.get("TINYGRAD_CNN_CONV_KEEPS_INPUT_ONLY", "") == "1"


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-d convolution (cross-correlation, as in PyTorch) of an NCHW tensor.

    ``weight`` is (C_out, C_in/groups, kH, kW), ``bias`` (C_out,). ``padding`` is an int, a
    pair, ``(top, bottom, left, right)`` (ours: asymmetric padding without a padded copy),
    ``'valid'`` or ``'same'`` (stride 1; an odd total goes to the bottom/right, as PyTorch).

    Built as im2col -> matmul -> reshape -> permute; im2col folds the zero padding and the
    dilation in, so no padded or dilated copy is made. A bias rides in the GEMM as
    ``[W | b] @ [cols; 1]`` (im2col appends the row of ones), which saves a pass over the
    output each way. With ``groups`` > 1 the columns of each group are a contiguous block of
    rows, so the convolution is one batched GEMM over the groups,
    ``(G, C_out/G, C_in/G*kH*kW) @ (G, C_in/G*kH*kW, N*Ho*Wo)``, with no copy (the GEMM
    kernel runs such stacks as one 2-d product per group where numpy's stacked matmul is
    slow, and the outer products of a depthwise column gradient as one multiply).
    Depthwise convolutions (groups == C_in) take the same path, with no kernel of their own:
    measured (``python -m benchmarks.layers depthwise3x3``, docs/performance.md) it runs at
    about PyTorch's speed, since its cost is im2col's and col2im's copies, which a dedicated
    kernel would have to make too (a tap-by-tap multiply-add reads the input kH*kW times).
    """
    _tensor(x, "conv2d", "input")
    _tensor(weight, "conv2d", "weight")
    if x.ndim != 4:
        raise ValueError(f"conv2d: expects a 4-d NCHW input; got shape {x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"conv2d: weight must be 4-d (C_out, C_in/groups, kH, kW); got shape {weight.shape}")
    c_out, c_in_g, kh, kw = weight.shape
    groups = _groups("conv2d", groups, {"in_channels (input.shape[1])": x.shape[1],
                                        "out_channels (weight.shape[0])": c_out})
    if x.shape[1] != c_in_g * groups:
        expects = f"{c_in_g}" if groups == 1 else f"{c_in_g} per group x {groups} groups = {c_in_g * groups}"
        raise ValueError(f"conv2d: input has {x.shape[1]} channels (shape {x.shape}) but the weight "
                         f"{weight.shape} expects {expects}")
    if bias is not None:
        _tensor(bias, "conv2d", "bias")
        if bias.shape != (c_out,):
            raise ValueError(f"conv2d: bias must have shape ({c_out},); got {bias.shape}")
    n = x.shape[0]
    # validate stride/padding/dilation/kernel here so that errors name conv2d, not the inner im2col
    _, _, pads, _, (ho, wo) = conv_geometry("conv2d", x.shape, (kh, kw), stride, padding, dilation)
    window = dict(kernel_size=(kh, kw), stride=stride, padding=_window_padding(pads), dilation=dilation)
    k = c_in_g * kh * kw
    if groups == 1 and CONV_KEEPS_INPUT_ONLY:
        return ops.Conv2d.apply(*((x, weight) if bias is None else (x, weight, bias)), **window)
    if groups == 1:
        w = weight.reshape(c_out, k)
        if bias is not None:  # [W | b] @ [cols; 1]: the bias rides in the GEMM
            w = ops.Concatenate.apply(w, bias.reshape(c_out, 1), axis=1)
        cols = im2col(x, ones_row=bias is not None, **window)  # (k [+ 1], N*Ho*Wo)
        out = (w @ cols).reshape(c_out, n, ho, wo)
        return out.permute(1, 0, 2, 3)                             # (N, C_out, Ho, Wo)
    cols = im2col(x, **window).reshape(groups, k, n * ho * wo)     # each group's rows, in place
    out = (weight.reshape(groups, c_out // groups, k) @ cols).reshape(c_out, n, ho, wo).permute(1, 0, 2, 3)
    return out if bias is None else out + bias.reshape(1, c_out, 1, 1)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """The transposed convolution (the input-gradient of conv2d, as PyTorch's), NCHW.

    ``weight`` is (C_in, C_out/groups, kH, kW), ``bias`` (C_out,). The output is
    ``(H - 1)*stride - 2*padding + dilation*(kH - 1) + output_padding + 1`` high (and so
    wide); ``output_padding`` (smaller than the stride or the dilation) adds rows and columns
    at the bottom/right only. A composite: one (batched, with groups) GEMM of the weight's
    transpose with the input's pixels gives the columns, and col2im adds them into the output,
    so it is differentiable to any order through matmul and col2im (whose VJP is im2col).
    """
    name = "conv_transpose2d"
    _tensor(x, name, "input")
    _tensor(weight, name, "weight")
    if x.ndim != 4:
        raise ValueError(f"{name}: expects a 4-d NCHW input; got shape {x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"{name}: weight must be 4-d (C_in, C_out/groups, kH, kW); got shape {weight.shape}")
    c_in, c_out_g, kh, kw = weight.shape
    if x.shape[1] != c_in:
        raise ValueError(f"{name}: input has {x.shape[1]} channels (shape {x.shape}) but the weight "
                         f"{weight.shape} expects {c_in}")
    groups = _groups(name, groups, {"in_channels (weight.shape[0])": c_in})
    c_out = c_out_g * groups
    if bias is not None:
        _tensor(bias, name, "bias")
        if bias.shape != (c_out,):
            raise ValueError(f"{name}: bias must have shape ({c_out},); got {bias.shape}")
    (sh, sw), (dh, dw) = as_pair(name, "stride", stride), as_pair(name, "dilation", dilation)
    (ph, pw), (oph, opw) = as_pair(name, "padding", padding), \
        as_pair(name, "output_padding", output_padding)
    if min(sh, sw) < 1:
        raise ValueError(f"{name}: stride must be positive; got {stride!r}")
    if min(dh, dw) < 1:
        raise ValueError(f"{name}: dilation must be positive; got {dilation!r}")
    if min(ph, pw) < 0:
        raise ValueError(f"{name}: padding must be non-negative; got {padding!r}")
    if min(oph, opw) < 0 or oph >= max(sh, dh) or opw >= max(sw, dw):
        raise ValueError(f"{name}: output_padding {(oph, opw)} must be non-negative and smaller than either "
                         f"the stride {(sh, sw)} or the dilation {(dh, dw)}")
    n, _, h, w = x.shape
    ho = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    wo = (w - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"{name}: the output would be {ho}x{wo} for input {h}x{w} (kernel {(kh, kw)}, stride "
                         f"{(sh, sw)}, padding {(ph, pw)}, dilation {(dh, dw)}): reduce the padding")
    # col2im is the adjoint of the conv2d that maps an (ho, wo) image back to this (h, w)
    # grid: padding ph on top and ph - oph below. Below zero (output_padding > padding),
    # the last rows get no tap at all: col2im fills the rows the taps reach, then zeros.
    cut_h, cut_w = max(0, oph - ph), max(0, opw - pw)
    xm = x.permute(1, 0, 2, 3).reshape(groups, c_in // groups, n * h * w)
    wm = weight.reshape(groups, c_in // groups, c_out_g * kh * kw).permute(0, 2, 1)
    cols = (wm @ xm).reshape(c_out * kh * kw, n * h * w)
    window = (ph, max(0, ph - oph), pw, max(0, pw - opw))
    out = col2im(cols, (n, c_out, ho - cut_h, wo - cut_w), (kh, kw), stride, _window_padding(window), dilation)
    if cut_h or cut_w:
        out = pad(out, ((0, 0), (0, 0), (0, cut_h), (0, cut_w)))
    return out if bias is None else out + bias.reshape(1, c_out, 1, 1)


def linear(x, weight, bias=None):
    """x @ weight.T + bias, with ``weight`` of shape (out, in) as in PyTorch."""
    _tensor(x, "linear", "input")
    _tensor(weight, "linear", "weight")
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-d (out_features, in_features); got shape {weight.shape}")
    if x.shape[-1:] != weight.shape[1:]:
        raise ValueError(f"linear: input of shape {x.shape} has {x.shape[-1] if x.ndim else 0} features but "
                         f"the weight {weight.shape} expects {weight.shape[1]}")
    out = ops.Matmul.apply(x, weight, transpose_b=True)  # x @ weight.T, as one node
    if bias is not None:
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"linear: bias must have shape ({weight.shape[0]},); got {bias.shape}")
        out = out + bias
    return out


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


def _check_reduction(name, reduction):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{name}: reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")


def _constant(like, array):
    """An array as a constant (no gradient) tensor of ``like``'s dtype."""
    return Tensor._wrap(array_module(like.data).asarray(array, dtype=like.dtype), False)


def _divide(total, denominator):
    """``total / denominator`` for a Python number that may be 0 (then NaN or inf, as
    PyTorch's mean over no weight), without numpy's warnings."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return total / _constant(total, float(denominator))


def _class_scores(name, what, input, target):
    """Class scores as rows ``(M, C)`` and class-index targets as ``(M,)``, for input
    ``(N, C)``, ``(N, C, d1, ...)`` (classes on axis 1, as PyTorch) or ``(C,)`` (one sample);
    also the targets' shape, which a ``reduction='none'`` result has."""
    if input.ndim == 0:
        raise ValueError(f"{name}: expects {what} of shape (N, C), (N, C, d1, ...) or (C,); got a 0-d tensor")
    c = input.shape[0 if input.ndim == 1 else 1]
    shape = () if input.ndim == 1 else (input.shape[0],) + input.shape[2:]
    t = target.data if isinstance(target, Tensor) else target
    t = array_module(t).asarray(t)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{name}: targets must be integer class indices; got dtype {t.dtype} with shape {t.shape}"
                        + (f" (class probabilities must have the {what}' shape {input.shape})"
                           if t.dtype.kind == "f" else ""))
    if t.shape != shape:
        raise ValueError(f"{name}: targets must have shape {shape} for {what} of shape {input.shape}; got {t.shape}")
    if input.ndim == 1:
        rows = input.reshape(1, c)
    elif input.ndim == 2:
        rows = input
    else:  # classes last, then one row per position
        rows = input.permute(0, *range(2, input.ndim), 1).reshape(-1, c)
    return rows, t.reshape(-1), shape


def _class_weight(name, weight, n_classes, like):
    """A per-class weight as an array of the scores' dtype (a constant: no gradient), or None."""
    if weight is None:
        return None
    if isinstance(weight, str):
        raise TypeError(f"{name}: weight must be a tensor or array of {n_classes} class weights; got the string "
                        f"{weight!r} (pass reduction= by keyword)")
    w = weight.data if isinstance(weight, Tensor) else np.asarray(weight)
    if w.shape != (n_classes,):
        raise ValueError(f"{name}: weight must have shape ({n_classes},), one value per class; got {w.shape}")
    return array_module(like.data).asarray(w, dtype=like.dtype)


def _picked_losses(name, rows, t, weight, ignore_index):
    """``-rows[i, t[i]] * weight[t[i]]`` for each row, exactly 0 (with no gradient, whatever
    the reduction multiplies it by) where ``t[i] == ignore_index``; and the total weight of
    the rows not ignored (PyTorch's denominator for the mean)."""
    xp = array_module(rows.data)
    n_classes = rows.shape[1]
    ignored = t == ignore_index
    valid = t[~ignored]
    if valid.size and (int(valid.min()) < 0 or int(valid.max()) >= n_classes):
        raise ValueError(f"{name}: target classes must lie in [0, {n_classes}); got values from {int(valid.min())} "
                         f"to {int(valid.max())}" + (f" (ignore_index {ignore_index} aside)" if ignored.any() else ""))
    safe = xp.where(ignored, 0, t) if ignored.any() else t
    loss = -rows[xp.arange(len(t)), safe]
    if weight is not None:
        loss = loss * _constant(rows, weight[safe])
    if ignored.any():
        loss = where(ignored, 0.0, loss)
    total = float(weight[valid].sum()) if weight is not None else float(valid.size)
    return loss, ignored, total


def nll_loss(input, target, weight=None, *, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of integer ``target`` classes under ``input`` log-probabilities
    (``(N, C)``, ``(N, C, d1, ...)`` or ``(C,)``), as ``torch.nn.functional.nll_loss``:
    ``weight`` (one per class, a constant) scales each sample's loss, targets equal to
    ``ignore_index`` count for nothing, and the mean divides by the total weight of the
    samples not ignored (NaN when that is 0, e.g. an empty batch)."""
    _tensor(input, "nll_loss", "input")
    _check_reduction("nll_loss", reduction)
    rows, t, shape = _class_scores("nll_loss", "log-probabilities", input, target)
    w = _class_weight("nll_loss", weight, rows.shape[1], input)
    loss, ignored, total = _picked_losses("nll_loss", rows, t, w, ignore_index)
    return _class_reduce(loss, shape, reduction, total, plain=w is None and not ignored.any())


def _class_reduce(loss, shape, reduction, total, plain):
    if reduction == "none":
        return loss.reshape(shape)
    if reduction == "sum":
        return loss.sum()
    return loss.mean() if plain else _divide(loss.sum(), total)


def cross_entropy(input, target, weight=None, *, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Softmax cross-entropy of ``input`` logits (``(N, C)``, ``(N, C, d1, ...)`` or ``(C,)``)
    against ``target``: integer classes, or class probabilities of the logits' shape (floating
    dtype), with PyTorch's semantics throughout:

    - class indices: ``nll_loss(log_softmax(input))`` with ``weight`` and ``ignore_index``;
      the mean divides by the total weight of the samples not ignored;
    - probabilities: ``-sum(weight * target * log_softmax(input))`` over classes; the mean
      divides by the number of samples (weights do not enter it); ``ignore_index`` is not
      supported there (PyTorch raises too);
    - ``label_smoothing`` mixes the uniform distribution into the target, weighted as above.
    """
    name = "cross_entropy"
    _tensor(input, name, "logits")
    _check_reduction(name, reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must lie in [0, 1]; got {label_smoothing}")
    t = target.data if isinstance(target, Tensor) else target
    if getattr(t, "dtype", None) is not None and t.dtype.kind == "f" and np.shape(t) == input.shape and input.ndim:
        return _cross_entropy_with_probabilities(input, target, weight, ignore_index, reduction, label_smoothing)
    rows, t, shape = _class_scores(name, "logits", input, target)
    n_classes = rows.shape[1]
    w = _class_weight(name, weight, n_classes, input)
    logp = log_softmax(rows, axis=-1)
    loss, ignored, total = _picked_losses(name, logp, t, w, ignore_index)
    plain = w is None and not ignored.any()
    loss = _class_reduce(loss, shape, reduction, total, plain)
    if not label_smoothing:
        return loss
    smooth = -((logp * _constant(logp, w)) if w is not None else logp).sum(axis=-1)
    if ignored.any():
        smooth = where(ignored, 0.0, smooth)
    smooth = _class_reduce(smooth, shape, reduction, total, plain)
    return loss * (1.0 - label_smoothing) + smooth * (label_smoothing / n_classes)


def _cross_entropy_with_probabilities(input, target, weight, ignore_index, reduction, label_smoothing):
    name = "cross_entropy"
    if ignore_index >= 0:
        raise ValueError(f"{name}: ignore_index ({ignore_index}) applies to class-index targets only; these are "
                         f"class probabilities (leave ignore_index at its default)")
    axis = 1 if input.ndim >= 2 else 0
    n_classes = input.shape[axis]
    t = target if isinstance(target, Tensor) else _constant(input, target)
    if label_smoothing:
        t = t * (1.0 - label_smoothing) + label_smoothing / n_classes
    terms = log_softmax(input, axis=axis) * t
    w = _class_weight(name, weight, n_classes, input)
    if w is not None:
        terms = terms * _constant(input, w.reshape((n_classes,) + (1,) * (input.ndim - axis - 1)))
    loss = -terms.sum(axis=axis)
    if reduction == "mean":
        return _divide(loss.sum(), input.numel() // n_classes if n_classes else 0)
    return _reduce(name, loss, reduction)


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
    as PyTorch); in evaluation it is the affine map those statistics define (the
    ``channel_affine`` primitive, one pass, with its scale and shift from the statistics,
    weight and bias)."""
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
    # x * a + b per channel (one pass, as PyTorch's), a = weight / sqrt(var + eps), b = bias - mean * a
    scale = weight * Tensor((1.0 / xp.sqrt(running_var + eps)).astype(x.dtype, copy=False))
    shift = bias - Tensor(running_mean.astype(x.dtype, copy=False)) * scale
    return ops.ChannelAffine.apply(x, scale, shift)


# ------------------------------------------------------------------------------ activations


def _log1p_exp(z):
    """log(1 + exp(z)) for any z without overflow: max(z, 0) + log1p(exp(-|z|)); the slope at
    0 is 1/2 (the |z| is folded into one where, whose gradient is -1 or 1, never 0)."""
    pos = z.data > 0
    return where(pos, z, 0.0) + where(pos, -z, z).exp().log1p()


def leaky_relu(x, negative_slope=0.01):
    """x where x > 0, else negative_slope * x (the slope at 0 is ``negative_slope``, as PyTorch)."""
    _tensor(x, "leaky_relu", "input")
    return where(x.data > 0, x, x * negative_slope)


def _elu(x, alpha, scale, input_scale):
    """scale * x for x > 0, else scale * alpha * (exp(x * input_scale) - 1): ELU, CELU and SELU."""
    pos = x.data > 0
    neg = where(pos, 0.0, x)  # the exp side sees x <= 0 only: no overflow where it is not chosen
    below = (neg * input_scale if input_scale != 1 else neg).expm1() * (alpha * scale)
    return where(pos, x * scale if scale != 1 else x, below)


def elu(x, alpha=1.0):
    """x for x > 0, else alpha * (exp(x) - 1)."""
    _tensor(x, "elu", "input")
    return _elu(x, alpha, 1.0, 1.0)


def celu(x, alpha=1.0):
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1))."""
    _tensor(x, "celu", "input")
    if alpha == 0:
        raise ValueError("celu: alpha must not be 0 (it divides x)")
    return _elu(x, alpha, 1.0, 1.0 / alpha)


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def selu(x):
    """scale * elu(x, alpha) with the self-normalising constants of Klambauer et al. (2017)."""
    _tensor(x, "selu", "input")
    return _elu(x, _SELU_ALPHA, _SELU_SCALE, 1.0)


def gelu(x, approximate="none"):
    """x * Phi(x), Phi the standard normal CDF: ``0.5 * x * (1 + erf(x / sqrt(2)))``, or with
    ``approximate='tanh'`` ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))``, as PyTorch.
    Primitive (one blocked pass each way; float32 input in float32 math, max error 3.3e-7
    against the float64 GELU for the exact form)."""
    _tensor(x, "gelu", "input")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh'; got {approximate!r}")
    return ops.Gelu.apply(x, approximate=approximate)


def silu(x):
    """x * sigmoid(x) (also called swish)."""
    _tensor(x, "silu", "input")
    return x * x.sigmoid()


swish = silu


def softplus(x, beta=1.0, threshold=20.0):
    """log(1 + exp(beta * x)) / beta, and x itself where beta * x > threshold (PyTorch's
    definition, for speed and to keep large inputs exact). Stable for any input."""
    _tensor(x, "softplus", "input")
    z = x * beta if beta != 1 else x
    over = z.data > threshold
    soft = _log1p_exp(where(over, 0.0, z) if over.any() else z)
    soft = soft / beta if beta != 1 else soft
    return where(over, x, soft) if over.any() else soft


def logsigmoid(x):
    """log(sigmoid(x)) = -softplus(-x), stable for any input."""
    _tensor(x, "logsigmoid", "input")
    return -_log1p_exp(-x)


def hardtanh(x, min_val=-1.0, max_val=1.0):
    """x clipped to [min_val, max_val]; the gradient passes strictly inside (as PyTorch)."""
    _tensor(x, "hardtanh", "input")
    if max_val < min_val:
        raise ValueError(f"hardtanh: max_val ({max_val}) must not be less than min_val ({min_val})")
    inside = (x.data > min_val) & (x.data < max_val)
    return where(inside, x, _constant(x, array_module(x.data).clip(x.data, min_val, max_val)))


def relu6(x):
    """min(max(x, 0), 6): hardtanh(x, 0, 6), with no gradient at 0 and 6 (as PyTorch)."""
    _tensor(x, "relu6", "input")
    return hardtanh(x, 0.0, 6.0)


def hardsigmoid(x):
    """relu6(x + 3) / 6; the gradient 1/6 strictly between -3 and 3."""
    _tensor(x, "hardsigmoid", "input")
    inside = (x.data > -3) & (x.data < 3)
    return where(inside, (x + 3.0) / 6.0, _constant(x, array_module(x.data).clip((x.data + 3) / 6, 0, 1)))


def hardswish(x):
    """x * relu6(x + 3) / 6 (Howard et al., 2019); slopes as PyTorch's: 0 up to -3 (included),
    x / 3 + 1/2 between -3 and 3, 1 from 3 on."""
    _tensor(x, "hardswish", "input")
    middle = x * (x + 3.0) / 6.0
    return where(x.data <= -3, 0.0, where(x.data < 3, middle, x))


def mish(x):
    """x * tanh(softplus(x)) (Misra, 2019), with a softplus that never overflows."""
    _tensor(x, "mish", "input")
    return x * _log1p_exp(x).tanh()


# ------------------------------------------------------------------ joining, splitting, choosing


def _tensors(name, tensors):
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{name}: expects a list or tuple of tensors; got {type(tensors).__name__}")
    if not tensors:
        raise ValueError(f"{name}: expects a non-empty list of tensors")
    for i, t in enumerate(tensors):
        _tensor(t, name, f"item {i}")
    return list(tensors)


def cat(tensors, dim=0, *, axis=None):
    """Join tensors along an existing axis ``dim`` (``torch.cat``; alias ``axis``). Primitive."""
    tensors = _tensors("cat", tensors)
    first = tensors[0]
    d = dim if axis is None else axis
    if first.ndim == 0:
        raise ValueError("cat: a 0-d tensor (item 0) cannot be concatenated; use stack, or reshape it to (1,)")
    for i, t in enumerate(tensors):
        if t.ndim != first.ndim:
            raise ValueError(f"cat: item {i} has {t.ndim} axes (shape {t.shape}) but item 0 has {first.ndim} "
                             f"(shape {first.shape}); all must have the same number")
    d = _axis("cat", d, first.ndim)
    return ops.Concatenate.apply(*tensors, axis=d)


concatenate = cat


def stack(tensors, dim=0, *, axis=None):
    """Join tensors of one shape along a new axis ``dim`` (``torch.stack``)."""
    tensors = _tensors("stack", tensors)
    shape = tensors[0].shape
    for i, t in enumerate(tensors):
        if t.shape != shape:
            raise ValueError(f"stack: item {i} has shape {t.shape} but item 0 has {shape}; all must match")
    d = _axis("stack", dim if axis is None else axis, len(shape) + 1)
    return ops.Concatenate.apply(*(t.unsqueeze(d) for t in tensors), axis=d)


def split(x, split_size_or_sections, dim=0):
    """``x.split(...)``: pieces along ``dim`` (``torch.split``)."""
    return _tensor(x, "split", "input").split(split_size_or_sections, dim)


def chunk(x, chunks, dim=0):
    """``x.chunk(...)``: ``chunks`` nearly equal pieces along ``dim`` (``torch.chunk``)."""
    return _tensor(x, "chunk", "input").chunk(chunks, dim)


def one_hot(tensor, num_classes=-1):
    """Integer classes (any shape) as an int64 tensor with a last axis of ``num_classes``
    (default: the largest class + 1), as PyTorch's. Not differentiable."""
    t = tensor.data if isinstance(tensor, Tensor) else np.asarray(tensor)
    if t.dtype.kind not in "iu":
        raise TypeError(f"one_hot: expects integer class indices; got dtype {t.dtype}")
    xp = array_module(t)
    if num_classes == -1:
        if t.size == 0:
            raise ValueError("one_hot: cannot infer num_classes from an empty tensor; pass num_classes")
        num_classes = int(t.max()) + 1
    if t.size and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"one_hot: classes must lie in [0, {num_classes}); got values from {int(t.min())} "
                         f"to {int(t.max())}")
    return Tensor(xp.eye(num_classes, dtype=np.int64)[t])


# --------------------------------------------------------------------- normalisation and lookup


def _normalize(x, axes, eps):
    """(x - mean) / sqrt(var + eps) over ``axes`` (the biased variance, as every norm layer)."""
    centered = x - x.mean(axis=axes, keepdims=True)
    var = (centered * centered).mean(axis=axes, keepdims=True)
    return centered * (var + eps).rsqrt()


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalise over the last ``len(normalized_shape)`` axes, then ``* weight + bias``
    (each of ``normalized_shape``), as ``torch.nn.functional.layer_norm``."""
    _tensor(x, "layer_norm", "input")
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or x.ndim < k or x.shape[x.ndim - k:] != shape:
        raise ValueError(f"layer_norm: normalized_shape {shape} must be the trailing sides of the input's "
                         f"shape; got input of shape {x.shape}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != shape:
            raise ValueError(f"layer_norm: {name} must have shape {shape}; got {p.shape}")
    out = _normalize(x, tuple(range(x.ndim - k, x.ndim)), eps)
    if weight is not None:
        out = out * weight
    return out + bias if bias is not None else out


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Normalise each sample over groups of ``C / num_groups`` channels (and all positions),
    then ``* weight + bias`` per channel, as ``torch.nn.functional.group_norm``; input
    ``(N, C, ...)``."""
    _tensor(x, "group_norm", "input")
    if x.ndim < 2:
        raise ValueError(f"group_norm: expects (N, C, ...) input; got shape {x.shape}")
    n, c = x.shape[:2]
    if num_groups <= 0 or c % num_groups:
        raise ValueError(f"group_norm: the {c} channels must divide into num_groups={num_groups} equal groups")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (c,):
            raise ValueError(f"group_norm: {name} must have shape ({c},); got {p.shape}")
    per_group = (c // num_groups) * int(np.prod(x.shape[2:], dtype=np.int64))
    out = _normalize(x.reshape(n, num_groups, per_group), (2,), eps).reshape(x.shape)
    channel = (1, c) + (1,) * (x.ndim - 2)
    if weight is not None:
        out = out * weight.reshape(channel)
    return out + bias.reshape(channel) if bias is not None else out


def embedding(input, weight, padding_idx=None):
    """Rows of ``weight`` (num_embeddings, dim) picked by the integer ``input`` (any shape):
    the result has shape ``input.shape + (dim,)``. The row ``padding_idx`` gets no gradient
    (as PyTorch's); its value is whatever the weight holds there."""
    _tensor(weight, "embedding", "weight")
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-d (num_embeddings, embedding_dim); got shape {weight.shape}")
    idx = input.data if isinstance(input, Tensor) else np.asarray(input)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be integers; got dtype {idx.dtype}")
    num = weight.shape[0]
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= num):
        raise IndexError(f"embedding: indices must lie in [0, {num}) for a weight of {num} rows; got values from "
                         f"{int(idx.min())} to {int(idx.max())}")
    out = weight[idx]
    if padding_idx is not None:
        padding_idx = _padding_index("embedding", padding_idx, num)
        pad_rows = idx == padding_idx
        if pad_rows.any() and out.requires_grad:
            out = where(pad_rows[..., None], _constant(out, out.data), out)
    return out


def _padding_index(name, padding_idx, num):
    if not -num <= padding_idx < num:
        raise ValueError(f"{name}: padding_idx must lie in [-{num}, {num}) for {num} embeddings; got {padding_idx}")
    return padding_idx % num


# ----------------------------------------------------------------------------- more losses


def _pair(name, input, target):
    """The input tensor and the target as a tensor of its shape (an array becomes a constant
    of the input's dtype; a Tensor target gets a gradient too, as in PyTorch)."""
    _tensor(input, name, "input")
    target = target if isinstance(target, Tensor) else _constant(input, target)
    if input.shape != target.shape:
        raise ValueError(f"{name}: input shape {input.shape} and target shape {target.shape} differ")
    return input, target


def _weighted(name, loss, weight):
    if weight is None:
        return loss
    w = weight if isinstance(weight, Tensor) else _constant(loss, weight)
    try:
        np.broadcast_shapes(w.shape, loss.shape)
    except ValueError:
        raise ValueError(f"{name}: weight of shape {w.shape} does not broadcast to the loss's shape {loss.shape}") from None
    return loss * w


def _clamped_log(p, complement=False):
    """log(p), or log(1 - p) computed as log1p(-p) with ``complement``, clamped below at -100
    with no gradient where clamped (PyTorch's binary cross-entropy: p = 0 or 1 stays finite)."""
    xp = array_module(p.data)
    log = (lambda q: (-q).log1p()) if complement else (lambda q: q.log())
    with np.errstate(divide="ignore"):
        ok = (xp.log1p(-p.data) if complement else xp.log(p.data)) >= -100
    if ok.all():
        return log(p)
    return where(ok, log(where(ok, p, 0.5)), -100.0)


def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """-(t log(p) + (1 - t) log(1 - p)) for probabilities ``input`` in [0, 1], each log
    clamped at -100 (so p = 0 or 1 gives a finite loss), as PyTorch's."""
    name = "binary_cross_entropy"
    input, target = _pair(name, input, target)
    _check_reduction(name, reduction)
    p = input.data
    if p.size and not ((p >= 0) & (p <= 1)).all():
        raise ValueError(f"{name}: input must hold probabilities in [0, 1]; got values from {float(p.min())} to "
                         f"{float(p.max())} (use binary_cross_entropy_with_logits for logits)")
    log_p, log_not_p = _clamped_log(input), _clamped_log(input, complement=True)
    loss = -(target * log_p + (1.0 - target) * log_not_p)
    return _reduce(name, _weighted(name, loss, weight), reduction)


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """binary_cross_entropy(sigmoid(input), target) computed from the logits, stable for any
    input: ``(1 - t) x - (1 + (pos_weight - 1) t) log(sigmoid(x))``; ``pos_weight``
    (broadcast along the last axis, one per class) weighs the positive term."""
    name = "binary_cross_entropy_with_logits"
    input, target = _pair(name, input, target)
    _check_reduction(name, reduction)
    log_sig = -_log1p_exp(-input)
    if pos_weight is None:
        loss = (1.0 - target) * input - log_sig
    else:
        pw = pos_weight if isinstance(pos_weight, Tensor) else _constant(input, pos_weight)
        loss = (1.0 - target) * input - ((pw - 1.0) * target + 1.0) * log_sig
    return _reduce(name, _weighted(name, loss, weight), reduction)


def l1_loss(input, target, reduction="mean"):
    """Mean absolute error |input - target| (its gradient at 0 is 0, as PyTorch's)."""
    input, target = _pair("l1_loss", input, target)
    return _reduce("l1_loss", (input - target).abs(), reduction)


def smooth_l1_loss(input, target, reduction="mean", beta=1.0):
    """0.5 d^2 / beta where |d| < beta, else |d| - beta / 2 (d = input - target); ``beta=0``
    is the L1 loss, as PyTorch's."""
    input, target = _pair("smooth_l1_loss", input, target)
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be non-negative; got {beta}")
    d = input - target
    if beta == 0:
        return _reduce("smooth_l1_loss", d.abs(), reduction)
    loss = where(array_module(d.data).abs(d.data) < beta, d * d * (0.5 / beta), d.abs() - 0.5 * beta)
    return _reduce("smooth_l1_loss", loss, reduction)


def huber_loss(input, target, reduction="mean", delta=1.0):
    """0.5 d^2 where |d| < delta, else delta (|d| - delta / 2), as PyTorch's (``delta``
    times ``smooth_l1_loss`` with ``beta=delta``)."""
    input, target = _pair("huber_loss", input, target)
    if not delta > 0:
        raise ValueError(f"huber_loss: delta must be positive; got {delta}")
    d = input - target
    loss = where(array_module(d.data).abs(d.data) < delta, d * d * 0.5, (d.abs() - 0.5 * delta) * delta)
    return _reduce("huber_loss", loss, reduction)
