"""Pooling primitives on NCHW tensors: max-pooling with the two primitives its derivatives
need, and average pooling with its transpose.

Each forward is one call into ``tinygrad_cnn.kernels.pool`` (two separable passes over the
window taps, with plain-loop references beside them); each VJP is Tensor code, so all of
them are differentiable to any order. The VJP chains close on themselves:

    max_pool2d -> max_pool2d_backward -> max_pool2d_gather -> max_pool2d_backward -> ...
    avg_pool2d -> avg_pool2d_backward -> avg_pool2d -> ...   (each the other's transpose)

``max_pool2d_backward`` routes a gradient to each window's winner and ``max_pool2d_gather``
reads an input-shaped tensor at the winners: linear maps, each the other's transpose, at the
winners the forward saved (one byte per output and pass: never the input itself).

Geometry follows PyTorch: ``stride`` defaults to the kernel, ``dilation`` spaces the taps,
``ceil_mode`` lets the last window run past the padding as long as it starts inside the
input or the left padding. ``padding`` is an int, an (h, w) pair, or, beyond PyTorch, the
(top, bottom, left, right) 4-tuple that conv2d takes too.
"""
from __future__ import annotations

import operator
from typing import NamedTuple

from ..kernels import pool as pool_kernels
from ..xp import is_floating
from . import Op, register
from .conv import as_pair, window_pairs


class PoolGeometry(NamedTuple):
    """A pooling window, validated: (h, w) pairs, padding as (top, bottom, left, right), and
    the output grid."""

    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    out_hw: tuple

    @property
    def kernel_args(self):
        """The positional arguments of the ``kernels.pool`` functions."""
        return self.kernel, self.stride, self.padding, self.out_hw


def _padding(name, value):
    """(top, bottom, left, right) from an int, an (h, w) pair or a 4-tuple, and the form to
    show in messages (a pair when the padding is symmetric)."""
    try:
        if isinstance(value, (tuple, list)) and len(value) == 4:
            pads = tuple(operator.index(v) for v in value)
        else:
            ph, pw = as_pair(name, "padding", value)
            pads = (ph, ph, pw, pw)
    except TypeError:
        raise TypeError(f"{name}: padding must be an int, an (h, w) pair or a (top, bottom, left, right) "
                        f"tuple of ints; got {value!r}") from None
    symmetric = pads[0] == pads[1] and pads[2] == pads[3]
    return pads, ((pads[0], pads[2]) if symmetric else pads)


def output_size(size, kernel, stride, before, after, dilation=1, ceil_mode=False):
    """PyTorch's pooling output length along one axis (``pooling_output_shape_pad_lr``)."""
    span = (kernel - 1) * dilation + 1
    out = (size + before + after - span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + before:  # the last window must start inside
        out -= 1
    return out


def pool_geometry(name, x_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Validate a pooling window over the last two axes of ``x_shape``; return a
    ``PoolGeometry``. ``stride`` None means the kernel. Each side's padding may be at most
    half the kernel (PyTorch's rule, the undilated kernel even with dilation)."""
    if len(x_shape) != 4:
        raise ValueError(f"{name}: expects a 4-d NCHW tensor; got shape {tuple(x_shape)}")
    (kh, kw), (sh, sw), (dh, dw) = window_pairs(name, kernel_size, stride, dilation)
    pads, shown = _padding(name, padding)
    if min(pads) < 0:
        raise ValueError(f"{name}: padding must be non-negative; got {shown}")
    top, bottom, left, right = pads
    if 2 * max(top, bottom) > kh or 2 * max(left, right) > kw:
        raise ValueError(f"{name}: padding {shown} must be at most half the kernel {(kh, kw)}")
    H, W = x_shape[2], x_shape[3]
    Ho = output_size(H, kh, sh, top, bottom, dh, bool(ceil_mode))
    Wo = output_size(W, kw, sw, left, right, dw, bool(ceil_mode))
    if Ho < 1 or Wo < 1:
        kernel = f"{kh}x{kw}" if (dh, dw) == (1, 1) else f"{kh}x{kw} with dilation {(dh, dw)} (spanning " \
                                                            f"{(kh - 1) * dh + 1}x{(kw - 1) * dw + 1})"
        raise ValueError(f"{name}: kernel {kernel} is larger than the padded input "
                         f"{H + top + bottom}x{W + left + right} (input {H}x{W}, padding {shown})")
    return PoolGeometry((kh, kw), (sh, sw), pads, (dh, dw), (Ho, Wo))


def pool_label(params) -> str:
    """``k=3x3 s=2 p=1`` plus ``d=2`` and ``ceil`` when set: a pooling op's label."""
    def pair(v, always_two=False):
        if isinstance(v, (tuple, list)):
            if len(v) == 4:
                return ",".join(map(str, v))
            return str(v[0]) if v[0] == v[1] and not always_two else "x".join(map(str, v))
        return f"{v}x{v}" if always_two else str(v)

    k, s = params.get("kernel_size"), params.get("stride")
    text = f"k={pair(k, always_two=True)} s={pair(k if s is None else s)} p={pair(params.get('padding', 0))}"
    if params.get("dilation", 1) not in (1, (1, 1), [1, 1]):
        text += f" d={pair(params['dilation'])}"
    if params.get("ceil_mode"):
        text += " ceil"
    if params.get("divisor_override") is not None:
        text += f" div={params['divisor_override']}"
    elif params.get("count_include_pad") is False:
        text += " exclude_pad"
    return text


def _floating(name, x):
    if not is_floating(x.dtype):
        raise TypeError(f"{name}: expects a floating-point tensor; got dtype {x.dtype}")


# ---------------------------------------------------------------------------- max-pooling


_WINDOW = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")


@register
class MaxPool2d(Op):
    """Max over each kH x kW window (padding counts as -inf; stride defaults to the kernel;
    dilation and ceil_mode as PyTorch's). Its VJP sends each window's gradient to the
    window's first maximum in row-major order (ties go to the first element, as in PyTorch):
    ``max_pool2d_backward`` at the winners this forward saved. With ``return_indices`` it
    has a second output, the winners as int64 flat indices into each (H, W) plane (no
    gradient), computed from the same one-byte winners."""

    name = "max_pool2d"
    reads = ()

    def forward(self, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        _floating(self.name, x)
        geometry = pool_geometry(self.name, x.shape, kernel_size, stride, padding, dilation, ceil_mode)
        out, winners = pool_kernels.max_pool2d(x, *geometry.kernel_args, winners=self._record or return_indices,
                                               dilation=geometry.dilation)
        if winners is not None:  # while recording: one byte per output and pass, not the input
            self.save(*winners)
        if return_indices:
            return out, pool_kernels.max_pool2d_indices(winners, x.shape, *geometry.kernel_args,
                                                        dilation=geometry.dilation)
        return out

    def backward(self, g, *_indices_grad):
        winners = pool_kernels.Winners(*self.saved)
        window = {k: v for k, v in self.params.items() if k in _WINDOW}
        return MaxPool2dBackward.apply(g, winners=winners, input_shape=self.parents[0].shape, **window)

    def label(self):
        return pool_label(self.params) + (" +indices" if self.params.get("return_indices") else "")


class _AtWinners(Op):
    """What max_pool2d_backward and max_pool2d_gather share: their parameters (the winners
    from max_pool2d's forward, the pooled input's shape, the window), checked, and a label."""

    reads = ()  # both route through the winners (a parameter): linear maps, no values read

    def _geometry(self, arg, winners, input_shape, kernel_size, stride, padding, dilation, ceil_mode, pooled):
        """Validate a call; return the window geometry. ``arg`` is the op's tensor argument:
        of the pooled output's shape if ``pooled``, else of the input's."""
        if not isinstance(winners, pool_kernels.Winners):
            raise TypeError(f"{self.name}: winners must be the Winners that max_pool2d's kernel returned "
                            f"(tinygrad_cnn.kernels.pool.max_pool2d); got {type(winners).__name__}")
        input_shape = tuple(input_shape)
        geometry = pool_geometry(self.name, input_shape, kernel_size, stride, padding, dilation, ceil_mode)
        (kh, kw), (sh, _), _, (dh, _), (Ho, Wo) = geometry
        out_shape = input_shape[:2] + (Ho, Wo)
        want = out_shape if pooled else input_shape
        if arg.shape != want:
            raise ValueError(f"{self.name}: {'a gradient' if pooled else 'an input'} of shape {arg.shape} does not "
                             f"fit max-pooling of shape {input_shape} with kernel {(kh, kw)}: expected {want}")
        rows_used = pool_kernels.reach(input_shape[2], kh, sh, dh, Ho)
        for what, array, shape, used in (("cols", winners.cols, out_shape[:2] + (rows_used, Wo), kw > 1),
                                         ("rows", winners.rows, out_shape, kh > 1)):
            if (array is not None) != used or (used and array.shape != shape):
                raise ValueError(f"{self.name}: winners.{what} of shape {getattr(array, 'shape', None)} are not "
                                 f"this max-pooling's (expected {shape if used else None}): pass the Winners "
                                 f"of the max_pool2d call with the same input shape and window")
        return geometry

    def label(self):
        return pool_label(self.params)


@register
class MaxPool2dBackward(_AtWinners):
    """(N, C, Ho, Wo) gradient -> (N, C, H, W): each window's gradient added to the element
    that won the window (``winners``, saved by max_pool2d's forward), zero elsewhere.

    max_pool2d's VJP, as a primitive of its own so that its VJP can be written too: routing
    through the one-byte winners is a kernel (no int64 indices, no copy of the input), and
    it is linear in the gradient, so its VJP is its transpose, ``max_pool2d_gather`` at the
    same winners. (The winners do not change under small moves of the input: the derivative
    with respect to the pooled input is zero, as for any max away from ties.)"""

    name = "max_pool2d_backward"

    def forward(self, g, winners, input_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        geometry = self._geometry(g, winners, input_shape, kernel_size, stride, padding, dilation, ceil_mode,
                                  pooled=True)
        return pool_kernels.max_pool2d_backward(g, winners, tuple(input_shape), *geometry.kernel_args,
                                                dilation=geometry.dilation)

    def backward(self, gg):
        return MaxPool2dGather.apply(gg, **self.params)


@register
class MaxPool2dGather(_AtWinners):
    """(N, C, H, W) -> (N, C, Ho, Wo): for each window of a max-pool, the value of the input
    at the element that won the window (``winners``); on the pooled input itself, the max.

    The transpose of ``max_pool2d_backward``, and so its VJP (and that one is this one's):
    the pair makes max_pool2d differentiable to any order, as im2col and col2im do for
    convolutions."""

    name = "max_pool2d_gather"

    def forward(self, h, winners, input_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        geometry = self._geometry(h, winners, input_shape, kernel_size, stride, padding, dilation, ceil_mode,
                                  pooled=False)
        return pool_kernels.max_pool2d_gather(h, winners, *geometry.kernel_args, dilation=geometry.dilation)

    def backward(self, g):
        return MaxPool2dBackward.apply(g, **self.params)


# ------------------------------------------------------------------------ average pooling


def _avg_geometry(name, x_shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """The window and the per-output scale (a number when every window has the same divisor)."""
    geometry = pool_geometry(name, x_shape, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is not None:
        try:
            if isinstance(divisor_override, bool):
                raise TypeError
            divisor_override = operator.index(divisor_override)
        except TypeError:
            raise TypeError(f"{name}: divisor_override must be an int or None; got {divisor_override!r}") from None
        if divisor_override == 0:
            raise ValueError(f"{name}: divisor_override must be non-zero; got 0")
    divisors = pool_kernels.avg_pool2d_divisors(x_shape[2:], geometry.kernel, geometry.stride, geometry.padding,
                                                geometry.out_hw, bool(count_include_pad), divisor_override)
    first = divisors.flat[0]
    scale = 1.0 / first if (divisors == first).all() else 1.0 / divisors
    return geometry, scale


def _scale(scale, dtype):
    return scale if isinstance(scale, float) else scale.astype(dtype)


@register
class AvgPool2d(Op):
    """Mean over each kH x kW window, by PyTorch's divisor rules (``count_include_pad``,
    ``ceil_mode``, ``divisor_override``); padding adds zeros. Its VJP is its transpose,
    ``avg_pool2d_backward``.

    A primitive, not a composite: as im2col plus a mean it would write kH*kW copies of the
    input, and as a sum of shifted slices it would record kH*kW nodes each way. The kernel
    is two separable passes of strided adds (kW + kH per output, the im2col route's kH*kW)
    and one scaling pass; linear, so its VJP is the transpose kernel and that one's VJP is
    this op again, to any order. Non-overlapping windows that divide the input evenly (the
    usual 2x2 stride 2) write their outputs without any zero fill."""

    name = "avg_pool2d"
    reads = ()

    def forward(self, x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                divisor_override=None):
        _floating(self.name, x)
        geometry, scale = _avg_geometry(self.name, x.shape, kernel_size, stride, padding, ceil_mode,
                                        count_include_pad, divisor_override)
        return pool_kernels.avg_pool2d(x, *geometry.kernel_args, _scale(scale, x.dtype))

    def backward(self, g):
        return AvgPool2dBackward.apply(g, input_shape=self.parents[0].shape, **self.params)

    def label(self):
        return pool_label(self.params)


@register
class AvgPool2dBackward(Op):
    """(N, C, Ho, Wo) gradient -> (N, C, H, W): avg_pool2d's transpose, each output's
    gradient over its window's divisor, added to each real element of the window. Its VJP
    is avg_pool2d with the same window."""

    name = "avg_pool2d_backward"
    reads = ()

    def forward(self, g, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                divisor_override=None):
        _floating(self.name, g)
        input_shape = tuple(int(n) for n in input_shape)
        geometry, scale = _avg_geometry(self.name, input_shape, kernel_size, stride, padding, ceil_mode,
                                        count_include_pad, divisor_override)
        want = input_shape[:2] + geometry.out_hw
        if g.shape != want:
            raise ValueError(f"{self.name}: a gradient of shape {g.shape} does not fit average pooling of shape "
                             f"{input_shape} with kernel {geometry.kernel}: expected {want}")
        return pool_kernels.avg_pool2d_backward(g, input_shape, *geometry.kernel_args, _scale(scale, g.dtype))

    def backward(self, gg):
        params = {k: v for k, v in self.params.items() if k != "input_shape"}
        return AvgPool2d.apply(gg, **params)

    def label(self):
        return pool_label(self.params)
