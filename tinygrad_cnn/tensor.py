"""Tensor, the graph record and backward.

A ``Tensor`` wraps an ndarray. Applying a primitive ``Op`` to tensors that require grad
creates one ``Op`` instance: the graph node. It keeps its ``parents`` (input tensors), its
``params`` (stride, axis, ...) and whatever arrays its VJP needs (``saved``). The output
tensor points back at it through ``_ctx``. ``backward()`` walks these records in reverse
topological order, with an explicit stack (no recursion limit), calls each node's VJP, sums
each gradient back to its input's shape (broadcasting), and accumulates into leaves' ``.grad``.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import numpy as np

from .backend import array_module, is_array, is_floating

# ----------------------------------------------------------------------------- grad mode

_local = threading.local()
_profiler = None  # a profiler.Profile while one is active (see tinygrad_cnn.profile)


def is_grad_enabled() -> bool:
    return getattr(_local, "grad_enabled", True)


class _GradMode:
    """Context manager (and decorator, with or without parentheses) that sets whether ops
    record a graph."""

    enabled = True

    def __new__(cls, fn=None):
        self = super().__new__(cls)
        self._prev = []
        return self if fn is None else self(fn)

    def __init__(self, fn=None):
        pass

    def __enter__(self):
        self._prev.append(is_grad_enabled())
        _local.grad_enabled = self.enabled

    def __exit__(self, *exc):
        _local.grad_enabled = self._prev.pop()
        return False

    def __call__(self, fn):
        import functools

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.__class__():
                return fn(*args, **kwargs)

        return wrapper


class no_grad(_GradMode):
    """``with no_grad():`` ops record no graph and save nothing for backward (inference)."""

    enabled = False


class enable_grad(_GradMode):
    """``with enable_grad():`` turns recording back on inside a ``no_grad`` block."""

    enabled = True


# ------------------------------------------------------------------ module scope (for viz)


def current_scope() -> tuple:
    """The stack of objects (usually ``nn.Module``s) whose forward is running now."""
    return getattr(_local, "scope", ())


@contextmanager
def scope(owner):
    """Tag every op recorded inside the block with ``owner`` (graph views group by it)."""
    prev = current_scope()
    _local.scope = prev + (owner,)
    try:
        yield
    finally:
        _local.scope = prev


# ------------------------------------------------------------------------- the graph record


class Op:
    """A primitive: its forward on arrays and its VJP, side by side.

    Subclasses set ``name`` and write ``forward(self, *arrays, **params) -> array`` and
    ``backward(self, grad) -> grad or tuple of grads`` (one per input, ``None`` where an
    input needs none). Arrays the VJP needs go through ``self.save(...)`` so that the
    engine can free them after backward. VJPs must not modify ``grad`` in place, and may
    return gradients of a broadcast shape: the engine sums them back to the input's shape.
    One instance is one node of the graph.
    """

    name = "op"

    __slots__ = ("params", "parents", "needs_input_grad", "saved", "scope", "freed", "_record")

    @classmethod
    def apply(cls, *inputs, **params):
        """Run the op on tensors, recording a graph node when a gradient may be needed."""
        tensors = tuple(t if isinstance(t, Tensor) else Tensor(t) for t in inputs)
        _check_same_dtype(cls.name, tensors)
        needs = tuple(t.requires_grad for t in tensors)
        record = any(needs) and is_grad_enabled()
        op = cls.__new__(cls)
        op.params = params
        op.needs_input_grad = needs
        op.saved = ()
        op.freed = False
        op._record = record
        if _profiler is None:
            data = op.forward(*(t.data for t in tensors), **params)
        else:
            t0 = time.perf_counter()
            data = op.forward(*(t.data for t in tensors), **params)
            _profiler.record(cls.name, "forward", time.perf_counter() - t0)
        out = Tensor._wrap(data, record)
        if record:
            op.parents = tensors
            op.scope = current_scope()
            out._ctx = op
        return out

    def save(self, *arrays):
        """Keep ``arrays`` for the VJP (nothing is kept when no gradient is recorded)."""
        if self._record:
            self.saved = arrays

    def release(self):
        """Drop the saved arrays; a later backward through this node raises."""
        self.saved = None
        self.freed = True

    def forward(self, *arrays, **params):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}({args})"


def _check_same_dtype(name, tensors):
    if len(tensors) > 1:
        first = tensors[0].dtype
        for t in tensors[1:]:
            if t.dtype != first:
                got = ", ".join(str(x.dtype) for x in tensors)
                raise TypeError(
                    f"{name}: inputs have different dtypes ({got}); ops never convert "
                    f"silently, so cast one first, e.g. x.astype({str(first)!r})")


def sum_to_shape(grad, shape):
    """Sum a broadcast gradient back to ``shape`` (the VJP of broadcasting)."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra < 0:
        raise ValueError(f"cannot sum gradient of shape {grad.shape} to larger shape {tuple(shape)}")
    axes = tuple(range(extra)) + tuple(
        extra + i for i, n in enumerate(shape) if n == 1 and grad.shape[extra + i] != 1)
    out = grad.sum(axis=axes, keepdims=True) if axes else grad
    if extra:
        out = out.reshape(out.shape[extra:])
    if out.shape != tuple(shape):
        raise ValueError(f"gradient of shape {grad.shape} does not broadcast to input shape {tuple(shape)}")
    return out


# ---------------------------------------------------------------------------------- Tensor

_DEFAULT_FLOAT = np.float32


def _to_array(data, dtype):
    if isinstance(data, Tensor):
        data = data.data
    if is_array(data) or isinstance(data, np.generic):
        arr = np.asarray(data) if isinstance(data, np.generic) else data  # numpy scalars keep their dtype
    else:
        arr = np.asarray(data)
        if dtype is None and arr.dtype.kind == "f":
            arr = arr.astype(_DEFAULT_FLOAT)  # Python floats default to float32, as in PyTorch
    if dtype is not None and arr.dtype != np.dtype(dtype):
        arr = arr.astype(dtype)
    return arr


class Tensor:
    """An n-dimensional array that remembers how it was computed.

    ``Tensor(data, requires_grad=False, dtype=None)``: ``data`` is an ndarray (shared, not
    copied), a nested list or a number. Python floats become float32; numpy arrays keep
    their dtype (float64 stays float64). Only floating tensors can require grad.
    """

    __slots__ = ("data", "grad", "requires_grad", "_ctx", "_retains_grad", "name", "__weakref__")
    __array_ufunc__ = None  # make `ndarray + Tensor` call Tensor.__radd__
    __hash__ = object.__hash__  # __eq__ is elementwise; hash by identity as PyTorch does

    def __init__(self, data, requires_grad=False, dtype=None, name=None):
        self.data = _to_array(data, dtype)
        if requires_grad and not is_floating(self.data.dtype):
            raise TypeError(f"Tensor: only floating-point tensors can require grad; got dtype {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._ctx = None
        self._retains_grad = False
        self.name = name

    @classmethod
    def _wrap(cls, data, requires_grad):
        t = cls.__new__(Tensor)
        t.data = data
        t.requires_grad = requires_grad
        t.grad = None
        t._ctx = None
        t._retains_grad = False
        t.name = None
        return t

    # --- properties -------------------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def is_leaf(self):
        return self._ctx is None

    @property
    def grad_fn(self):
        """The op that produced this tensor (``None`` for leaves)."""
        return self._ctx

    @property
    def T(self):
        return self.permute(*reversed(range(self.ndim)))

    def numel(self):
        return int(self.data.size)

    def numpy(self):
        """The underlying ndarray (shared, not copied)."""
        return self.data

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item: only a one-element tensor converts to a Python number; got shape {self.shape}")
        return self.data.item()

    def detach(self):
        """A new leaf sharing the data, cut from the graph."""
        return Tensor._wrap(self.data, False)

    def requires_grad_(self, flag=True):
        if flag and not is_floating(self.dtype):
            raise TypeError(f"requires_grad_: only floating-point tensors can require grad; got dtype {self.dtype}")
        self.requires_grad = bool(flag)
        return self

    def retain_grad(self):
        """Keep ``.grad`` on this non-leaf tensor after backward (leaves always keep it)."""
        self._retains_grad = True
        return self

    def zero_grad(self):
        """Forget the accumulated gradient (sets ``.grad`` to None, as PyTorch does by default)."""
        self.grad = None

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        if self._ctx is not None:
            extra += f", grad_fn={self._ctx.name}"
        body = np.array2string(np.asarray(self.data), separator=", ", threshold=20, precision=4)
        return f"Tensor({body}, dtype={self.dtype}{extra})"

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __bool__(self):
        return bool(self.data)

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __setitem__(self, index, value):
        raise TypeError("Tensor does not support in-place assignment (it would corrupt values saved "
                        "for backward); build a new tensor, or assign into .data outside the graph")

    # --- backward ----------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad`` that requires grad.

        ``grad`` is the upstream gradient (required unless self has one element). The saved
        arrays of the graph are freed afterwards unless ``retain_graph=True``.
        """
        _backpropagate(self, grad, retain_graph, "backward", _accumulate,
                       lambda t: t._ctx is None or t._retains_grad)

    # --- operators: defined once below, from the primitives in ops/ ---------------------
    def _lift(self, other):
        """A Python number or array as a constant tensor of this tensor's dtype."""
        if isinstance(other, Tensor):
            return other
        if isinstance(other, (int, float, bool)) and is_floating(self.dtype):
            return Tensor._wrap(array_module(self.data).asarray(other, dtype=self.dtype), False)
        return Tensor(other)

    def __add__(self, other):
        return _ops.Add.apply(self, self._lift(other))

    def __radd__(self, other):
        return _ops.Add.apply(self._lift(other), self)

    def __sub__(self, other):
        return _ops.Sub.apply(self, self._lift(other))

    def __rsub__(self, other):
        return _ops.Sub.apply(self._lift(other), self)

    def __mul__(self, other):
        return _ops.Mul.apply(self, self._lift(other))

    def __rmul__(self, other):
        return _ops.Mul.apply(self._lift(other), self)

    def __truediv__(self, other):
        return _ops.Div.apply(self, self._lift(other))

    def __rtruediv__(self, other):
        return _ops.Div.apply(self._lift(other), self)

    def __neg__(self):
        return _ops.Neg.apply(self)

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor) or not np.isscalar(exponent):
            raise TypeError(f"pow: the exponent must be a Python number; got {type(exponent).__name__}")
        return _ops.Pow.apply(self, exponent=float(exponent))

    def __rpow__(self, base):
        if isinstance(base, Tensor) or not np.isscalar(base) or base <= 0:
            raise TypeError(f"pow: a number raised to a tensor needs a positive Python number as base; got {base!r}")
        return (self * float(np.log(base))).exp()

    def __matmul__(self, other):
        return _ops.Matmul.apply(self, self._lift(other))

    def __rmatmul__(self, other):
        return _ops.Matmul.apply(self._lift(other), self)

    def _compare(self, other, fn):
        other = other.data if isinstance(other, Tensor) else other
        return Tensor._wrap(fn(self.data, other), False)

    def __lt__(self, other):
        return self._compare(other, lambda a, b: a < b)

    def __le__(self, other):
        return self._compare(other, lambda a, b: a <= b)

    def __gt__(self, other):
        return self._compare(other, lambda a, b: a > b)

    def __ge__(self, other):
        return self._compare(other, lambda a, b: a >= b)

    def __eq__(self, other):
        return self._compare(other, lambda a, b: a == b)

    def __ne__(self, other):
        return self._compare(other, lambda a, b: a != b)

    def __getitem__(self, index):
        return _ops.GetItem.apply(self, index=_unwrap_index(index))

    # --- methods ---------------------------------------------------------------------------
    def sum(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        axis, keepdims = _torch_names(axis, keepdims, dim, keepdim)
        return _ops.Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        axis, keepdims = _torch_names(axis, keepdims, dim, keepdim)
        total = self.sum(axis=axis, keepdims=keepdims)
        return total * (total.numel() / max(self.numel(), 1))

    def max(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        axis, keepdims = _torch_names(axis, keepdims, dim, keepdim)
        return _ops.Max.apply(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return _ops.Reshape.apply(self, shape=tuple(int(s) for s in shape))

    view = reshape

    def permute(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return _ops.Transpose.apply(self, axes=tuple(int(a) for a in axes))

    def transpose(self, dim0=None, dim1=None):
        """``transpose(d0, d1)`` swaps two axes (PyTorch); ``transpose()`` reverses them all."""
        if dim0 is None and dim1 is None:
            return self.T
        if dim0 is None or dim1 is None:
            raise TypeError("transpose: pass two axes to swap (use permute(*axes) for a full order)")
        axes = list(range(self.ndim))
        try:
            axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        except IndexError:
            raise ValueError(f"transpose: axes ({dim0}, {dim1}) out of range for a {self.ndim}-d tensor") from None
        return _ops.Transpose.apply(self, axes=tuple(axes))

    def flatten(self, start=1):
        start = start + self.ndim if start < 0 else start
        return self.reshape(*self.shape[:start], -1)

    def astype(self, dtype):
        """A copy in another dtype; the gradient is cast back."""
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        if not (is_floating(dtype) and is_floating(self.dtype)):
            return Tensor._wrap(self.data.astype(dtype), False)  # not differentiable: no graph
        return _ops.Cast.apply(self, dtype=dtype)

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)

    def exp(self):
        return _ops.Exp.apply(self)

    def log(self):
        return _ops.Log.apply(self)

    def relu(self):
        return _ops.Relu.apply(self)

    def sigmoid(self):
        return _ops.Sigmoid.apply(self)

    def tanh(self):
        return _ops.Tanh.apply(self)

    def sqrt(self):
        return self ** 0.5

    def maximum(self, other):
        return _ops.Maximum.apply(self, self._lift(other))

    def log_softmax(self, axis=-1, *, dim=None):
        return _ops.LogSoftmax.apply(self, axis=axis if dim is None else dim)

    def softmax(self, axis=-1, *, dim=None):
        return self.log_softmax(axis=axis if dim is None else dim).exp()


def _torch_names(axis, keepdims, dim, keepdim):
    """Accept PyTorch's ``dim``/``keepdim`` spellings beside numpy's ``axis``/``keepdims``."""
    if dim is not None:
        axis = dim
    if keepdim is not None:
        keepdims = keepdim
    return axis, bool(keepdims)


def _unwrap_index(index):
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    if isinstance(index, list):
        return np.asarray(index)
    return index


def _topological_order(root):
    """Tensors that need a gradient, inputs before outputs; an explicit stack, no recursion."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        t, done = stack.pop()
        if done:
            order.append(t)
            continue
        if id(t) in visited:
            continue
        visited.add(id(t))
        stack.append((t, True))
        if t._ctx is not None:
            for p in t._ctx.parents:
                if p.requires_grad and id(p) not in visited:
                    stack.append((p, False))
    return order


def _backpropagate(root, grad, retain_graph, caller, deliver, wants):
    """The reverse sweep: push ``grad`` from ``root`` through the graph in reverse topological
    order, calling ``deliver(tensor, total_gradient)`` for every tensor with ``wants(tensor)``.
    Frees the saved arrays unless ``retain_graph``."""
    if not root.requires_grad:
        raise RuntimeError(f"{caller}: this tensor does not require grad and has no graph "
                           "(did you create it under no_grad(), or forget requires_grad=True?)")
    xp = array_module(root.data)
    if grad is None:
        if root.data.size != 1:
            raise RuntimeError(f"{caller}: grad can be implied only for a one-element output; this "
                               f"output has shape {root.shape}, so pass grad= of that shape")
        grad = xp.ones_like(root.data)
    else:
        grad = grad.data if isinstance(grad, Tensor) else grad
        grad = xp.asarray(grad, dtype=root.dtype)
        if grad.shape != root.shape:
            raise ValueError(f"{caller}: grad has shape {grad.shape}, expected the output's shape {root.shape}")
    grads = {id(root): grad}
    for t in reversed(_topological_order(root)):
        g = grads.pop(id(t), None)
        if g is None:
            continue
        op = t._ctx
        if wants(t):
            deliver(t, g)
        if op is None:
            continue
        if op.freed:
            raise RuntimeError(
                f"{caller}: the graph through '{op.name}' was already freed by an earlier backward(); "
                f"pass retain_graph=True to the first backward() to go through it twice")
        t0 = None if _profiler is None else time.perf_counter()
        in_grads = op.backward(g)
        if not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        for i, (parent, need, pg) in enumerate(zip(op.parents, op.needs_input_grad, in_grads)):
            if not need or pg is None:
                continue
            pg = _fit_grad(op, i, parent, pg)
            key = id(parent)
            prev = grads.get(key)
            grads[key] = pg if prev is None else prev + pg
        if t0 is not None:  # the VJP plus summing its gradients to shape and into place
            _profiler.record(op.name, "backward", time.perf_counter() - t0)
        if not retain_graph:
            op.release()


def grad(output, inputs, grad_output=None, retain_graph=False):
    """The gradients of ``output`` with respect to each of ``inputs`` (like
    ``torch.autograd.grad``), returned as arrays in the order given, ``None`` for an input
    the output does not depend on. Nothing is written to any ``.grad``, so several threads
    can differentiate graphs that share parameters at the same time.

    ``inputs`` may be leaves or intermediate tensors of the graph; ``grad_output`` is the
    upstream gradient (implied for a one-element output)."""
    inputs = list(inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"grad: inputs must be Tensors; input {i} is a {type(t).__name__}")
    if not isinstance(output, Tensor):
        raise TypeError(f"grad: output must be a Tensor; got {type(output).__name__}")
    wanted, found = {id(t) for t in inputs}, {}
    _backpropagate(output, grad_output, retain_graph, "grad", lambda t, g: found.__setitem__(id(t), g),
                   lambda t: id(t) in wanted)
    # copies: a VJP may hand one array to several inputs, and an input may be listed twice
    return [None if id(t) not in found else array_module(found[id(t)]).array(found[id(t)], order="C", copy=True)
            for t in inputs]


def _fit_grad(op, i, parent, grad):
    """Sum a VJP's result back to its input's shape and check its dtype (the engine's contract)."""
    if grad.shape != parent.shape:
        try:
            grad = sum_to_shape(grad, parent.shape)
        except ValueError:
            raise RuntimeError(f"{op.name}: VJP for input {i} returned shape {grad.shape}, which does not "
                               f"reduce to the input's shape {parent.shape} (a bug in the op's backward)") from None
    if grad.dtype != parent.dtype:
        raise RuntimeError(f"{op.name}: VJP for input {i} returned dtype {grad.dtype} for an input of dtype "
                           f"{parent.dtype} (a bug in the op's backward: it must not change dtypes)")
    return grad


def _accumulate(t, g):
    if t.grad is None:
        t.grad = array_module(g).array(g, dtype=t.dtype, order="C", copy=True)
    else:
        t.grad += g


# ------------------------------------------------------------------------- constructors


def _shape_arg(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return tuple(int(s) for s in shape)


def zeros(*shape, dtype=np.float32, requires_grad=False):
    return Tensor(np.zeros(_shape_arg(shape), dtype=dtype), requires_grad=requires_grad)


def ones(*shape, dtype=np.float32, requires_grad=False):
    return Tensor(np.ones(_shape_arg(shape), dtype=dtype), requires_grad=requires_grad)


def randn(*shape, dtype=np.float32, requires_grad=False, seed=None, rng=None):
    """Standard-normal samples from ``rng`` (a numpy Generator) or a new one seeded by ``seed``."""
    if rng is not None and seed is not None:
        raise ValueError("randn: pass either seed or rng, not both")
    rng = np.random.default_rng(seed) if rng is None else rng
    return Tensor(rng.standard_normal(_shape_arg(shape), dtype=np.dtype(dtype)) if np.dtype(dtype) in (
        np.float32, np.float64) else rng.standard_normal(_shape_arg(shape)).astype(dtype),
        requires_grad=requires_grad)


from . import ops as _ops  # noqa: E402  (ops import Op and Tensor from this module)
