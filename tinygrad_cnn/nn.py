"""Modules: parameters and sub-modules registered by assignment, PyTorch's names and shapes.

A model is a ``Module`` whose ``forward`` is plain Python on tensors; its gradient comes
from the graph. Assigning a ``Parameter`` or a ``Module`` as an attribute registers it, so
``named_parameters()`` and ``state_dict()`` give PyTorch's dotted names (``conv1.weight``,
``features.0.bias``) with PyTorch's shapes: a state_dict moves between the two frameworks.
"""
from __future__ import annotations

import math
import numbers
import operator
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from . import functional as F
from .io import CheckpointError, cast_loaded, load_arrays, save_arrays
from .ops.conv import conv_padding
from .optim import _zero_grad
from .rng import default_generator
from .tensor import Tensor, scope, writing
from .threads import current_shard
from .xp import is_floating

__all__ = ["Parameter", "Module", "Linear", "Conv2d", "MaxPool2d", "ReLU", "Flatten", "Sequential",
           "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "BatchNorm2d", "Dropout", "Identity",
           "ConvTranspose2d",
           "ModuleList", "ModuleDict", "BatchNorm1d", "LayerNorm", "GroupNorm", "Embedding",
           "LeakyReLU", "ELU", "CELU", "SELU", "GELU", "SiLU", "Softplus", "LogSigmoid", "ReLU6", "Hardtanh",
           "Hardsigmoid", "Hardswish", "Mish", "Sigmoid", "Tanh", "Softmax", "LogSoftmax"]


class Parameter(Tensor):
    """A Tensor that a Module learns: requires grad by default and is listed by ``parameters()``."""

    __slots__ = ()

    def __init__(self, data, requires_grad=True):
        super().__init__(data.data if isinstance(data, Tensor) else data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class IncompatibleKeys(NamedTuple):
    missing_keys: list
    unexpected_keys: list


class Module:
    """Base class of every layer and model. Subclasses call ``super().__init__()`` first,
    assign parameters/sub-modules as attributes, and define ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # --- registration by assignment ------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        # replacing a parameter/module by one of the same kind keeps its place (as PyTorch)
        if isinstance(value, Parameter) and name in self._parameters:
            self._parameters[name] = value
            return
        if isinstance(value, Module) and name in self._modules:
            self._modules[name] = value
            return
        for store in (self._parameters, self._modules, self._buffers):
            store.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        d = self.__dict__
        for store in ("_parameters", "_modules", "_buffers"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for store in (self._parameters, self._modules, self._buffers):
            if name in store:
                del store[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name, array):
        """State that is saved in ``state_dict`` but not learned (e.g. BatchNorm running stats)."""
        self.__dict__.pop(name, None)
        self._buffers[name] = np.asarray(array)

    def register_module(self, name, module):
        self.__setattr__(name, module)

    # --- calling ---------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        with scope(self):  # ops recorded here are tagged with this module (graph views group them)
            return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    # --- traversal -------------------------------------------------------------------------
    def named_modules(self, prefix=""):
        """(dotted name, module) for this module and all below it, depth first, each once."""
        seen, stack = set(), [(prefix, self)]
        while stack:
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            children = [(f"{name}.{k}" if name else k, c) for k, c in m._modules.items() if c is not None]
            stack.extend(reversed(children))

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix="", recurse=True):
        seen = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mname, m in mods:
            for pname, p in m._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self, recurse=True):
        return (p for _, p in self.named_parameters(recurse=recurse))

    def named_buffers(self, prefix=""):
        for mname, m in self.named_modules(prefix):
            for bname, b in m._buffers.items():
                yield (f"{mname}.{bname}" if mname else bname), b

    def buffers(self):
        return (b for _, b in self.named_buffers())

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())

    # --- modes and gradients ------------------------------------------------------------------
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        """Forget every parameter's gradient (``.grad = None``; zeros in place if not set_to_none)."""
        for p in self.parameters():
            _zero_grad(p, set_to_none, f"{type(self).__name__}.zero_grad")

    def requires_grad_(self, requires_grad=True):
        """Freeze (``False``) or unfreeze every parameter below this module: a frozen parameter
        records no graph, gets no gradient, and optimizers skip it."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def astype(self, dtype):
        """Convert every parameter and floating buffer to ``dtype`` in place (e.g. float64 for gradcheck)."""
        for m in self.modules():
            for p in m._parameters.values():
                p.data = p.data.astype(dtype)
                p.grad = None
            for k, b in m._buffers.items():
                if is_floating(b.dtype):
                    m._buffers[k] = b.astype(dtype)
        return self

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self):
        """{dotted name: ndarray copy} of parameters and buffers, in registration order."""
        out = OrderedDict()
        for mname, m in self.named_modules():
            for name, p in m._parameters.items():
                out[f"{mname}.{name}" if mname else name] = np.array(p.data, copy=True)
            for name, b in m._buffers.items():
                out[f"{mname}.{name}" if mname else name] = np.array(b, copy=True)
        return out

    def _state_slots(self):
        """{dotted name: (owner module, attribute, kind)} for every parameter and buffer."""
        slots = OrderedDict()
        for mname, m in self.named_modules():
            for name in m._parameters:
                slots[f"{mname}.{name}" if mname else name] = (m, name, "param")
            for name in m._buffers:
                slots[f"{mname}.{name}" if mname else name] = (m, name, "buffer")
        return slots

    def load_state_dict(self, state_dict, strict=True):
        """Copy values in by name. With ``strict``, any missing, unexpected or wrong-shaped key is
        an error listing them all; otherwise the missing and unexpected keys are returned."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict: {type(self).__name__}: expects a mapping of names to arrays "
                            f"(e.g. another model's state_dict()); got a {type(state_dict).__name__}")
        slots = self._state_slots()
        missing = [k for k in slots if k not in state_dict]
        unexpected = [k for k in state_dict if k not in slots]
        wrong = [f"{k}: expected {self._slot_value(slots[k]).shape}, got {np.shape(state_dict[k])}"
                 for k in slots if k in state_dict and np.shape(state_dict[k]) != self._slot_value(slots[k]).shape]
        problems = []
        if wrong:
            problems.append("wrong shape for " + "; ".join(wrong))
        if strict and missing:
            problems.append("missing keys " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys " + ", ".join(unexpected))
        if problems:
            raise KeyError(f"load_state_dict: {type(self).__name__}: " + " | ".join(problems))
        values = {}  # every value converted before any is stored: an error changes nothing
        for k, slot in slots.items():
            if k in state_dict:
                kind = "parameter" if slot[2] == "param" else "buffer"
                values[k] = cast_loaded(state_dict[k], self._slot_value(slot).dtype,
                                        f"load_state_dict: {type(self).__name__}: {kind} {k}")
        for k, value in values.items():
            m, name, kind = slots[k]
            if kind == "param":  # in place, as PyTorch's copy_: a graph that read the old values
                p = m._parameters[name]  # then refuses to run backward (tensor.writing)
                with writing(p.data, f"{type(self).__name__}.load_state_dict") as d:
                    if getattr(d.flags, "writeable", True):
                        d[...] = value
                    else:  # an array nothing of ours locked (e.g. a read-only memory map): replace it
                        p.data = value
            else:
                m._buffers[name] = value
        return IncompatibleKeys(missing, unexpected)

    @staticmethod
    def _slot_value(slot):
        m, name, kind = slot
        return m._parameters[name].data if kind == "param" else m._buffers[name]

    def save(self, path):
        """Write ``state_dict()`` to an ``.npz`` file atomically (no pickle)."""
        save_arrays(path, self.state_dict())

    def load(self, path, strict=True):
        """Load parameters saved by ``save``; a corrupt or mismatched file raises an error naming it."""
        state = load_arrays(path)
        try:
            return self.load_state_dict(state, strict=strict)
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: {e.args[0]}") from None

    # --- printing ----------------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"({k}): " + repr(m).replace("\n", "\n  ") for k, m in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + ")" if not lines else head + "\n  " + "\n  ".join(lines) + "\n)"


# ---------------------------------------------------------------------------------------- layers


def _size(owner, name, value, minimum=1):
    """``value`` as a Python int >= ``minimum``, or a ValueError naming the layer and argument
    (a zero or negative size would otherwise fail deep in the initialisation)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise ValueError(f"{owner}: {name} must be {kind} integer; got {value!r}")
    return int(value)


def _pair(owner, name, value, minimum=1):
    """An int or an (h, w) pair of ints >= ``minimum``, as a pair."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{owner}: {name} must be an int or an (h, w) pair; got {value!r}")
        return tuple(_size(owner, name, v, minimum) for v in value)
    v = _size(owner, name, value, minimum)
    return v, v


def _conv_repr(layer):
    """A convolution layer's arguments as PyTorch prints them: the defaults left out."""
    text = f"{layer.in_channels}, {layer.out_channels}, kernel_size={layer.kernel_size}, stride={layer.stride}"
    for name, default in (("padding", (0, 0)), ("output_padding", (0, 0)), ("dilation", (1, 1)), ("groups", 1)):
        value = getattr(layer, name, default)
        if value != default:
            text += f", {name}={value}"
    if layer.bias is None:
        text += ", bias=False"
    if getattr(layer, "padding_mode", "zeros") != "zeros":
        text += f", padding_mode={layer.padding_mode}"
    return text


def _uniform(rng, bound, shape, dtype):
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class Linear(Module):
    """y = x @ weight.T + bias; weight (out_features, in_features). PyTorch's default init:
    U(-1/sqrt(in), 1/sqrt(in)) for both (Kaiming-uniform with a=sqrt(5))."""

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=np.float32):
        super().__init__()
        in_features, out_features = _size("Linear", "in_features", in_features), \
            _size("Linear", "out_features", out_features)
        rng = default_generator() if rng is None else rng
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(_uniform(rng, bound, (out_features, in_features), dtype))
        self.bias = Parameter(_uniform(rng, bound, (out_features,), dtype)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _conv_padding(owner, padding, stride, dilation, kernel):
    """A layer's ``padding`` checked at construction: 'same'/'valid', an int, an (h, w) pair or
    (top, bottom, left, right) of non-negative ints. Returns the padding as given (a pair for
    an int, as PyTorch stores it) and its (top, bottom, left, right) form."""
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"{owner}: padding must be 'same', 'valid', an int, an (h, w) pair or "
                             f"(top, bottom, left, right); got {padding!r}")
        if padding == "same" and stride != (1, 1):
            raise ValueError(f"{owner}: padding='same' needs stride 1 (as in PyTorch); got stride {stride}")
        return padding, conv_padding(owner, padding, kernel, stride, dilation)
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        pads = tuple(_size(owner, "padding", v, minimum=0) for v in padding)
        return pads, pads
    ph, pw = _pair(owner, "padding", padding, minimum=0)
    return (ph, pw), (ph, ph, pw, pw)


class Conv2d(Module):
    """2-d convolution over NCHW input; weight (out_channels, in_channels/groups, kH, kW), as
    PyTorch's (``F.conv2d``: ``padding`` may also be 'same', 'valid' or (top, bottom, left,
    right)). PyTorch's default init: Kaiming-uniform with a=sqrt(5), i.e. U(-1/sqrt(fan_in),
    1/sqrt(fan_in)) for the weight and the bias, fan_in = in_channels/groups * kH * kW.

    ``padding_mode`` 'reflect', 'replicate' or 'circular' pads the input explicitly first
    (an index gather, whose VJP adds the gradient back, so it is differentiable to any
    order) and convolves it unpadded, as PyTorch does; 'zeros' folds the padding into im2col."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", rng=None, dtype=np.float32):
        super().__init__()
        n = "Conv2d"
        in_channels, out_channels = _size(n, "in_channels", in_channels), _size(n, "out_channels", out_channels)
        kh, kw = _pair(n, "kernel_size", kernel_size)
        stride, dilation = _pair(n, "stride", stride), _pair(n, "dilation", dilation)
        groups = _size(n, "groups", groups)
        for what, count in (("in_channels", in_channels), ("out_channels", out_channels)):
            if count % groups:
                raise ValueError(f"{n}: {what} ({count}) must be divisible by groups ({groups})")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"{n}: padding_mode must be one of {', '.join(map(repr, _PADDING_MODES))}; "
                             f"got {padding_mode!r}")
        self.padding, self._pads = _conv_padding(n, padding, stride, dilation, (kh, kw))
        rng = default_generator() if rng is None else rng
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation, self.padding_mode = (kh, kw), stride, dilation, padding_mode
        bound = 1.0 / math.sqrt(in_channels // groups * kh * kw)
        self.weight = Parameter(_uniform(rng, bound, (out_channels, in_channels // groups, kh, kw), dtype))
        self.bias = Parameter(_uniform(rng, bound, (out_channels,), dtype)) if bias else None

    def forward(self, x):
        padding = self.padding
        if self.padding_mode != "zeros":
            top, bottom, left, right = self._pads
            x = F.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode=self.padding_mode)
            padding = 0
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=padding, dilation=self.dilation,
                        groups=self.groups)

    def extra_repr(self):
        return _conv_repr(self)


class ConvTranspose2d(Module):
    """Transposed 2-d convolution (``F.conv_transpose2d``); weight (in_channels,
    out_channels/groups, kH, kW), as PyTorch's, and PyTorch's init (Kaiming-uniform with
    a=sqrt(5) over PyTorch's fan_in for this layout, out_channels/groups * kH * kW, for the
    weight and the bias). ``forward(x, output_size=None)``: an (H, W) (or a full shape) picks
    the output_padding that reaches it, as PyTorch's. Only 'zeros' padding, as PyTorch."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", rng=None, dtype=np.float32):
        super().__init__()
        n = "ConvTranspose2d"
        in_channels, out_channels = _size(n, "in_channels", in_channels), _size(n, "out_channels", out_channels)
        kh, kw = _pair(n, "kernel_size", kernel_size)
        stride, dilation = _pair(n, "stride", stride), _pair(n, "dilation", dilation)
        padding, output_padding = _pair(n, "padding", padding, minimum=0), \
            _pair(n, "output_padding", output_padding, minimum=0)
        groups = _size(n, "groups", groups)
        for what, count in (("in_channels", in_channels), ("out_channels", out_channels)):
            if count % groups:
                raise ValueError(f"{n}: {what} ({count}) must be divisible by groups ({groups})")
        if any(op >= max(s, d) for op, s, d in zip(output_padding, stride, dilation)):
            raise ValueError(f"{n}: output_padding {output_padding} must be smaller than either the stride "
                             f"{stride} or the dilation {dilation}")
        if padding_mode != "zeros":
            raise ValueError(f"{n}: only padding_mode='zeros' is supported (as in PyTorch); got {padding_mode!r}")
        rng = default_generator() if rng is None else rng
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.padding, self.output_padding = (kh, kw), stride, padding, output_padding
        self.dilation, self.padding_mode = dilation, padding_mode
        bound = 1.0 / math.sqrt(out_channels // groups * kh * kw)
        self.weight = Parameter(_uniform(rng, bound, (in_channels, out_channels // groups, kh, kw), dtype))
        self.bias = Parameter(_uniform(rng, bound, (out_channels,), dtype)) if bias else None

    def _output_padding(self, x, output_size):
        if output_size is None:
            return self.output_padding
        size = tuple(output_size)[-2:]
        if len(size) != 2 or len(tuple(output_size)) not in (2, 4):
            raise ValueError(f"ConvTranspose2d: output_size must be (H, W) or (N, C, H, W); got {output_size!r}")
        pads = []
        for i, want in enumerate(size):
            least = ((x.shape[2 + i] - 1) * self.stride[i] - 2 * self.padding[i]
                     + self.dilation[i] * (self.kernel_size[i] - 1) + 1)
            most = least + max(self.stride[i], self.dilation[i]) - 1
            if not least <= want <= most:
                raise ValueError(f"ConvTranspose2d: output_size {tuple(output_size)} is out of reach for input "
                                 f"{x.shape}: {'HW'[i]} must lie in [{least}, {most}]")
            pads.append(want - least)
        return tuple(pads)

    def forward(self, x, output_size=None):
        return F.conv_transpose2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                                  output_padding=self._output_padding(x, output_size), groups=self.groups,
                                  dilation=self.dilation)

    def extra_repr(self):
        return _conv_repr(self)


def _pool_padding(owner, padding):
    """An int, an (h, w) pair or a (top, bottom, left, right) tuple of non-negative ints."""
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        for p in padding:
            _size(owner, "padding", p, minimum=0)
    else:
        _pair(owner, "padding", padding, minimum=0)


def _output_size(owner, output_size):
    """An int or an (h, w) pair of positive ints, None keeping a side."""
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size,)
    if not 1 <= len(sizes) <= 2 or (len(sizes) == 1 and sizes[0] is None):
        raise ValueError(f"{owner}: output_size must be an int or an (h, w) pair; got {output_size!r}")
    for size in sizes:
        if size is not None:
            _size(owner, "output_size", size)


class MaxPool2d(Module):
    """Max over sliding windows (``F.max_pool2d``), PyTorch's arguments in PyTorch's order."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        _pair("MaxPool2d", "kernel_size", kernel_size)
        if stride is not None:
            _pair("MaxPool2d", "stride", stride)
        _pool_padding("MaxPool2d", padding)
        _pair("MaxPool2d", "dilation", dilation)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.return_indices, self.ceil_mode = dilation, bool(return_indices), bool(ceil_mode)

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                            self.return_indices)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride or self.kernel_size}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    """Mean over sliding windows (``F.avg_pool2d``), PyTorch's arguments in PyTorch's order."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        _pair("AvgPool2d", "kernel_size", kernel_size)
        if stride is not None:
            _pair("AvgPool2d", "stride", stride)
        _pool_padding("AvgPool2d", padding)
        if divisor_override is not None and (isinstance(divisor_override, (bool, np.bool_))
                                             or not isinstance(divisor_override, numbers.Integral)
                                             or divisor_override == 0):
            raise ValueError(f"AvgPool2d: divisor_override must be a non-zero integer or None; "
                             f"got {divisor_override!r}")
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = bool(ceil_mode), bool(count_include_pad)
        self.divisor_override = divisor_override

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                            self.divisor_override)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride or self.kernel_size}, padding={self.padding}"
                + (", ceil_mode=True" if self.ceil_mode else "")
                + ("" if self.count_include_pad else ", count_include_pad=False")
                + ("" if self.divisor_override is None else f", divisor_override={self.divisor_override}"))


class AdaptiveAvgPool2d(Module):
    """Average over PyTorch's adaptive bins to a fixed output size (``F.adaptive_avg_pool2d``);
    ``AdaptiveAvgPool2d(1)`` is global average pooling."""

    def __init__(self, output_size):
        super().__init__()
        _output_size("AdaptiveAvgPool2d", output_size)
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveMaxPool2d(Module):
    """Max over PyTorch's adaptive bins to a fixed output size (``F.adaptive_max_pool2d``)."""

    def __init__(self, output_size, return_indices=False):
        super().__init__()
        _output_size("AdaptiveMaxPool2d", output_size)
        self.output_size, self.return_indices = output_size, bool(return_indices)

    def forward(self, x):
        return F.adaptive_max_pool2d(x, self.output_size, self.return_indices)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class Identity(Module):
    """Returns its input; accepts and ignores any constructor arguments (as PyTorch's)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


class Flatten(Module):
    """Axes ``start_dim`` to ``end_dim`` merged (the batch axis 0 kept, by default)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        for name, d in (("start_dim", start_dim), ("end_dim", end_dim)):
            if isinstance(d, (bool, np.bool_)) or not isinstance(d, numbers.Integral):
                raise TypeError(f"Flatten: {name} must be an int; got {d!r}")
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Sequential(Module):
    """Modules applied in order; registered as ``"0"``, ``"1"``, ... as in PyTorch."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: item {i} is a {type(m).__name__}, not a Module")
            self._modules[str(i)] = m

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i):
        items = list(self._modules.values())
        return Sequential(*items[i]) if isinstance(i, slice) else items[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class _BatchNorm(Module):
    """Batch normalisation per channel (axis 1) over every other axis, with running statistics
    for eval mode. State names as PyTorch: weight, bias, running_mean, running_var,
    num_batches_tracked. Subclasses say which input ranks they take."""

    _ranks = ()
    _form = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        num_features = _size(name, "num_features", num_features)
        if not (isinstance(eps, numbers.Real) and 0 < eps < math.inf):
            raise ValueError(f"{name}: eps must be a positive number; got {eps!r}")
        if not (isinstance(momentum, numbers.Real) and 0 <= momentum <= 1):
            raise ValueError(f"{name}: momentum must lie in [0, 1]; got {momentum!r}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(np.ones(num_features, dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_features, dtype)) if affine else None
        self.register_buffer("running_mean", np.zeros(num_features, dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype))
        self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def forward(self, x):
        if x.ndim not in self._ranks or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: expects {self._form.format(c=self.num_features)} input; "
                             f"got shape {x.shape}")
        shard = current_shard()
        if self.training and shard is None and x.numel() == x.shape[1]:  # as PyTorch: no 0/0 variance
            raise ValueError(f"{type(self).__name__}: expected more than 1 value per channel when training; got "
                             f"input of shape {x.shape} (use a larger batch, or eval() mode)")
        if self.training and (shard is None or shard[1] == 0):  # once per batch, also when threads split it
            self._buffers["num_batches_tracked"] = self.num_batches_tracked + 1
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=self.training, momentum=self.momentum, eps=self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) input, per channel C."""

    _ranks = (2, 3)
    _form = "(N, {c}) or (N, {c}, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) input over (N, H, W), per channel C."""

    _ranks = (4,)
    _form = "(N, {c}, H, W)"


class Dropout(Module):
    """Inverted dropout in training mode, identity in eval mode. Draws from ``rng`` or the
    framework's default generator (``tinygrad_cnn.manual_seed``), so runs are repeatable."""

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must lie in [0, 1); got {p}")
        self.p, self.rng = p, rng

    def forward(self, x):
        rng = default_generator() if self.rng is None else self.rng
        return F.dropout(x, self.p, training=self.training, rng=rng)

    def extra_repr(self):
        return f"p={self.p}"


# ------------------------------------------------------------------------------ containers


class ModuleList(Module):
    """A list of modules, registered as ``"0"``, ``"1"``, ... (so a state_dict has PyTorch's
    names, ``layers.0.weight``). Indexing, slicing (a new ModuleList), ``append``,
    ``extend``, ``insert``, ``len``, iteration, ``del``; not callable itself."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _checked(self, m, i):
        if not isinstance(m, Module):
            raise TypeError(f"ModuleList: item {i} is a {type(m).__name__}, not a Module")
        return m

    def _index(self, i):
        n = len(self)
        try:
            i = operator.index(i)
        except TypeError:
            raise TypeError(f"ModuleList: indices must be integers or slices; got {type(i).__name__}") from None
        if not -n <= i < n:
            raise IndexError(f"ModuleList: index {i} is out of range for {n} modules")
        return i % n

    def _renumber(self, items):
        self._modules.clear()
        for k, m in enumerate(items):
            self._modules[str(k)] = m

    def __getitem__(self, i):
        items = list(self._modules.values())
        if isinstance(i, slice):
            return ModuleList(items[i])
        return items[self._index(i)]

    def __setitem__(self, i, module):
        self._modules[str(self._index(i))] = self._checked(module, i)

    def __delitem__(self, i):
        items = list(self._modules.values())
        if isinstance(i, slice):
            del items[i]
        else:
            del items[self._index(i)]
        self._renumber(items)  # as PyTorch: the names stay 0..n-1

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __iadd__(self, modules):
        return self.extend(modules)

    def append(self, module):
        self._modules[str(len(self))] = self._checked(module, len(self))
        return self

    def extend(self, modules):
        if isinstance(modules, Module) and not isinstance(modules, ModuleList):
            raise TypeError("ModuleList.extend: expects an iterable of Modules; got a single Module (use append)")
        for m in list(modules):
            self.append(m)
        return self

    def insert(self, index, module):
        items = list(self._modules.values())
        items.insert(index, self._checked(module, index))
        self._renumber(items)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleList is not callable: iterate over it in your forward()")


class ModuleDict(Module):
    """A dict of modules registered under their keys (a state_dict has ``blocks.conv.weight``);
    insertion order kept. Keys are strings without dots that do not shadow an attribute."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key):
        try:
            return self._modules[key]
        except KeyError:
            raise KeyError(f"ModuleDict: no module named {key!r} (have {list(self._modules)})") from None

    def __setitem__(self, key, module):
        if not isinstance(key, str):
            raise TypeError(f"ModuleDict: keys must be strings; got {type(key).__name__}")
        if "." in key or key == "":
            raise KeyError(f"ModuleDict: key {key!r} must be a non-empty name without '.' (dots separate the "
                           f"levels of state_dict names)")
        if hasattr(type(self), key) or (key in self.__dict__):
            raise KeyError(f"ModuleDict: key {key!r} would shadow the attribute of that name; pick another")
        if not isinstance(module, Module):
            raise TypeError(f"ModuleDict: the value for {key!r} is a {type(module).__name__}, not a Module")
        self._modules[key] = module

    def __delitem__(self, key):
        self[key]  # the KeyError, worded
        del self._modules[key]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __contains__(self, key):
        return key in self._modules

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()

    def pop(self, key):
        module = self[key]
        del self._modules[key]
        return module

    def clear(self):
        self._modules.clear()

    def update(self, modules):
        """Add ``(key, module)`` pairs from a mapping, a ModuleDict or an iterable of pairs."""
        items = modules.items() if isinstance(modules, (Mapping, ModuleDict)) else modules
        for i, pair in enumerate(items):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"ModuleDict.update: item {i} must be a (key, module) pair; got {pair!r}")
            self[pair[0]] = pair[1]

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleDict is not callable: pick its modules by key in your forward()")


# ------------------------------------------------------------------- normalisation, lookup


class LayerNorm(Module):
    """Normalisation over the trailing ``normalized_shape`` of each sample, with an
    elementwise affine map (``weight`` ones, ``bias`` zeros, of that shape), as PyTorch's."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, dtype=np.float32):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else tuple(normalized_shape)
        shape = tuple(_size("LayerNorm", "normalized_shape", n) for n in shape)
        self.normalized_shape, self.eps, self.elementwise_affine = shape, eps, elementwise_affine
        self.weight = Parameter(np.ones(self.normalized_shape, dtype)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(self.normalized_shape, dtype)) if elementwise_affine and bias else None

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GroupNorm(Module):
    """Normalisation of each sample over groups of channels, then a per-channel affine map
    (``weight`` ones, ``bias`` zeros), as PyTorch's. Input (N, C, ...)."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=np.float32):
        super().__init__()
        num_groups, num_channels = _size("GroupNorm", "num_groups", num_groups), \
            _size("GroupNorm", "num_channels", num_channels)
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels ({num_channels}) must divide into num_groups ({num_groups}) "
                             f"equal groups")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        self.weight = Parameter(np.ones(num_channels, dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_channels, dtype)) if affine else None

    def forward(self, x):
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"GroupNorm: expects (N, {self.num_channels}, ...) input; got shape {x.shape}")
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class Embedding(Module):
    """A lookup table: integer indices (any shape) -> rows of ``weight`` (num_embeddings,
    embedding_dim), initialised N(0, 1) as PyTorch's. The row ``padding_idx`` starts at zero
    and gets no gradient."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, rng=None, dtype=np.float32, _weight=None):
        super().__init__()
        num_embeddings = _size("Embedding", "num_embeddings", num_embeddings)
        embedding_dim = _size("Embedding", "embedding_dim", embedding_dim)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        if padding_idx is not None:
            padding_idx = F._padding_index("Embedding", padding_idx, num_embeddings)
        self.padding_idx = padding_idx
        if _weight is None:
            rng = default_generator() if rng is None else rng
            w = rng.standard_normal((num_embeddings, embedding_dim)).astype(dtype)
            if padding_idx is not None:
                w[padding_idx] = 0
            self.weight = Parameter(w)
        else:
            if tuple(np.shape(_weight)) != (num_embeddings, embedding_dim):
                raise ValueError(f"Embedding: the weight must have shape ({num_embeddings}, {embedding_dim}); got "
                                 f"{tuple(np.shape(_weight))}")
            self.weight = _weight if isinstance(_weight, Parameter) else Parameter(_weight)

    @classmethod
    def from_pretrained(cls, embeddings, freeze=True, padding_idx=None):
        """An Embedding holding ``embeddings`` (2-d), frozen unless ``freeze=False``."""
        data = embeddings.data if isinstance(embeddings, Tensor) else np.asarray(embeddings)
        if data.ndim != 2:
            raise ValueError(f"Embedding.from_pretrained: embeddings must be 2-d; got shape {data.shape}")
        return cls(*data.shape, padding_idx=padding_idx,
                   _weight=Parameter(np.array(data, copy=True), requires_grad=not freeze))

    def forward(self, indices):
        return F.embedding(indices, self.weight, self.padding_idx)

    def extra_repr(self):
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


# -------------------------------------------------------------------------------- activations


class _Activation(Module):
    """A module that applies one function of ``F`` with fixed keyword arguments."""

    _fn = None  # the name of the function in F

    def __init__(self, **kwargs):
        super().__init__()
        self._kwargs = kwargs

    def forward(self, x):
        return getattr(F, self._fn)(x, **self._kwargs)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self._kwargs.items())

    def __getattr__(self, name):  # the arguments read as attributes (m.negative_slope), as PyTorch's
        kwargs = self.__dict__.get("_kwargs", {})
        if name in kwargs:
            return kwargs[name]
        return super().__getattr__(name)


class LeakyReLU(_Activation):
    _fn = "leaky_relu"

    def __init__(self, negative_slope=0.01):
        super().__init__(negative_slope=negative_slope)


class ELU(_Activation):
    _fn = "elu"

    def __init__(self, alpha=1.0):
        super().__init__(alpha=alpha)


class CELU(_Activation):
    _fn = "celu"

    def __init__(self, alpha=1.0):
        if alpha == 0:
            raise ValueError("CELU: alpha must not be 0 (it divides x)")
        super().__init__(alpha=alpha)


class SELU(_Activation):
    _fn = "selu"


class GELU(_Activation):
    _fn = "gelu"

    def __init__(self, approximate="none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh'; got {approximate!r}")
        super().__init__(approximate=approximate)


class SiLU(_Activation):
    _fn = "silu"


class Softplus(_Activation):
    _fn = "softplus"

    def __init__(self, beta=1.0, threshold=20.0):
        super().__init__(beta=beta, threshold=threshold)


class LogSigmoid(_Activation):
    _fn = "logsigmoid"


class Hardtanh(_Activation):
    _fn = "hardtanh"

    def __init__(self, min_val=-1.0, max_val=1.0):
        if max_val < min_val:
            raise ValueError(f"Hardtanh: max_val ({max_val}) must not be less than min_val ({min_val})")
        super().__init__(min_val=min_val, max_val=max_val)


class ReLU6(_Activation):
    _fn = "relu6"


class Hardsigmoid(_Activation):
    _fn = "hardsigmoid"


class Hardswish(_Activation):
    _fn = "hardswish"


class Mish(_Activation):
    _fn = "mish"


class Sigmoid(_Activation):
    _fn = "sigmoid"


class Tanh(_Activation):
    _fn = "tanh"


def _implicit_softmax_dim(name, ndim):
    """PyTorch's legacy choice when no ``dim`` is given (0 for 0-, 1- and 3-d input, else 1),
    with its warning: pass ``dim`` to say which axis sums to one."""
    warnings.warn(f"{name}: implicit dimension choice (dim=None) is deprecated, as in PyTorch; pass dim",
                  UserWarning, stacklevel=3)
    return 0 if ndim in (0, 1, 3) else 1


class Softmax(Module):
    """softmax along ``dim`` (PyTorch's implicit choice, with a warning, when it is None)."""

    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        dim = _implicit_softmax_dim("Softmax", x.ndim) if self.dim is None else self.dim
        return F.softmax(x, axis=dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    """log_softmax along ``dim`` (PyTorch's implicit choice, with a warning, when it is None)."""

    def forward(self, x):
        dim = _implicit_softmax_dim("LogSoftmax", x.ndim) if self.dim is None else self.dim
        return F.log_softmax(x, axis=dim)
