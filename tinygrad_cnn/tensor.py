"""Tensor, the graph record and backward.

A ``Tensor`` wraps an ndarray. Applying a primitive ``Op`` to tensors that require grad
creates one ``Op`` instance: the graph node. It keeps its ``parents`` (input tensors), its
``params`` (stride, axis, ...) and whatever arrays its VJP needs (``saved``). The output
tensor points back at it through ``_ctx``. ``backward()`` walks these records in reverse
topological order, with an explicit stack (no recursion limit), calls each node's VJP, sums
each gradient back to its input's shape (broadcasting), and accumulates into leaves' ``.grad``.
"""
from __future__ import annotations

import functools
import inspect
import operator
import threading
import time
import warnings
import weakref
from collections import namedtuple
from contextlib import contextmanager

import numpy as np

from .xp import array_module, is_array, is_floating

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
        mode = self.__class__
        if inspect.isgeneratorfunction(fn):  # the mode covers the body, between every resumption
            @functools.wraps(fn)
            def generator(*args, **kwargs):
                gen = fn(*args, **kwargs)
                with mode():
                    value = next(gen, _DONE)
                while value is not _DONE:
                    try:
                        sent = yield value
                    except GeneratorExit:
                        with mode():
                            gen.close()
                        raise
                    except BaseException as e:
                        with mode():
                            value = _resume(gen.throw, e)
                    else:
                        with mode():
                            value = _resume(gen.send, sent)
            return generator

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with mode():
                return fn(*args, **kwargs)

        return wrapper


_DONE = object()


def _resume(step, value):
    try:
        return step(value)
    except StopIteration:
        return _DONE


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
    """A primitive: its forward on arrays and its VJP in Tensor code, side by side.

    Subclasses set ``name`` and write

    - ``forward(self, *arrays, **params)``: the result as an array (or a tuple of arrays for
      an op with several outputs), usually one call into ``tinygrad_cnn.kernels``;
    - ``backward(self, *grads)``: one gradient per input, as Tensors built from registered
      primitives (``None`` where an input needs none), given one gradient Tensor per output.

    A VJP reads the op's inputs as ``self.parents`` and its output as ``self.output``
    (Tensors, so the VJP is itself differentiable), its keyword arguments as ``self.params``,
    and whatever else it needs from ``self.saved``: arrays that are not functions of the
    inputs in any differentiable sense (the winners of a max, a mask), kept through
    ``self.save(...)`` only while recording. VJPs may return gradients of a broadcast shape:
    the engine sums them back to the input's shape. One instance is one node of the graph.

    ``reads`` says which arrays the VJP reads the values of: ``"inputs"``, ``"output"``, both
    (the default) or neither (``()``: a VJP that needs only shapes and parameters, as add's
    or reshape's). The engine keeps exactly those read-only while the node is live, so a
    declaration that is too small would let an in-place write change a gradient: the
    registry test overwrites every undeclared array and checks that no gradient moves.
    """

    name = "op"
    reads = ("inputs", "output")

    __slots__ = ("params", "parents", "needs_input_grad", "saved", "scope", "freed", "_record",
                 "_outputs", "_versions", "__dict__", "__weakref__")

    @classmethod
    def apply(cls, *inputs, **params):
        """Run the op on tensors, recording a graph node when a gradient may be needed."""
        tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in inputs]
        arrays = [t.data for t in tensors]
        if len(arrays) > 1:
            _check_same_dtype(cls.name, arrays)
        op = cls.__new__(cls)
        op.params = params
        op.saved = ()
        op.freed = False
        op._versions = None
        if getattr(_local, "grad_enabled", True):
            needs = tuple([t.requires_grad for t in tensors])
            record = True in needs
        else:  # inside a first-order VJP, or inference: the common case needs nothing more
            needs, record = (), False
        op.needs_input_grad = needs
        op._record = record
        if _profiler is None:
            data = op.forward(*arrays, **params)
        else:
            t0 = time.perf_counter()
            data = op.forward(*arrays, **params)
            _profiler.record(cls.name, "forward", time.perf_counter() - t0)
        if type(data) is tuple:
            outs = tuple(Tensor._wrap(d, record) for d in data)
            op.out_meta = tuple((d.shape, d.dtype) for d in data)
        else:
            if isinstance(data, np.generic):  # numpy reductions to a scalar: keep an array
                data = np.asarray(data)
            out = Tensor._wrap(data, record)
            if not record:
                return out
            outs = (out,)
        if record:
            op.parents = tuple(tensors)
            op.scope = current_scope()
            op._outputs = tuple([weakref.ref(o) for o in outs])  # weak: an output owns its node
            for o in outs:
                o._ctx = op
            _locks.lock(op, outs)
        return outs if type(data) is tuple else outs[0]

    @property
    def output(self):
        """The output Tensor (of a one-output op), for VJPs such as exp's ``g * out``."""
        out = self._outputs[0]()
        if out is None:  # pragma: no cover - backward reaches a node only through a live output
            raise RuntimeError(f"{self.name}: its output no longer exists")
        return out

    def save(self, *arrays):
        """Keep ``arrays`` for the VJP (nothing is kept when no gradient is recorded)."""
        if self._record:
            self.saved = arrays

    def release(self):
        """Drop the saved arrays and unlock the inputs; a later backward through this node raises."""
        self.saved = None
        self.freed = True
        _locks.unlock(self)

    def label(self) -> str:
        """What a graph drawing prints under the op's name: its key arguments, compactly.
        Ops override this where a plain ``key=value`` list would be long or cryptic."""
        return " ".join(f"{k}={_short(v)}" for k, v in self.params.items())

    def forward(self, *arrays, **params):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, *grads):  # pragma: no cover - abstract
        raise NotImplementedError

    def __del__(self):
        if getattr(self, "_versions", None):  # recorded, not released: a graph dropped without backward
            _locks.unlock(self, blocking=False)  # its arrays become writable again

    def __repr__(self):  # arrays among the parameters (a kept slope) as dtype[shape], not their values
        args = ", ".join(f"{k}={_short(v) if hasattr(v, 'shape') else repr(v)}" for k, v in self.params.items())
        return f"{self.name}({args})"


def _short(v) -> str:
    """A parameter value for a label: arrays as dtype[shape], floats without noise."""
    if isinstance(v, float):
        return f"{v:g}"
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        return f"{np.dtype(v.dtype).name}[{'x'.join(str(n) for n in v.shape)}]"
    if isinstance(v, (tuple, list)):
        return "(" + ",".join(_short(x) for x in v) + ")"
    if isinstance(v, (np.dtype, type)):
        try:
            return np.dtype(v).name
        except TypeError:
            return str(v)
    return str(v)


class _Locks:
    """Read-only locks on the arrays a live graph will read again in backward.

    numpy shares memory freely (``Tensor(a)`` keeps ``a``; ``detach()`` and ``.data`` hand out
    the same array), so writing into an array that a recorded op's VJP reads would silently
    change the gradient. While a node is recorded and not yet released, its inputs' and
    outputs' arrays are marked non-writeable (counted per array; the last release, by
    backward or by the node being freed, lifts it). A write through numpy then fails at once
    (``ValueError: assignment destination is read-only``). The framework's own in-place
    writes (an optimizer's step) go through ``writing(array, who)``, which lets the write
    happen and bumps the array's version; backward then refuses, naming the op, to run a VJP
    that recorded an older version (PyTorch's rule for in-place modification)."""

    def __init__(self):
        self._held = {}  # id(array) -> [array, holders, version, last writer]
        self._stuck = []  # released views whose base is still locked
        self._orphans = []  # holds of nodes freed while the mutex was taken (see unlock)
        self._mutex = threading.Lock()

    def lock(self, op, outputs):
        reads = op.reads
        if not reads:  # the VJP reads no array of this node: nothing to protect
            op._versions = None
            return
        # (slot, array): inputs are slots 0..n-1, the output(s) slot n; only what the VJP reads
        arrays = [(k, t.data) for k, t in enumerate(op.parents)] if "inputs" in reads else []
        if "output" in reads:
            arrays.extend((len(op.parents), o.data) for o in outputs)
        held = []  # (slot, entry, version at lock time)
        with self._mutex:
            for k, a in arrays:
                base = getattr(a, "base", None)
                # a view is held with the array it views: a write through the base (a
                # parameter's own array, under a reshaped or transposed view) is refused too
                for b in (a,) if base is None else (a, base):
                    entry = self._held.get(id(b))
                    if entry is not None and entry[0] is b:
                        entry[1] += 1
                    elif isinstance(b, np.ndarray) and b.flags.writeable:
                        b.flags.writeable = False
                        entry = self._held[id(b)] = [b, 1, 0, None]
                    else:  # read-only already (a broadcast view, a lifted constant): nothing can change it
                        continue
                    held.append((k, entry, entry[2]))
            if self._orphans:
                self._release(())
        op._versions = held

    def unlock(self, op, blocking=True):
        versions = getattr(op, "_versions", None)
        if not versions:
            return
        op._versions = None
        # Op.__del__ can run inside lock() or unlock() on this very thread (the garbage
        # collector runs at any allocation), so it must not wait for the mutex: its arrays are
        # then released by the next call that holds it.
        if not self._mutex.acquire(blocking):
            self._orphans.append(versions)
            return
        try:
            self._release(versions)
        finally:
            self._mutex.release()

    def _release(self, versions):
        """Drop one hold on each array of ``versions`` (and of any orphaned node); make the
        arrays nobody holds any more writable. Called with the mutex held."""
        while self._orphans:
            versions = list(versions) + list(self._orphans.pop())
        for _, entry, _ in versions:
            entry[1] -= 1
            if entry[1] == 0 and self._held.get(id(entry[0])) is entry:
                del self._held[id(entry[0])]
                self._stuck.append(entry[0])
        # a view can become writable only once the array it views is: retry until none is left
        # that can be released (views whose base another live node still holds wait for it)
        while self._stuck:
            waiting = []
            for a in self._stuck:
                try:
                    a.flags.writeable = True
                except ValueError:
                    waiting.append(a)
            if len(waiting) == len(self._stuck):
                break
            self._stuck = waiting

    def check(self, op, caller):
        """Raise if an array this node recorded was modified in place since (see ``writing``)."""
        for k, entry, version in op._versions or ():
            if entry[2] != version:
                what = f"input {k}" if k < len(op.parents) else "output"
                raise RuntimeError(
                    f"{caller}: an array needed for gradient computation was modified in place: {what} "
                    f"of '{op.name}' (shape {tuple(entry[0].shape)}) was written by {entry[3]} after the forward "
                    f"pass recorded it. Call backward() before modifying it (e.g. before optimizer.step()), "
                    f"or recompute the forward pass afterwards")

    @contextmanager
    def writing(self, array, who):
        """Let the framework write into ``array`` even while a graph holds it, marking the
        graph's nodes that read it as stale (their backward will raise, naming ``who``)."""
        with self._mutex:
            if self._orphans:
                self._release(())
            entry = self._held.get(id(array))
            if entry is None or entry[0] is not array:
                entry = None
            else:
                entry[2] += 1
                entry[3] = who
                array.flags.writeable = True
        try:
            yield array
        finally:
            if entry is not None:
                with self._mutex:
                    if self._held.get(id(array)) is entry:
                        array.flags.writeable = False


_locks = _Locks()
writing = _locks.writing


def _check_same_dtype(name, arrays):
    first = arrays[0].dtype
    for a in arrays[1:]:
        if a.dtype != first:
            got = ", ".join(str(x.dtype) for x in arrays)
            raise TypeError(
                f"{name}: inputs have different dtypes ({got}); ops never convert "
                f"silently, so cast one first, e.g. x.astype({str(first)!r})")


def reduced_axes(shape, target):
    """The axes to sum a gradient of ``shape`` over to get ``target`` (broadcasting's VJP), and
    how many leading axes to drop; raises ValueError where ``target`` does not broadcast to it."""
    extra = len(shape) - len(target)
    if extra < 0 or any(t not in (1, s) for s, t in zip(shape[extra:], target)):
        raise ValueError(f"cannot sum gradient of shape {tuple(shape)} to shape {tuple(target)}")
    return tuple(range(extra)) + tuple(extra + i for i, n in enumerate(target) if n == 1 and shape[extra + i] != 1)


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

    __slots__ = ("data", "_grad", "requires_grad", "_ctx", "_retains_grad", "name", "__weakref__")
    __array_ufunc__ = None  # make `ndarray + Tensor` call Tensor.__radd__
    __hash__ = object.__hash__  # __eq__ is elementwise; hash by identity as PyTorch does

    def __init__(self, data, requires_grad=False, dtype=None, name=None):
        self.data = _to_array(data, dtype)
        if requires_grad and not is_floating(self.data.dtype):
            raise TypeError(f"Tensor: only floating-point tensors can require grad; got dtype {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self._grad = None
        self._ctx = None
        self._retains_grad = False
        self.name = name

    @classmethod
    def _wrap(cls, data, requires_grad):
        t = cls.__new__(Tensor)
        t.data = data
        t.requires_grad = requires_grad
        t._grad = None
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
    def grad(self):
        """The accumulated gradient: a Tensor of this tensor's shape and dtype, or None."""
        return self._grad

    @grad.setter
    def grad(self, value):
        if value is not None:
            if not isinstance(value, Tensor):
                raise TypeError(f"grad: assigned a {type(value).__name__}; a gradient is a Tensor (or None), "
                                f"e.g. Tensor(array)")
            if value.shape != self.shape or value.dtype != self.dtype:
                raise ValueError(f"grad: assigned a gradient of shape {value.shape} and dtype {value.dtype} to a "
                                 f"tensor of shape {self.shape} and dtype {self.dtype}; they must match")
        self._grad = value

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

    def __array__(self, dtype=None, copy=None):
        """numpy sees the data (``np.asarray(t)``, ``np.testing`` on ``t.grad``)."""
        data = np.asarray(self.data) if isinstance(self.data, np.generic) else self.data
        return data if dtype is None else data.astype(dtype, copy=False)

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
    def backward(self, grad=None, retain_graph=None, create_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad`` that requires grad.

        ``grad`` is the upstream gradient (required unless self has one element). With
        ``create_graph=True`` the gradients are recorded as a graph of their own, so ``.grad``
        can be differentiated again; otherwise backward records nothing. The graph is freed
        afterwards unless ``retain_graph`` (which defaults to ``create_graph``) is true.
        """
        retain_graph = create_graph if retain_graph is None else retain_graph
        targets = {}
        _backpropagate([self], [grad], retain_graph, create_graph, "backward",
                       lambda t: t._ctx is None or t._retains_grad, targets)
        for t, g in targets.values():
            _accumulate(t, g, create_graph)

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
        """``x ** p``: a number ``p`` is the ``pow`` primitive; a tensor or array exponent (integer
        ones are converted to this tensor's dtype) is ``pow_tensor``, broadcast as numpy's."""
        if isinstance(exponent, Tensor) or is_array(exponent):
            y = self._lift(exponent)
            if not is_floating(y.dtype) and is_floating(self.dtype):
                y = Tensor._wrap(y.data.astype(self.dtype), False)  # an integer exponent: exact in any float
            return _ops.PowTensor.apply(self, y)
        if not np.isscalar(exponent) or isinstance(exponent, (str, bytes)):
            raise TypeError(f"pow: the exponent must be a number or a tensor; got {type(exponent).__name__}")
        return _ops.Pow.apply(self, exponent=float(exponent))

    def pow(self, exponent):
        return self ** exponent

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
        """The mean over ``axis``; NaN over no elements, as numpy and PyTorch give."""
        axis, keepdims = _torch_names(axis, keepdims, dim, keepdim)
        total = self.sum(axis=axis, keepdims=keepdims)
        count = self.numel() // max(total.numel(), 1) if total.numel() else 0
        return total * (1.0 / count if count else float("nan"))

    def sum_to_shape(self, shape):
        """Sum over broadcast axes down to ``shape`` (the VJP of broadcasting to this shape)."""
        shape = tuple(shape)
        if self.shape == shape:
            return self
        try:
            axes = reduced_axes(self.shape, shape)
        except ValueError:
            raise ValueError(f"sum_to_shape: a tensor of shape {self.shape} does not reduce to shape {shape} "
                             f"(each axis of the target must equal the tensor's or be 1)") from None
        return self.sum(axis=axes, keepdims=True).reshape(shape) if axes else self.reshape(shape)

    def expand(self, *shape):
        """A broadcast view to ``shape`` (PyTorch's ``expand``, numpy's ``broadcast_to``); ``-1``
        keeps that axis's size, and new axes may be added on the left."""
        shape = _shape_arg(shape, "expand", allow_minus_one=True)
        extra = len(shape) - self.ndim
        if extra < 0:
            raise ValueError(f"expand: the target {shape} has fewer axes than the tensor's shape {self.shape}")
        if any(n == -1 for n in shape[:extra]):
            raise ValueError(f"expand: -1 in {shape} is not allowed for a new leading axis (the tensor has "
                             f"{self.ndim} axes; -1 keeps the size of an existing one)")
        shape = tuple(self.shape[i - extra] if n == -1 else n for i, n in enumerate(shape))
        return _ops.Expand.apply(self, shape=shape)

    def expand_as(self, other):
        return self.expand(other.shape)

    broadcast_to = expand

    def max(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        """The maximum, by PyTorch's rule when ``dim`` is given (``x.max(1)``, ``x.max(dim=1)``,
        ``x.max(1, True)``): a named tuple ``(values, indices)`` along that one axis, as
        ``torch.max(x, dim)``, the index the first maximum's (the first NaN's, if any) and the
        values' gradient going to that element alone. With numpy's ``axis=`` (one axis, a
        tuple, or None), or no axis at all: the values only, as numpy's ``max`` and PyTorch's
        ``amax``, tied maxima sharing the gradient equally. ``x.max(other)`` with a tensor is
        ``x.maximum(other)``, as PyTorch's."""
        return self._extreme("max", dim, keepdim, axis, keepdims)

    def reshape(self, *shape):
        return _ops.Reshape.apply(self, shape=_shape_arg(shape, "reshape", allow_minus_one=True))

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

    def flatten(self, start_dim=0, end_dim=-1):
        """Axes ``start_dim`` to ``end_dim`` (inclusive) merged into one, as PyTorch's (a 0-d
        tensor becomes shape (1,))."""
        if self.ndim == 0:
            for d in (start_dim, end_dim):
                _axis("flatten", d, 1)
            return self.reshape(1)
        start, end = _axis("flatten", start_dim, self.ndim), _axis("flatten", end_dim, self.ndim)
        if start > end:
            raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for a "
                             f"{self.ndim}-d tensor")
        merged = 1
        for n in self.shape[start:end + 1]:
            merged *= n
        return self.reshape(*self.shape[:start], merged, *self.shape[end + 1:])

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


    def relu_mask(self, where):
        """This gradient kept where ``where`` (an array) is positive, zero elsewhere: ReLU's VJP."""
        return _ops.ReluBackward.apply(self, where=where)

    def maximum(self, other):
        return _ops.Maximum.apply(self, self._lift(other))

    def log_softmax(self, axis=-1, *, dim=None):
        return _ops.LogSoftmax.apply(self, axis=axis if dim is None else dim)

    def softmax(self, axis=-1, *, dim=None):
        return self.log_softmax(axis=axis if dim is None else dim).exp()

    # --- more math: composites of the primitives, with PyTorch's names and gradients --------
    def _constant(self, array):
        """An array as a constant tensor of this tensor's dtype (a mask, a clipped value)."""
        return Tensor._wrap(array_module(self.data).asarray(array, dtype=self.dtype), False)

    def sqrt(self):
        return self ** 0.5

    def rsqrt(self):
        return self ** -0.5

    def abs(self):
        """|x|; its gradient is sign(x), 0 at 0 (as PyTorch)."""
        return self * self._constant(array_module(self.data).sign(self.data))

    __abs__ = abs

    def erf(self):
        return _ops.Erf.apply(self)

    def log1p(self):
        return _ops.Log1p.apply(self)

    def expm1(self):
        return _ops.Expm1.apply(self)

    def minimum(self, other):
        """Elementwise min of two tensors; on ties each side gets half the gradient (as maximum)."""
        return -((-self).maximum(-self._lift(other)))

    def where(self, condition, other):
        """``self`` where ``condition`` holds, ``other`` elsewhere (PyTorch's ``x.where(c, y)``)."""
        return where(condition, self, other)

    def clamp(self, min=None, max=None):
        """Limit to ``[min, max]`` (numbers or tensors, either may be None; a ``min`` above
        ``max`` gives ``max``, as PyTorch). Gradients as PyTorch's: ``x`` gets its gradient
        where ``min <= x <= max``, a tensor ``min`` where it is the result (``x < min < max``),
        a tensor ``max`` where it is (``x > max``, or ``max < min``)."""
        if min is None and max is None:
            raise ValueError("clamp: pass min, max or both")
        xp = array_module(self.data)
        lo = None if min is None else (min.data if isinstance(min, Tensor) else min)
        hi = None if max is None else (max.data if isinstance(max, Tensor) else max)
        for name, bound in (("min", min), ("max", max)):
            if isinstance(bound, Tensor) and bound.dtype != self.dtype:
                raise TypeError(f"clamp: {name} has dtype {bound.dtype} but the input {self.dtype}; "
                                f"cast one first, e.g. {name}.astype({str(self.dtype)!r})")
        x = self.data
        value = x if lo is None else xp.maximum(x, lo)
        value = value if hi is None else xp.minimum(value, hi)
        inside = xp.ones(np.shape(value), dtype=bool)
        if lo is not None:
            inside = inside & (x >= lo)
        if hi is not None:
            inside = inside & (x <= hi)
        out = where(inside, self, self._constant(value))
        if isinstance(min, Tensor) and min.requires_grad:
            out = where((x < lo) & (lo < hi) if hi is not None else x < lo, min, out)
        if isinstance(max, Tensor) and max.requires_grad:
            out = where((x > hi) | (hi < lo) if lo is not None else x > hi, max, out)
        return out

    clip = clamp

    def min(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        """The minimum, as ``max``: ``(values, indices)`` with ``dim`` (``torch.min(x, dim)``),
        the values only with ``axis=`` or no axis (numpy's ``min``, PyTorch's ``amin``);
        ``x.min(other)`` with a tensor is ``x.minimum(other)``."""
        return self._extreme("min", dim, keepdim, axis, keepdims)

    def amax(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        """The maximum values over ``dim`` (one axis, a tuple, or None for all), as
        ``torch.amax``: values only, tied maxima sharing the gradient equally."""
        return self._extreme("max", None, keepdim, _one_of("amax", dim, axis), keepdims)

    def amin(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        """The minimum values over ``dim``, as ``torch.amin`` (see ``amax``)."""
        return self._extreme("min", None, keepdim, _one_of("amin", dim, axis), keepdims)

    def _extreme(self, name, dim, keepdim, axis, keepdims):
        """``max``/``min``: PyTorch's (values, indices) along ``dim``, numpy's values over ``axis``."""
        if isinstance(dim, Tensor):  # torch.max(x, other): the elementwise maximum
            if keepdim or keepdims or axis is not None:
                raise TypeError(f"{name}: with a tensor argument ({name}imum of two tensors) pass no axis or keepdim")
            return self.maximum(dim) if name == "max" else self.minimum(dim)
        if dim is not None and axis is not None:
            raise TypeError(f"{name}: pass dim (PyTorch's {name}(dim): values and indices) or axis (numpy's: the "
                            f"values), not both; got dim={dim!r} and axis={axis!r}")
        keep = bool(keepdim or keepdims)  # PyTorch's spelling or numpy's
        if dim is None:  # the values over axis (None: all of them)
            if self.numel() == 0:
                raise ValueError(f"{name}: cannot reduce an empty tensor of shape {self.shape}")
            if name == "max":
                return _ops.Max.apply(self, axis=axis, keepdims=keep)
            return -_ops.Max.apply(-self, axis=axis, keepdims=keep)
        if isinstance(dim, (tuple, list)):
            raise TypeError(f"{name}: dim={dim!r}: PyTorch's {name}(dim) takes one axis and returns (values, "
                            f"indices); for the values over several axes pass axis={tuple(dim)!r}")
        d = _axis(name, dim, max(self.ndim, 1))
        xp = array_module(self.data)
        if self.ndim == 0:  # a 0-d tensor's only element, at index 0 (PyTorch accepts dim 0 or -1)
            return _EXTREMES[name](self.reshape(()), Tensor._wrap(xp.zeros((), dtype=np.int64), False))
        if self.shape[d] == 0:
            raise ValueError(f"{name}: axis {d} of a tensor of shape {self.shape} is empty: it has no {name}imum")
        picked = getattr(xp, "arg" + name)(self.data, axis=d, keepdims=True)
        index = list(xp.indices(picked.shape, sparse=True))
        index[d] = picked
        values = self[tuple(index)]  # the gradient goes to the picked elements only (PyTorch's rule)
        indices = xp.asarray(picked, dtype=np.int64)
        if not keep:
            shape = self.shape[:d] + self.shape[d + 1:]
            values, indices = values.reshape(shape), indices.reshape(shape)
        return _EXTREMES[name](values, Tensor._wrap(indices, False))

    def argmax(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        """The index of the largest element along ``axis`` (of the flattened tensor when
        None), the first on ties, as an int64 tensor with no gradient."""
        return self._arg("argmax", axis, keepdims, dim, keepdim)

    def argmin(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        """The index of the smallest element along ``axis`` (see ``argmax``)."""
        return self._arg("argmin", axis, keepdims, dim, keepdim)

    def _arg(self, name, axis, keepdims, dim, keepdim):
        axis, keepdims = _torch_names(axis, keepdims, dim, keepdim)
        xp = array_module(self.data)
        if self.numel() == 0:
            raise ValueError(f"{name}: an empty tensor (shape {self.shape}) has no {name[3:]}imum")
        if axis is not None:
            axis = _axis(name, axis, max(self.ndim, 1))
        if self.ndim == 0:
            return Tensor._wrap(xp.zeros((), dtype=np.int64), False)
        out = getattr(xp, name)(self.data, axis=axis, keepdims=keepdims)
        return Tensor._wrap(xp.asarray(out, dtype=np.int64), False)

    def logsumexp(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        """log(sum(exp(x))) over axes, shifted by the maximum so that exp never overflows; its
        gradient is the softmax over those axes."""
        axis, keepdims = _torch_names(axis, keepdims, dim, keepdim)
        axes = _ops.reduce.normalize_axes("logsumexp", axis, self.ndim)
        xp = array_module(self.data)
        if self.numel():
            shift = xp.max(self.data, axis=axes, keepdims=True)
            shift = xp.where(xp.isfinite(shift), shift, 0)  # all -inf (or an inf): no shift
        else:
            shift = xp.zeros(_ops.reduce.kept_shape(self.shape, axes), dtype=self.dtype)
        shift = self._constant(shift)
        with np.errstate(divide="ignore"):  # the log of an empty sum is -inf, as PyTorch's
            out = (self - shift).exp().sum(axis=axes, keepdims=True).log() + shift
        return out if keepdims else out.reshape(tuple(n for i, n in enumerate(self.shape) if i not in axes))

    def var(self, axis=None, unbiased=None, keepdims=False, *, dim=None, keepdim=None, correction=None,
            ddof=None):
        """The variance over axes, divided by ``N - correction``. The default ``correction=1``
        (Bessel's, unbiased) is PyTorch's; numpy's default is ``ddof=0`` (pass ``correction=0``,
        ``unbiased=False`` or ``ddof=0``). With ``N - correction <= 0`` the result is inf (NaN
        where all values are equal), as PyTorch's, with a warning."""
        axis, keepdims = _torch_names(axis, keepdims, dim, keepdim)
        given = [k for k, v in (("unbiased", unbiased), ("correction", correction), ("ddof", ddof))
                 if v is not None]
        if len(given) > 1:
            raise TypeError(f"var: pass one of unbiased, correction and ddof; got {' and '.join(given)}")
        correction = (1 if unbiased is None or unbiased else 0) if correction is None and ddof is None else (
            correction if correction is not None else ddof)
        axes = _ops.reduce.normalize_axes("var", axis, self.ndim)
        n = 1
        for a in axes:
            n *= self.shape[a]
        centered = self - self.mean(axis=axes, keepdims=True)
        squares = (centered * centered).sum(axis=axes, keepdims=keepdims)
        divisor = n - correction
        if divisor > 0:
            return squares * (1.0 / divisor)
        warnings.warn(f"var: {n} values with correction {correction} leave no degrees of freedom; the "
                      f"result is inf or NaN", RuntimeWarning, stacklevel=2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return squares / self._constant(0.0)

    def std(self, axis=None, unbiased=None, keepdims=False, *, dim=None, keepdim=None, correction=None,
            ddof=None):
        """The square root of ``var`` (same arguments). Where it is 0 its gradient is 0, as
        PyTorch's (not the infinite slope of sqrt at 0)."""
        axis, keepdims = _torch_names(axis, keepdims, dim, keepdim)
        v = self.var(axis, unbiased, keepdims, correction=correction, ddof=ddof)
        zero = v.data == 0
        if not zero.any():
            return v.sqrt()
        return where(zero, 0.0, where(zero, 1.0, v).sqrt())

    def flip(self, *dims):
        """Reverse the order of elements along ``dims`` (``x.flip(0)``, ``x.flip(0, 1)`` or
        ``x.flip((0, 1))``, as PyTorch)."""
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        if not dims:
            raise TypeError("flip: pass the axes to reverse, e.g. x.flip(0) or x.flip((0, 1))")
        axes = _ops.reduce.normalize_axes("flip", dims, self.ndim)
        if not axes:
            return self
        return self[tuple(slice(None, None, -1) if i in axes else slice(None) for i in range(self.ndim))]

    def squeeze(self, dim=None, *, axis=None):
        """Drop axes of size 1: all of them, or those of ``dim`` (an int or a tuple) that have
        size 1; others in ``dim`` are left as they are (PyTorch's rule)."""
        dim = axis if dim is None else dim
        if dim is None:
            return self.reshape(tuple(n for n in self.shape if n != 1))
        axes = _ops.reduce.normalize_axes("squeeze", dim, self.ndim)
        return self.reshape(tuple(n for i, n in enumerate(self.shape) if not (i in axes and n == 1)))

    def unsqueeze(self, dim):
        """A new axis of size 1 at position ``dim`` (from -ndim-1 to ndim, as PyTorch)."""
        d = _axis("unsqueeze", dim, self.ndim + 1)
        return self.reshape(*self.shape[:d], 1, *self.shape[d:])

    def split(self, split_size_or_sections, dim=0):
        """Pieces along ``dim``: of ``split_size`` each (the last one smaller), or of the sizes
        listed; a tuple of tensors, as PyTorch's."""
        d = _axis("split", dim, self.ndim) if self.ndim else _axis("split", dim, 0)
        total = self.shape[d]
        if isinstance(split_size_or_sections, (list, tuple)):
            sizes = [operator.index(n) for n in split_size_or_sections]
            if any(n < 0 for n in sizes) or sum(sizes) != total:
                raise ValueError(f"split: sizes {list(sizes)} must be non-negative and add up to {total}, the "
                                 f"size of axis {dim} of a tensor of shape {self.shape}")
        else:
            size = operator.index(split_size_or_sections)
            if size <= 0:
                raise ValueError(f"split: split_size must be positive; got {size}")
            sizes = [min(size, total - start) for start in range(0, total, size)] or [0]
        pieces, start = [], 0
        for n in sizes:
            pieces.append(self[(slice(None),) * d + (slice(start, start + n),)])
            start += n
        return tuple(pieces)

    def chunk(self, chunks, dim=0):
        """``chunks`` pieces of equal size along ``dim`` (the last smaller; fewer when the size
        does not allow that many), as PyTorch's."""
        chunks = operator.index(chunks)
        if chunks <= 0:
            raise ValueError(f"chunk: chunks must be positive; got {chunks}")
        total = self.shape[_axis("chunk", dim, self.ndim)] if self.ndim else 0
        return self.split(max(-(-total // chunks), 1), dim)

    def size(self, dim=None):
        """The shape, or the size of axis ``dim`` (PyTorch's ``x.size(0)``)."""
        return self.shape if dim is None else self.shape[_axis("size", dim, self.ndim)]

    def dim(self):
        """The number of axes (PyTorch's ``x.dim()``, numpy's ``ndim``)."""
        return self.ndim


# What x.max(dim) and x.min(dim) return: PyTorch's torch.return_types.max/min, a tuple
# (values, indices) whose fields are named too.
MaxResult = namedtuple("max", ("values", "indices"))
MinResult = namedtuple("min", ("values", "indices"))
_EXTREMES = {"max": MaxResult, "min": MinResult}


def _torch_names(axis, keepdims, dim, keepdim):
    """Accept PyTorch's ``dim``/``keepdim`` spellings beside numpy's ``axis``/``keepdims``."""
    if dim is not None:
        axis = dim
    if keepdim is not None:
        keepdims = keepdim
    return axis, bool(keepdims)


def _axis(name, axis, ndim):
    """One axis in ``[-ndim, ndim)`` as a non-negative int, or an error naming ``name``."""
    try:
        a = operator.index(axis)
    except TypeError:
        raise TypeError(f"{name}: the axis must be an int; got {axis!r}") from None
    if not -ndim <= a < ndim:
        raise ValueError(f"{name}: axis {a} is out of range for {ndim} axes (expected {-ndim} to {ndim - 1})")
    return a % ndim


def where(condition, input, other):
    """``input`` where ``condition`` (a bool tensor or array) holds, ``other`` elsewhere; all
    three broadcast (``torch.where``). Numbers take the other operand's dtype; gradients flow
    to whichever operand was chosen, elementwise."""
    cond = condition.data if isinstance(condition, Tensor) else condition
    cond = cond if is_array(cond) else np.asarray(cond)
    if cond.dtype != bool:
        raise TypeError(f"where: the condition must be a bool tensor or array (e.g. x > 0); got dtype {cond.dtype}")
    if not isinstance(input, Tensor) and not isinstance(other, Tensor):
        input, other = Tensor(input), Tensor(other)
    a = input if isinstance(input, Tensor) else other._lift(input)
    b = other if isinstance(other, Tensor) else input._lift(other)
    return _ops.Where.apply(a, b, condition=cond)


def _one_of(name, dim, axis):
    """``dim`` (PyTorch's name) or ``axis`` (numpy's), not both."""
    if dim is not None and axis is not None:
        raise TypeError(f"{name}: pass dim or axis, not both; got dim={dim!r} and axis={axis!r}")
    return axis if dim is None else (tuple(dim) if isinstance(dim, list) else dim)


def _unwrap_index(index):
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    if isinstance(index, list):
        return np.asarray(index)
    return index


def _backpropagate(roots, grads, retain_graph, create_graph, caller, wanted, found):
    """The reverse sweep: push ``grads`` from ``roots`` through the graph, each node after all
    of its consumers, and put ``(tensor, total gradient)`` into ``found[id(tensor)]`` for every
    tensor with ``wanted(tensor)``. Only nodes on a path to a wanted tensor run their VJP, and
    only for the inputs on such a path. The VJPs record a graph only when ``create_graph``.
    Frees each node that ran unless ``retain_graph``."""
    pending = {}  # id(tensor) -> (tensor, gradient so far)

    def add(t, g):
        prev = pending.get(id(t))
        pending[id(t)] = (t, g if prev is None else prev[1] + g)

    for root, g in zip(roots, grads):
        if not isinstance(root, Tensor):
            raise TypeError(f"{caller}: outputs must be Tensors; got {type(root).__name__}")
        if not root.requires_grad:
            raise RuntimeError(f"{caller}: this tensor does not require grad and has no graph "
                               "(did you create it under no_grad(), or forget requires_grad=True?)")
        add(root, _seed_grad(caller, root, g))
    order = _graph.nodes(roots)
    # which inputs of each node need a gradient in this call: those on a path to a wanted
    # tensor (a node none of whose inputs does is skipped: it is not "useful")
    useful = {}  # id(op) -> its needs_input_grad, narrowed to this call
    for op in order:  # producers first
        needs = tuple([n and ((p._ctx is not None and id(p._ctx) in useful) or wanted(p))
                       for n, p in zip(op.needs_input_grad, op.parents)])
        if True in needs:
            useful[id(op)] = needs
    with (enable_grad() if create_graph else no_grad()):
        for op in reversed(order):
            refs = op._outputs
            if len(refs) == 1:
                out = refs[0]()
                entry = None if out is None else pending.pop(id(out), None)
                if entry is None:
                    continue
                out_grads = (entry[1],)
                if wanted(out):
                    found[id(out)] = entry
            else:
                outs = [r() for r in refs]
                out_grads = [None if o is None else pending.pop(id(o), (None, None))[1] for o in outs]
                for o, g in zip(outs, out_grads):
                    if g is not None and wanted(o):
                        found[id(o)] = (o, g)
                if all(g is None for g in out_grads):
                    continue
                # an output nobody used gets zeros (only multi-output ops see this)
                out_grads = [g if g is not None else Tensor._wrap(_zeros_like_output(op, k), False)
                             for k, g in enumerate(out_grads)]
            needs = useful.get(id(op))
            if needs is None:
                continue
            if op.freed:
                raise RuntimeError(
                    f"{caller}: the graph through '{op.name}' was already freed by an earlier backward(); "
                    f"pass retain_graph=True to the first backward() to go through it twice")
            if op._versions:
                _locks.check(op, caller)
            t0 = None if _profiler is None else time.perf_counter()
            static, op.needs_input_grad = op.needs_input_grad, needs
            try:
                in_grads = op.backward(*out_grads)
            finally:
                op.needs_input_grad = static
            if type(in_grads) is not tuple:
                in_grads = (in_grads,)
            for i, (parent, need, pg) in enumerate(zip(op.parents, needs, in_grads)):
                if pg is None or not need:
                    continue
                if not (type(pg) is Tensor and pg.data.shape == parent.data.shape
                        and pg.data.dtype == parent.data.dtype):  # the common case needs no fitting
                    pg = _fit_grad(op, i, parent, pg)
                prev = pending.get(id(parent))
                pending[id(parent)] = (parent, pg if prev is None else prev[1] + pg)
            if t0 is not None:  # the VJP plus summing its gradients to shape and into place
                _profiler.record(op.name, "backward", time.perf_counter() - t0)
            if not retain_graph:
                op.release()
    for key, (t, g) in pending.items():  # leaves (and roots that are leaves) with their totals
        if wanted(t):
            found[key] = (t, g)


def _seed_grad(caller, root, grad):
    """The upstream gradient of a root as a Tensor of its shape and dtype."""
    xp = array_module(root.data)
    if grad is None:
        if root.data.size != 1:
            raise RuntimeError(f"{caller}: grad can be implied only for a one-element output; this "
                               f"output has shape {root.shape}, so pass grad= of that shape")
        return Tensor._wrap(xp.ones_like(root.data), False)
    if not isinstance(grad, Tensor):
        grad = Tensor._wrap(xp.asarray(grad, dtype=root.dtype), False)
    if grad.shape != root.shape:
        raise ValueError(f"{caller}: grad has shape {grad.shape}, expected the output's shape {root.shape}")
    if grad.dtype != root.dtype:
        grad = grad.astype(root.dtype)
    return grad


def _zeros_like_output(op, k):
    shape, dtype = op.out_meta[k]
    return array_module(op.parents[0].data).zeros(shape, dtype=dtype)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=False,
         *, grad_output=None):
    """The gradients of ``outputs`` with respect to each of ``inputs``, as Tensors in the order
    given (``torch.autograd.grad``). Nothing is written to any ``.grad``, so several threads
    can differentiate graphs that share parameters at the same time.

    ``outputs`` is a Tensor or a sequence of them, ``grad_outputs`` (alias ``grad_output``)
    their upstream gradients (implied for one-element outputs). ``inputs`` may be leaves or
    intermediate tensors. With ``create_graph=True`` the returned gradients carry a graph
    and can be differentiated again (any order). ``retain_graph`` defaults to
    ``create_graph``. An input the outputs do not depend on raises, unless
    ``allow_unused=True``, which returns ``None`` for it."""
    if grad_output is not None:
        if grad_outputs is not None:
            raise TypeError("grad: pass grad_outputs or its alias grad_output, not both")
        grad_outputs = grad_output
    single_in = isinstance(inputs, Tensor)
    inputs = [inputs] if single_in else list(inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"grad: inputs must be Tensors; input {i} is a {type(t).__name__}")
        if not t.requires_grad:
            raise RuntimeError(f"grad: input {i} (shape {t.shape}) does not require grad")
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    if grad_outputs is None or isinstance(grad_outputs, Tensor) or is_array(grad_outputs):
        grad_outputs = [grad_outputs] * len(outputs) if grad_outputs is None else [grad_outputs]
    grad_outputs = list(grad_outputs)
    if len(grad_outputs) != len(outputs):
        raise ValueError(f"grad: {len(outputs)} outputs but {len(grad_outputs)} grad_outputs")
    retain_graph = create_graph if retain_graph is None else retain_graph
    wanted_ids = {id(t) for t in inputs}
    found = {}
    _backpropagate(outputs, grad_outputs, retain_graph, create_graph, "grad",
                   lambda t: id(t) in wanted_ids, found)
    result = []
    for i, t in enumerate(inputs):
        if id(t) not in found:
            if not allow_unused:
                raise RuntimeError(f"grad: input {i} (shape {t.shape}) was not used to compute the outputs; "
                                   f"pass allow_unused=True to get None for it")
            result.append(None)
            continue
        g = found[id(t)][1]
        if not create_graph:  # a private array: a VJP may hand one array to several inputs
            g = Tensor._wrap(array_module(g.data).array(g.data, order="C", copy=True), False)
        result.append(g)
    return result


def _fit_grad(op, i, parent, grad):
    """Sum a VJP's result back to its input's shape and check its type and dtype (the
    engine's contract)."""
    if not isinstance(grad, Tensor):
        raise RuntimeError(f"{op.name}: VJP for input {i} returned a {type(grad).__name__}; a VJP must return "
                           f"Tensors built from primitives (a bug in the op's backward)")
    if grad.shape != parent.shape:
        try:
            reduced_axes(grad.shape, parent.shape)
        except ValueError:
            raise RuntimeError(f"{op.name}: VJP for input {i} returned shape {grad.shape}, which does not "
                               f"reduce to the input's shape {parent.shape} (a bug in the op's backward)") from None
        grad = grad.sum_to_shape(parent.shape)
    if grad.dtype != parent.dtype:
        raise RuntimeError(f"{op.name}: VJP for input {i} returned dtype {grad.dtype} for an input of dtype "
                           f"{parent.dtype} (a bug in the op's backward: it must not change dtypes)")
    return grad


_accumulating = threading.Lock()  # backward() on several threads into the same leaves


def _accumulate(t, g, create_graph=False):
    """Add ``g`` into ``t.grad``: a private copy the first time, in place after that (out of
    place when the gradients carry a graph, or when a graph still reads the old ``.grad``).
    Serialised, so that threads running backward() into shared leaves lose no update."""
    if not isinstance(g, Tensor):
        raise TypeError(f"_accumulate: the gradient must be a Tensor; got {type(g).__name__}")
    with _accumulating:
        if create_graph:
            t.grad = g if t.grad is None else t.grad + g
        elif t.grad is None:
            t.grad = Tensor._wrap(array_module(g.data).array(g.data, dtype=t.dtype, order="C", copy=True), False)
        elif t.grad.requires_grad or not t.grad.data.flags.writeable:
            t.grad = Tensor._wrap(t.grad.data + g.data, False)
        else:
            t.grad.data += g.data


# ------------------------------------------------------------------------- constructors


def _shape_arg(shape, caller="shape", allow_minus_one=False):
    """A shape given as ``f(2, 3)`` or ``f((2, 3))``, as a tuple of ints; floats and negative
    sides are errors, never truncated."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if all(type(s) is int and s >= 0 for s in shape):
        return tuple(shape)
    out = []
    for s in shape:
        try:
            n = operator.index(s)
        except TypeError:
            raise TypeError(f"{caller}: sizes must be integers; got {s!r} in {tuple(shape)}") from None
        if n < 0 and not (allow_minus_one and n == -1):
            raise ValueError(f"{caller}: sizes must be non-negative; got {n} in {tuple(shape)}")
        out.append(int(n))
    return tuple(out)


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


from . import graph as _graph  # noqa: E402
from . import ops as _ops  # noqa: E402  (ops import Op and Tensor from this module)
