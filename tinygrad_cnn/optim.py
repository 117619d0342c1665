"""Optimizers and learning-rate schedules, with PyTorch's semantics and update formulas.

    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = optim.OneCycleLR(opt, max_lr=0.1, total_steps=len(loader) * epochs)
    for x, y in loader:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        sched.step()          # schedules step per batch, after opt.step(), as in PyTorch

Every update runs in place on ``p.data`` with in-place ufuncs (``out=``) on the parameter's
own array module (numpy, or CuPy for CuPy arrays) and in the parameter's dtype: hyper-parameters
are Python floats, so a float32 parameter is updated in float32 and its state buffers are
float32. Intermediates go into two scratch arrays per (array module, dtype) that the optimizer
reuses every step (each as large as the largest parameter), so a step allocates nothing.

``Optimizer.state_dict()`` has PyTorch's layout, with numpy arrays and plain numbers only::

    {"state": {0: {"step": 5, "exp_avg": ndarray, "exp_avg_sq": ndarray}, ...},
     "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), ..., "params": [0, 1]}, ...]}

State is keyed by the parameter's index counted across all groups in order.
``tinygrad_cnn.io.save_state`` writes it (or a scheduler's state) to an ``.npz`` without
pickle; ``load_state_dict`` also accepts numbers stored as 0-d arrays and lists as arrays.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .io import cast_loaded
from .tensor import Tensor, enable_grad, writing
from .xp import array_module, is_array

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "decoupled_sgd_groups",
           "LRScheduler", "LambdaLR", "StepLR", "ConstantLR", "CosineAnnealingLR", "OneCycleLR",
           "clip_grad_norm_"]


# ----------------------------------------------------------------------------- helpers


def _count(owner, name, value, minimum=1):
    """``value`` as a Python int >= ``minimum`` (1 or 0), or a ValueError naming ``owner``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{owner}: {name} must be a {kind} integer; got {value!r}")
    return int(value)


def _real(owner, name, value, lo=None, hi=None, lo_open=False, hi_open=False, finite=True):
    """``value`` as a Python float, or a ValueError/TypeError naming ``owner`` and ``name``.
    NaN is always refused, and so is an infinity unless ``finite`` is False (an infinite
    learning rate or momentum trains on NaN from the first step)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number; got {value!r} ({type(value).__name__})")
    v = float(value)
    if finite and math.isinf(v):
        raise ValueError(f"{owner}: invalid {name} {value!r} (must be finite)")
    bad = math.isnan(v)
    if lo is not None:
        bad |= v <= lo if lo_open else v < lo
    if hi is not None:
        bad |= v >= hi if hi_open else v > hi
    if bad:
        lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        rule = " and ".join(s for s in (lo_s, hi_s) if s) or "a number, not NaN"
        raise ValueError(f"{owner}: invalid {name} {value!r} (must be {rule})")
    return v


def _to_numpy(a):
    """A numpy copy of a numpy or CuPy array."""
    if isinstance(a, np.ndarray):
        return a.copy()
    if hasattr(a, "get"):  # cupy
        return a.get()
    return np.array(a, copy=True)


def _as_number(v):
    """A Python number from a number or a one-element array (what unflattening gives back)."""
    if is_array(v):
        if v.size != 1:
            raise ValueError(f"expected a number, got an array of shape {v.shape}")
        return v.item()
    return v


def _whole(v):
    """A Python int from an integral number (a fraction or a complex number is refused, not truncated)."""
    v = _as_number(v)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v != int(v):
        raise ValueError(f"expected a whole number, got {v!r}")
    return int(v)


def _as_list(v):
    if is_array(v):
        return np.asarray(v).ravel().tolist()
    return list(v)


def _coerce_like(current, value):
    """``value`` (maybe an array from a checkpoint) converted to the type of ``current``."""
    if isinstance(current, bool):
        return bool(_as_number(value))
    if isinstance(current, numbers.Integral):
        return _whole(value)
    if isinstance(current, numbers.Real):
        return float(_as_number(value))
    if isinstance(current, (tuple, list)):
        return type(current)(float(x) for x in _as_list(value))
    return _plain(value)


def _plain(value):
    """A checkpoint value of unknown meaning as a Python number or tuple of numbers."""
    if is_array(value) or isinstance(value, (list, tuple)):
        arr = np.asarray(value if not hasattr(value, "get") else value.get())
        return arr.item() if arr.ndim == 0 else tuple(arr.ravel().tolist())
    return value


def _plain_copy(value):
    """A group's hyper-parameter as plain data for a state dict (tuples stay tuples)."""
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, list):
        return list(value)
    return value


def _sequence(v):
    """A list from a list, tuple, dict {0: .., 1: ..} (unflattened) or array."""
    if isinstance(v, dict):
        try:
            keys = sorted(v, key=int)
        except (TypeError, ValueError):
            raise ValueError(f"expected a list or a dict with integer keys; got keys {list(v)}") from None
        if [int(k) for k in keys] != list(range(len(keys))):
            raise ValueError(f"expected consecutive integer keys 0..{len(keys) - 1}; got {keys}")
        return [v[k] for k in keys]
    if is_array(v):
        return _as_list(v)
    return list(v)


# ----------------------------------------------------------------------------- Optimizer


class Optimizer:
    """Base class: holds ``param_groups`` (list of dicts: ``"params"`` plus hyper-parameters),
    per-parameter ``state`` (a dict keyed by the parameter Tensor), and ``defaults``.

    ``params`` is an iterable of Tensors (e.g. ``model.parameters()``), or of dicts
    ``{"params": [...], "lr": ...}`` whose missing hyper-parameters come from the defaults.
    Subclasses set ``_state_keys`` and write ``_validate(group)`` and ``_update(group)``.
    """

    _state_keys: tuple = ()  # what a parameter's state may hold
    _required_state_keys: tuple = ()  # what a non-empty state must hold

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state: dict = {}
        self.param_groups: list = []
        self._scratch_bufs: dict = {}
        if isinstance(params, Tensor):
            raise TypeError(f"{self._name}: params must be an iterable of Tensors or of dicts, got a "
                            f"single Tensor (wrap it in a list)")
        if isinstance(params, (set, frozenset)):
            raise TypeError(f"{self._name}: params must be an ordered iterable (a list), not a set: "
                            f"a set's order changes between runs, and the state dict relies on it")
        if isinstance(params, dict):
            raise TypeError(f"{self._name}: params must be an iterable of Tensors or of dicts, got a dict "
                            f"(pass model.parameters(), or a list of param-group dicts)")
        try:
            params = list(params)
        except TypeError:
            raise TypeError(f"{self._name}: params must be an iterable of Tensors or of dicts; got "
                            f"{type(params).__name__}") from None
        if not params:
            raise ValueError(f"{self._name}: got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        for group in params:
            self.add_param_group(group)

    @property
    def _name(self):
        return type(self).__name__

    # --- groups ----------------------------------------------------------------------------
    def add_param_group(self, param_group):
        """Add a dict ``{"params": [...], **hyper_parameters}``; defaults fill the rest."""
        if not isinstance(param_group, dict):
            raise TypeError(f"{self._name}: a param group must be a dict; got {type(param_group).__name__} "
                            f"(do not mix Tensors and dicts in params)")
        if "params" not in param_group:
            raise ValueError(f"{self._name}: a param group needs a 'params' entry; got keys {list(param_group)}")
        ps = param_group["params"]
        if isinstance(ps, Tensor):
            ps = [ps]
        elif isinstance(ps, (set, frozenset)):
            raise TypeError(f"{self._name}: a group's params must be ordered (a list), not a set")
        else:
            ps = list(ps)
        n = len(self.param_groups)
        if not ps:
            raise ValueError(f"{self._name}: param group {n} has an empty parameter list")
        for i, p in enumerate(ps):
            if not isinstance(p, Tensor):
                raise TypeError(f"{self._name}: param group {n}, parameter {i} is a {type(p).__name__}, "
                                f"not a Tensor")
            if not np.issubdtype(np.dtype(p.dtype), np.floating):
                raise TypeError(f"{self._name}: param group {n}, parameter {i} has dtype {p.dtype}; "
                                f"only floating-point tensors can be optimized")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        mine = set()
        for i, p in enumerate(ps):
            if id(p) in seen or id(p) in mine:
                raise ValueError(f"{self._name}: parameter {i} of param group {n} appears more than once "
                                 f"(in this group or an earlier one); each parameter may be listed once")
            mine.add(id(p))
        group = {k: v for k, v in param_group.items() if k != "params"}
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        group = self._validate(group)
        group["params"] = ps
        self.param_groups.append(group)

    def _validate(self, group):  # pragma: no cover - abstract
        return group

    # --- the step --------------------------------------------------------------------------
    def zero_grad(self, set_to_none=True):
        """Forget every parameter's gradient (``.grad = None``; zeros in place if not set_to_none)."""
        for group in self.param_groups:
            for p in group["params"]:
                _zero_grad(p, set_to_none, f"{self._name}.zero_grad")

    def step(self, closure=None):
        """One update of every parameter that has a ``.grad``; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            self._update(group, gi)
        return loss

    def _grads(self, group, gi):
        """(param, gradient array) for the group's params that have a gradient, checked. A frozen
        parameter (``requires_grad=False``) is skipped, even with a gradient left from before."""
        for i, p in enumerate(group["params"]):
            if p.grad is None or not p.requires_grad:
                continue
            g = p.grad.data  # with create_graph, its history is not followed
            if g.shape != p.data.shape:
                raise ValueError(f"{self._name}.step: param group {gi}, parameter {i}: grad has shape "
                                 f"{g.shape} but the parameter has shape {p.data.shape}")
            yield p, g

    def _scratch(self, xp, dtype, shape, slot):
        """A reusable work array of ``shape`` (a view into a flat buffer per module/dtype/slot)."""
        n = 1
        for s in shape:
            n *= s
        key = (xp.__name__, np.dtype(dtype).str, slot)
        buf = self._scratch_bufs.get(key)
        if buf is None or buf.size < n:
            buf = xp.empty(max(n, 1), dtype=dtype)
            self._scratch_bufs[key] = buf
        return buf[:n].reshape(shape)

    def _update(self, group, gi):  # pragma: no cover - abstract
        raise NotImplementedError

    # --- state dict ------------------------------------------------------------------------
    def state_dict(self):
        """PyTorch's layout, numpy copies and plain numbers only (see the module docstring)."""
        state, groups, idx = {}, [], 0
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                st = self.state.get(p)
                if st:
                    state[idx] = {k: (_to_numpy(v) if is_array(v) else _plain_copy(v)) for k, v in st.items()}
                ids.append(idx)
                idx += 1
            g = {k: _plain_copy(v) for k, v in group.items() if k != "params"}
            g["params"] = ids
            groups.append(g)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and state exactly; raise ValueError on any mismatch
        (number of groups or parameters, unknown state entries, buffer shapes), changing nothing."""
        name = f"{self._name}.load_state_dict"
        if not isinstance(state_dict, dict) or "param_groups" not in state_dict:
            raise ValueError(f"{name}: expected a dict with 'state' and 'param_groups'; got "
                             f"{type(state_dict).__name__}"
                             + (f" with keys {sorted(map(str, state_dict))}" if isinstance(state_dict, dict) else ""))
        saved_groups = _sequence(state_dict["param_groups"])
        saved_state = state_dict.get("state", {}) or {}
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}: the state dict has {len(saved_groups)} param group(s), this optimizer "
                             f"has {len(self.param_groups)}")
        id_map, new_groups = {}, []
        for gi, (sg, group) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(sg, dict) or "params" not in sg:
                raise ValueError(f"{name}: param group {gi} of the state dict is not a dict with 'params'")
            saved_ids = [int(i) for i in _as_list(sg["params"])]
            if len(saved_ids) != len(group["params"]):
                raise ValueError(f"{name}: param group {gi} has {len(saved_ids)} parameter(s) in the state dict "
                                 f"but {len(group['params'])} in this optimizer")
            for si, p in zip(saved_ids, group["params"]):
                id_map[si] = p
            ng = {k: v for k, v in group.items() if k != "params"}
            for k, v in sg.items():
                if k == "params":
                    continue
                try:
                    ng[k] = _coerce_like(group[k], v) if k in group else _plain(v)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{name}: param group {gi}, hyper-parameter {k!r}: {e}") from None
            try:
                ng = self._validate(ng)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{name}: param group {gi}: {e}") from None
            ng["params"] = group["params"]
            new_groups.append(ng)
        if not isinstance(saved_state, dict):
            raise ValueError(f"{name}: 'state' must be a dict keyed by parameter index; got "
                             f"{type(saved_state).__name__}")
        new_state = {}
        for k, entry in saved_state.items():
            try:
                idx = int(k)
            except (TypeError, ValueError):
                raise ValueError(f"{name}: state key {k!r} is not a parameter index") from None
            if idx not in id_map:
                raise ValueError(f"{name}: the state dict has state for parameter index {idx}, but the param "
                                 f"groups hold indices {sorted(id_map)}")
            p = id_map[idx]
            if not isinstance(entry, dict):
                raise ValueError(f"{name}: state of parameter {idx} is not a dict")
            unknown = sorted(set(entry) - set(self._state_keys))
            if unknown:
                raise ValueError(f"{name}: state of parameter {idx} has unknown entries {unknown}; "
                                 f"{self._name} keeps {list(self._state_keys)}")
            lacking = [key for key in self._required_state_keys if entry and key not in entry]
            if lacking:
                raise ValueError(f"{name}: state of parameter {idx} lacks {lacking}")
            xp = array_module(p.data)
            st = {}
            for key, v in entry.items():
                if key == "step":
                    try:
                        st[key] = _whole(v)
                    except (TypeError, ValueError, OverflowError) as e:
                        raise ValueError(f"{name}: state 'step' of parameter {idx}: {e}") from None
                    continue
                shape = tuple(np.shape(v)) if not hasattr(v, "shape") else tuple(v.shape)
                if shape != tuple(p.data.shape):
                    raise ValueError(f"{name}: state {key!r} of parameter {idx} has shape {shape}, but the "
                                     f"parameter has shape {tuple(p.data.shape)}")
                try:  # a complex or fractional value is refused, never truncated
                    v = cast_loaded(_to_numpy(v), p.data.dtype, f"{name}: state {key!r} of parameter {idx}")
                except TypeError as e:
                    raise ValueError(str(e)) from None
                st[key] = xp.array(v, dtype=p.data.dtype, copy=True)
            new_state[p] = st
        self.param_groups = new_groups
        self.state = new_state

    def __repr__(self):
        lines = [f"{self._name} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------- SGD


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and L2 weight decay, as
    ``torch.optim.SGD``::

        g = grad + weight_decay * p
        buf = g (first step) | momentum * buf + (1 - dampening) * g
        g = g + momentum * buf (nesterov) | buf
        p -= lr * g
    """

    _state_keys = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov)
        defaults = self._validate(dict(defaults))
        super().__init__(params, defaults)

    def _validate(self, group):
        n = self._name
        group["lr"] = _real(n, "learning rate lr", group["lr"], lo=0)
        group["momentum"] = _real(n, "momentum", group["momentum"], lo=0)
        group["dampening"] = _real(n, "dampening", group["dampening"])
        group["weight_decay"] = _real(n, "weight_decay", group["weight_decay"], lo=0)
        if not isinstance(group["nesterov"], (bool, np.bool_)):
            raise TypeError(f"{n}: nesterov must be True or False; got {group['nesterov']!r}")
        group["nesterov"] = bool(group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"{n}: Nesterov momentum requires momentum > 0 and dampening 0; got "
                             f"momentum={group['momentum']}, dampening={group['dampening']}")
        return group

    def _update(self, group, gi):
        lr = float(group["lr"])
        momentum = float(group["momentum"])
        dampening = float(group["dampening"])
        wd = float(group["weight_decay"])
        nesterov = group["nesterov"]
        for p, g in self._grads(group, gi):
            with writing(p.data, f"{self._name}.step") as d:  # a graph that read p must not run after
                xp = array_module(d)
                t = self._scratch(xp, d.dtype, d.shape, 0)
                owned = False  # is g a scratch array we may overwrite?
                if wd != 0:
                    g2 = self._scratch(xp, d.dtype, d.shape, 1)
                    xp.multiply(d, wd, out=g2)
                    xp.add(g, g2, out=g2)  # grad + wd * p
                    g, owned = g2, True
                if momentum != 0:
                    st = self.state.setdefault(p, {})
                    buf = st.get("momentum_buffer")
                    if buf is None:
                        buf = st["momentum_buffer"] = xp.array(g, dtype=d.dtype, copy=True)
                    else:
                        buf *= momentum
                        if dampening == 0:
                            buf += g
                        else:
                            xp.multiply(g, 1.0 - dampening, out=t)
                            buf += t
                    if nesterov:
                        xp.multiply(buf, momentum, out=t)
                        xp.add(g, t, out=t)  # g + momentum * buf
                        g, owned = t, True
                    else:
                        g, owned = buf, False
                if owned:
                    g *= -lr
                else:  # never modify the grad or the momentum buffer
                    xp.multiply(g, -lr, out=t)
                    g = t
                d += g  # p + (-lr) * g, bitwise equal to p - lr * g


def decoupled_sgd_groups(groups, lr, weight_decay, momentum, batch_size, reference_batch=1024):
    """Param groups for ``SGD(..., momentum=momentum, nesterov=True)`` from hyper-parameters in
    airbench's decoupled form (Jordan 2024, after Page's "How to train your ResNet"), for a
    loss *summed* over the batch.

    ``lr`` is the step size per ``reference_batch`` examples, independent of the momentum:
    Nesterov momentum with constant gradients makes steps ``1 + 1 / (1 - momentum)`` times
    the gradient, so SGD's ``lr`` is ``lr / (reference_batch * (1 + 1/(1 - momentum)))``.
    ``weight_decay`` is the decay per ``reference_batch`` examples, independent of the lr:
    SGD's per-step decay ``weight_decay * batch_size / (reference_batch * (1 + 1/(1 - momentum)))``
    divided by the group's lr. A group's ``"lr_scale"`` entry (default 1) multiplies its lr
    but not its decay (airbench's 64x for BatchNorm shifts). Returns new dicts (``params``,
    ``lr``, ``weight_decay`` and any other keys the groups had); the learning-rate schedule
    then scales every group's lr, and with it the decay, as in airbench."""
    lr = _real("decoupled_sgd_groups", "lr", lr, lo=0, lo_open=True)
    weight_decay = _real("decoupled_sgd_groups", "weight_decay", weight_decay, lo=0)
    momentum = _real("decoupled_sgd_groups", "momentum", momentum, lo=0, hi=1, hi_open=True)
    batch_size = _count("decoupled_sgd_groups", "batch_size", batch_size)
    reference_batch = _count("decoupled_sgd_groups", "reference_batch", reference_batch)
    step_scale = reference_batch * (1 + 1 / (1 - momentum))
    base_lr = lr / step_scale
    decay = weight_decay * batch_size / step_scale
    out = []
    for i, g in enumerate(groups):
        if not isinstance(g, dict) or "params" not in g:
            raise TypeError(f"decoupled_sgd_groups: group {i} must be a dict with 'params'; got {type(g).__name__}")
        g = dict(g)
        scale = _real("decoupled_sgd_groups", f"lr_scale of group {i}", g.pop("lr_scale", 1.0), lo=0, lo_open=True)
        g["lr"] = base_lr * scale
        g["weight_decay"] = decay / g["lr"]
        out.append(g)
    return out


# ---------------------------------------------------------------------------------- Adam


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (L2 weight decay added to the gradient)::

        g = grad + weight_decay * p
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    With ``amsgrad=True`` the running maximum of ``v`` replaces ``v`` in the denominator.
    """

    _state_keys = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _required_state_keys = ("step", "exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        defaults = self._validate(dict(defaults))
        super().__init__(params, defaults)

    def _validate(self, group):
        n = self._name
        group["lr"] = _real(n, "learning rate lr", group["lr"], lo=0)
        betas = group["betas"]
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"{n}: betas must be a pair (beta1, beta2); got {betas!r}")
        group["betas"] = tuple(_real(n, f"beta{i + 1} in betas", b, lo=0, hi=1, hi_open=True)
                               for i, b in enumerate(betas))
        group["eps"] = _real(n, "eps", group["eps"], lo=0)
        group["weight_decay"] = _real(n, "weight_decay", group["weight_decay"], lo=0)
        if not isinstance(group["amsgrad"], (bool, np.bool_)):
            raise TypeError(f"{n}: amsgrad must be True or False; got {group['amsgrad']!r}")
        group["amsgrad"] = bool(group["amsgrad"])
        return group

    def _update(self, group, gi):
        lr = float(group["lr"])
        beta1, beta2 = (float(b) for b in group["betas"])
        eps = float(group["eps"])
        wd = float(group["weight_decay"])
        amsgrad = group["amsgrad"]
        for p, g in self._grads(group, gi):
            with writing(p.data, f"{self._name}.step") as d:  # a graph that read p must not run after
                xp = array_module(d)
                st = self.state.get(p)
                if not st:
                    st = self.state[p] = {"step": 0,
                                          "exp_avg": xp.zeros(d.shape, dtype=d.dtype),
                                          "exp_avg_sq": xp.zeros(d.shape, dtype=d.dtype)}
                if amsgrad and "max_exp_avg_sq" not in st:
                    st["max_exp_avg_sq"] = xp.zeros(d.shape, dtype=d.dtype)
                st["step"] += 1
                step = st["step"]
                t = self._scratch(xp, d.dtype, d.shape, 0)
                u = self._scratch(xp, d.dtype, d.shape, 1)
                if wd != 0:
                    if self._decoupled:
                        d *= 1.0 - lr * wd
                    else:
                        xp.multiply(d, wd, out=u)
                        xp.add(g, u, out=u)  # grad + wd * p
                        g = u
                m, v = st["exp_avg"], st["exp_avg_sq"]
                # m.lerp_(g, w), with torch's two-sided lerp formula
                w = 1.0 - beta1
                xp.subtract(g, m, out=t)
                if abs(w) < 0.5:
                    t *= w
                    m += t
                else:
                    t *= 1.0 - w
                    xp.subtract(g, t, out=m)
                # v = beta2 * v + (1 - beta2) * g * g
                v *= beta2
                xp.multiply(g, 1.0 - beta2, out=t)
                t *= g
                v += t
                bias_correction1 = 1 - beta1 ** step
                bias_correction2 = 1 - beta2 ** step
                step_size = lr / bias_correction1
                bias_correction2_sqrt = bias_correction2 ** 0.5
                if amsgrad:
                    mx = st["max_exp_avg_sq"]
                    xp.maximum(mx, v, out=mx)
                    v = mx
                xp.sqrt(v, out=t)
                t /= bias_correction2_sqrt
                t += eps  # t = denom
                xp.multiply(m, -step_size, out=u)  # (the weight-decayed grad in u is no longer needed)
                u /= t
                d += u


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``: ``p *= 1 - lr * weight_decay``
    before the Adam update (the gradient itself is not decayed)."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


# ---------------------------------------------------------------------------- gradients


def _zero_grad(p, set_to_none, who):
    """``p.grad = None``, or (``set_to_none=False``) its values zeroed in place, cut from any
    history, as PyTorch's ``zero_grad`` does. The in-place write goes through
    ``tensor.writing``: a graph that read the old gradient (a gradient penalty built with
    ``create_graph=True``) refuses to run backward afterwards instead of using the zeros."""
    if set_to_none or p.grad is None:
        p.grad = None
        return
    g = p.grad if isinstance(p.grad, Tensor) else Tensor(p.grad)
    if g.requires_grad:
        g = g.detach()
    with writing(g.data, who) as a:
        a[...] = 0
    p.grad = g


# ---------------------------------------------------------------------------- gradient clip


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale the gradients of ``parameters`` in place so their total norm is at most ``max_norm``
    (as ``torch.nn.utils.clip_grad_norm_``: coefficient ``max_norm / (total + 1e-6)``, capped at 1).
    Returns the total norm before clipping, as a Python float (0.0 when no parameter has a grad)."""
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    max_norm = _real("clip_grad_norm_", "max_norm", max_norm, lo=0, finite=False)  # inf: no clipping
    norm_type = float(norm_type)
    grads = []
    for p in parameters:
        if not isinstance(p, Tensor):
            raise TypeError(f"clip_grad_norm_: expected Tensors, got {type(p).__name__}")
        if p.grad is not None:
            grads.append(p.grad.data)
    if not grads:
        return 0.0
    if math.isinf(norm_type):
        total = max(float(array_module(g).abs(g).max()) if g.size else 0.0 for g in grads)
    elif norm_type == 2.0:
        total = math.sqrt(sum(float(array_module(g).vdot(g.ravel(), g.ravel())) for g in grads))
    else:
        per = []
        for g in grads:
            xp = array_module(g)
            per.append(float(xp.sum(xp.abs(g) ** norm_type)))
        total = sum(per) ** (1.0 / norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is "
                           f"{total}; set error_if_nonfinite=False to clip anyway")
    coef = max_norm / (total + 1e-6)
    if not coef >= 1.0:  # as torch, a nan/inf total multiplies the grads by nan/0
        for g in grads:
            with writing(g, "clip_grad_norm_"):
                g *= coef
    return total


# ------------------------------------------------------------------------ LR schedulers


def _progress(owner, fraction):
    """A schedule's progress clamped to [0, 1]; NaN (e.g. a clock divided by a NaN budget) is
    an error, not a NaN learning rate."""
    f = _real(owner, "progress fraction", fraction, finite=False)
    return min(max(f, 0.0), 1.0)


class LRScheduler:
    """Base class for schedules stepped once per batch (or epoch), after ``optimizer.step()``.

    As in PyTorch: construction records ``group["initial_lr"]`` (if absent) as ``base_lrs`` and
    sets the lr for step 0; each ``step()`` advances ``last_epoch`` and writes ``get_lr()`` into
    every group's ``"lr"``. The lr is always a closed-form function of ``last_epoch`` (PyTorch's
    chainable recursive forms agree to rounding, but a manual edit of ``group["lr"]`` between
    steps is overwritten here rather than compounded).
    """

    _hyper_keys: tuple = ()

    def __init__(self, optimizer, last_epoch=-1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: {type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"{type(self).__name__}: param 'initial_lr' is not specified in "
                                   f"param_groups[{i}] when resuming with last_epoch={last_epoch}")
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.last_epoch = int(last_epoch)
        self._step_count = 0
        self.step()

    def get_lr(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self):
        self._step_count += 1
        self.last_epoch += 1
        self._set_lrs(self.get_lr())

    def _set_lrs(self, lrs):
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = float(lr)
        self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]

    def get_last_lr(self):
        """The lrs set by the last ``step()``, one per param group."""
        return list(self._last_lr)

    def state_dict(self):
        """Plain numbers and lists of numbers (no functions)."""
        d = {"last_epoch": self.last_epoch, "_step_count": self._step_count,
             "base_lrs": list(self.base_lrs), "_last_lr": list(self._last_lr)}
        for k in self._hyper_keys:
            d[k] = getattr(self, k)
        return d

    def load_state_dict(self, state_dict):
        """Restore ``state_dict()``'s values (arrays from a checkpoint are accepted) and re-apply
        the last lr to the optimizer's groups."""
        name = f"{type(self).__name__}.load_state_dict"
        need = ("last_epoch", "_step_count", "base_lrs", "_last_lr") + self._hyper_keys
        missing = [k for k in need if k not in state_dict]
        if missing:
            raise ValueError(f"{name}: missing entries {missing}")
        n = len(self.optimizer.param_groups)
        base_lrs = [float(x) for x in _as_list(state_dict["base_lrs"])]
        last_lr = [float(x) for x in _as_list(state_dict["_last_lr"])]
        if len(base_lrs) != n or len(last_lr) != n:
            raise ValueError(f"{name}: the state dict has {len(base_lrs)} base lr(s) and {len(last_lr)} last "
                             f"lr(s), but the optimizer has {n} param group(s)")
        hyper = {k: _coerce_like(getattr(self, k), state_dict[k]) for k in self._hyper_keys}
        self.last_epoch = _whole(state_dict["last_epoch"])
        self._step_count = _whole(state_dict["_step_count"])
        self.base_lrs = base_lrs
        for k, v in hyper.items():
            setattr(self, k, v)
        self._after_load()
        self._set_lrs(last_lr)

    def _after_load(self):
        pass


class LambdaLR(LRScheduler):
    """``lr = base_lr * lr_lambda(last_epoch)``; ``lr_lambda`` is a function or one per group."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        n = len(optimizer.param_groups) if isinstance(optimizer, Optimizer) else 0
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"LambdaLR: expected {n} lr_lambdas (one per param group), got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * n
        for f in self.lr_lambdas:
            if not callable(f):
                raise TypeError(f"LambdaLR: lr_lambda must be callable; got {f!r}")
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base * f(self.last_epoch) for f, base in zip(self.lr_lambdas, self.base_lrs)]


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (last_epoch // step_size)``."""

    _hyper_keys = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size = _count("StepLR", "step_size", step_size)
        self.gamma = _real("StepLR", "gamma", gamma, lo=0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base * self.gamma ** (self.last_epoch // self.step_size) for base in self.base_lrs]


class ConstantLR(LRScheduler):
    """``lr = base_lr * factor`` for the first ``total_iters`` steps, then ``base_lr``
    (``factor=1`` makes it a no-op schedule)."""

    _hyper_keys = ("factor", "total_iters")

    def __init__(self, optimizer, factor=1.0 / 3, total_iters=5, last_epoch=-1):
        self.factor = _real("ConstantLR", "factor", factor, lo=0, hi=1)
        self.total_iters = _count("ConstantLR", "total_iters", total_iters, minimum=0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        f = self.factor if self.last_epoch < self.total_iters else 1.0
        return [base * f for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * last_epoch / T_max)) / 2`` (PyTorch's
    closed form; past ``T_max`` it rises again, as PyTorch's does).

    ``lr_at(fraction)`` is the same curve as a pure function of progress in [0, 1]
    (``fraction * T_max`` steps), and ``set_progress(fraction)`` writes it into the optimizer:
    use them to schedule by elapsed wall-clock time instead of by step count.
    """

    _hyper_keys = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        self.T_max = _count("CosineAnnealingLR", "T_max", T_max)
        self.eta_min = _real("CosineAnnealingLR", "eta_min", eta_min, lo=0)
        super().__init__(optimizer, last_epoch)

    def _at(self, t):
        c = (1 + math.cos(math.pi * t / self.T_max)) / 2
        return [self.eta_min + (base - self.eta_min) * c for base in self.base_lrs]

    def get_lr(self):
        return self._at(self.last_epoch)

    def lr_at(self, fraction):
        """The lrs (one per group) at progress ``fraction`` in [0, 1] (clamped)."""
        return self._at(_progress(type(self).__name__, fraction) * self.T_max)

    def set_progress(self, fraction):
        """Set every group's lr to ``lr_at(fraction)`` (``last_epoch`` is left alone)."""
        self._set_lrs(self.lr_at(fraction))


class OneCycleLR(LRScheduler):
    """The 1cycle policy, as ``torch.optim.lr_scheduler.OneCycleLR`` (same lr and momentum values).

    The lr warms up from ``max_lr / div_factor`` to ``max_lr`` over the first
    ``pct_start * total_steps - 1`` steps, then anneals to ``initial_lr / final_div_factor`` at
    step ``total_steps - 1`` (``three_phase``: up, back down to ``initial_lr``, then to the
    minimum). With ``cycle_momentum`` (default, as PyTorch) the momentum, SGD's ``momentum`` or
    Adam's ``beta1``, moves inversely between ``max_momentum`` and ``base_momentum``; like
    PyTorch this also switches momentum on for an SGD built with ``momentum=0``: pass
    ``cycle_momentum=False`` to keep plain SGD. Stepping past ``total_steps`` raises ValueError.

    ``lr_at(fraction)`` / ``momentum_at(fraction)`` give the schedule as a pure function of
    progress in [0, 1] (``fraction * (total_steps - 1)`` steps), and ``set_progress(fraction)``
    applies both: use them to schedule by elapsed wall-clock time.
    """

    _hyper_keys = ("total_steps", "pct_start", "three_phase", "cycle_momentum", "anneal_cos")

    def __init__(self, optimizer, max_lr, total_steps=None, pct_start=0.3, anneal_strategy="cos",
                 div_factor=25.0, final_div_factor=1e4, three_phase=False, *, epochs=None,
                 steps_per_epoch=None, cycle_momentum=True, base_momentum=0.85, max_momentum=0.95,
                 last_epoch=-1):
        n = "OneCycleLR"
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{n}: {type(optimizer).__name__} is not an Optimizer")
        if total_steps is not None:
            self.total_steps = _count(n, "total_steps", total_steps)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = _count(n, "epochs", epochs) * _count(n, "steps_per_epoch", steps_per_epoch)
        else:
            raise ValueError(f"{n}: define either total_steps or (epochs and steps_per_epoch)")
        self.pct_start = _real(n, "pct_start", pct_start, lo=0, hi=1)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"{n}: anneal_strategy must be 'cos' or 'linear'; got {anneal_strategy!r}")
        self.anneal_cos = anneal_strategy == "cos"
        self.three_phase = bool(three_phase)
        div_factor = _real(n, "div_factor", div_factor, lo=0, lo_open=True)
        final_div_factor = _real(n, "final_div_factor", final_div_factor, lo=0, lo_open=True)
        groups = optimizer.param_groups
        max_lrs = self._per_group("max_lr", max_lr, len(groups))
        if last_epoch == -1:
            for group, mlr in zip(groups, max_lrs):
                group["initial_lr"] = mlr / div_factor
                group["max_lr"] = mlr
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = bool(cycle_momentum)
        self.use_beta1 = "betas" in optimizer.defaults
        if self.cycle_momentum:
            if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
                raise ValueError(f"{n}: cycle_momentum=True needs an optimizer with momentum or betas; "
                                 f"{type(optimizer).__name__} has neither (pass cycle_momentum=False)")
            maxm = self._per_group("max_momentum", max_momentum, len(groups))
            basem = self._per_group("base_momentum", base_momentum, len(groups))
            if last_epoch == -1:
                for group, mm, bm in zip(groups, maxm, basem):
                    if self.use_beta1:
                        group["betas"] = (mm, *group["betas"][1:])
                    else:
                        group["momentum"] = mm
                    group["max_momentum"] = mm
                    group["base_momentum"] = bm
        self._build_phases()
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _per_group(name, value, n):
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise ValueError(f"OneCycleLR: expected {n} values for {name} (one per param group), "
                                 f"got {len(value)}")
            return [_real("OneCycleLR", name, v, lo=0) for v in value]
        return [_real("OneCycleLR", name, value, lo=0)] * n

    def _build_phases(self):
        T, pct = self.total_steps, self.pct_start
        if self.three_phase:
            self._phases = [
                (float(pct * T) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (float(2 * pct * T) - 2, "max_lr", "initial_lr", "base_momentum", "max_momentum"),
                (T - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
        else:
            self._phases = [
                (float(pct * T) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (T - 1, "max_lr", "min_lr", "base_momentum", "max_momentum"),
            ]

    def _after_load(self):
        self._build_phases()
        self._apply_momentum(self._values(self.last_epoch)[1])

    def _anneal(self, start, end, pct):
        if self.anneal_cos:
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _values(self, step_num):
        """(lrs, momenta) at (possibly fractional) step ``step_num``, as PyTorch computes them."""
        lrs, moms = [], []
        last = len(self._phases) - 1
        for group in self.optimizer.param_groups:
            start_step = 0.0
            for i, (end_step, slr, elr, smom, emom) in enumerate(self._phases):
                if step_num <= end_step or i == last:
                    span = end_step - start_step
                    pct = (step_num - start_step) / span if span != 0 else 1.0
                    lrs.append(self._anneal(group[slr], group[elr], pct))
                    if self.cycle_momentum:
                        moms.append(self._anneal(group[smom], group[emom], pct))
                    break
                start_step = end_step
        return lrs, (moms if self.cycle_momentum else None)

    def _apply_momentum(self, moms):
        if moms is None:
            return
        for group, m in zip(self.optimizer.param_groups, moms):
            if self.use_beta1:
                group["betas"] = (float(m), *group["betas"][1:])
            else:
                group["momentum"] = float(m)

    def get_lr(self):
        if self.last_epoch > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {self.last_epoch} times; the specified number of "
                             f"total steps is {self.total_steps}")
        lrs, moms = self._values(self.last_epoch)
        self._apply_momentum(moms)
        return lrs

    def _progress_step(self, fraction):
        return _progress(type(self).__name__, fraction) * (self.total_steps - 1)

    def lr_at(self, fraction):
        """The lrs (one per group) at progress ``fraction`` in [0, 1] (clamped)."""
        return self._values(self._progress_step(fraction))[0]

    def momentum_at(self, fraction):
        """The momenta (SGD momentum or Adam beta1, one per group), or None without cycle_momentum."""
        return self._values(self._progress_step(fraction))[1]

    def set_progress(self, fraction):
        """Set every group's lr (and momentum) to their values at ``fraction`` (``last_epoch`` is
        left alone)."""
        lrs, moms = self._values(self._progress_step(fraction))
        self._apply_momentum(moms)
        self._set_lrs(lrs)
