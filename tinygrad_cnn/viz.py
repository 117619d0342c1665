"""Pictures of the autograd graph: ``draw_graph(tensor, params=model)`` and a CLI.

One box per recorded op (the op *and* the tensor it produces: name, key arguments, output
shape and dtype), one node per leaf (parameters by their dotted name, inputs, constants),
one edge per input of an op. Ops are grouped in one labelled cluster per ``nn.Module``
whose ``forward`` recorded them (``Op.scope``); ``collapse=True`` draws one node per
module instead. With ``show_grad=True`` after ``backward()`` nodes show ``|g|``, the L2
norm of their gradient, in red when it is zero, not finite or huge.

The walk is iterative (a 20,000-op chain is fine) and the DOT text is written directly,
so a 10,000-node graph builds in a fraction of a second; ``max_nodes`` keeps the nodes
nearest the output and draws one "... N more nodes" marker for the rest.

    from tinygrad_cnn.viz import draw_graph
    g = draw_graph(model(x), params=model)
    g.render("graph.svg")          # format from the extension; needs Graphviz's `dot`

CLI (see docs/graphs.md)::

    python -m tinygrad_cnn.viz models.seed_cnn:SeedCNN --input-shape 1,3,32,32 --out graph.svg
"""
from __future__ import annotations

import argparse
import html
import importlib
import math
import os
import sys

import graphviz
import numpy as np

from .graph import tensors
from .io import atomic_write, file_mode_for, temp_file_beside
from .tensor import Tensor

__all__ = ["draw_graph", "retain_grads", "GraphView", "DotNotFound", "main",
           "GRAD_TINY", "GRAD_HUGE", "INSTALL_HINT"]

GRAD_TINY = 1e-7   # a gradient norm below this (but not 0) is drawn in orange: vanishing
GRAD_HUGE = 1e3    # above this, or 0, NaN or inf, it is drawn in red: exploding or dead
INSTALL_HINT = ("install Graphviz: apt-get install -y graphviz (Debian/Ubuntu), "
                "brew install graphviz (macOS) or conda install graphviz")
IMAGE_FORMATS = ("svg", "png", "pdf")

# --------------------------------------------------------------------------------- styles

_FONT = "Helvetica"
_STYLE_OP = 'shape=box style="rounded,filled" fillcolor="#f3f4f6" color="#8a8f98"'
_STYLE_PARAM = 'shape=box style="filled" fillcolor="#cfe3ff" color="#3b6fc4"'
_STYLE_INPUT = 'shape=box style="filled" fillcolor="#dcf2d8" color="#4a9a44"'
_STYLE_CONST = 'shape=plaintext fontsize=9 fontcolor="#666666" height=0.2'
_STYLE_MODULE = 'shape=box3d style="filled" fillcolor="#e9e3f7" color="#6b55a8"'
_STYLE_OUTPUT = 'fillcolor="#ffdf80" color="#b8860b" penwidth=2.5'
_STYLE_MORE = 'shape=box style="dashed" color="#888888" fontcolor="#555555"'
_RED, _ORANGE, _GREY = "#d62728", "#e67e00", "#777777"
_COMMUTATIVE = frozenset({"add", "mul", "maximum"})


# ------------------------------------------------------------------------------ formatting


def _shape(shape) -> str:
    return "x".join(str(int(n)) for n in shape) if len(shape) else "scalar"


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def op_label(op) -> str:
    """What an op's box prints beside its name: the op's own ``label()`` (its key arguments,
    e.g. ``k=3x3 s=1 p=1``, ``axis=-1``, ``[:, 0:2]``), clipped to one short line."""
    try:
        return _clip(op.label())
    except Exception:  # a label must never break drawing: fall back to the raw parameters
        return _clip(" ".join(f"{k}={v!r}" for k, v in getattr(op, "params", {}).items()))


def grad_norm(g) -> float:
    """The L2 norm of a gradient (a Tensor, as ``.grad`` is, or an array), in float64
    (inf/NaN when the gradient has them)."""
    a = g.data if isinstance(g, Tensor) else g
    a = np.asarray(a.get() if hasattr(a, "get") else a)  # CuPy arrays: copy to the host
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.sqrt(np.sum(np.square(a, dtype=np.float64))))


def _grad_text(norm):
    """('|g|=1.2e-03', colour or None); colour marks zero/non-finite/huge (red), tiny (orange)."""
    if norm is None:
        return "no grad", _GREY
    if not math.isfinite(norm):
        return f"|g|={norm}", _RED
    if norm == 0:
        return "|g|=0", _RED
    text = f"|g|={norm:.1e}"
    if norm > GRAD_HUGE:
        return text, _RED
    if norm < GRAD_TINY:
        return text, _ORANGE
    return text, None


def _font(text, size=9, color="#444444", bold=False):
    body = html.escape(text, quote=False)
    if bold:
        body = f"<B>{body}</B>"
    return f'<FONT POINT-SIZE="{size}" COLOR="{color}">{body}</FONT>'


# ------------------------------------------------------------------------------ the walk


def _topological(parents):
    """Node indices with every node after its inputs (iterative post-order)."""
    n = len(parents)
    done, out = [False] * n, []
    for start in range(n - 1, -1, -1):
        if done[start]:
            continue
        stack = [(start, 0)]
        while stack:
            i, k = stack.pop()
            if done[i]:
                continue
            ps = parents[i]
            while k < len(ps) and done[ps[k]]:
                k += 1
            if k < len(ps):
                stack.append((i, k + 1))
                stack.append((ps[k], 0))
            else:
                done[i] = True
                out.append(i)
    return out


def _data_path(order, parents, names):
    """For each node: does it depend on an input (a leaf that is neither a parameter nor a
    one-element constant)? Those edges form the spine of the picture."""
    data = [False] * len(order)
    for i in _topological(parents):
        t = order[i]
        if parents[i]:
            data[i] = any(data[j] for j in parents[i])
        else:
            is_param = id(t) in names.params if names.params else t.requires_grad
            data[i] = not is_param and t.data.size != 1
    return data


def retain_grads(tensor):
    """Make every intermediate tensor of ``tensor``'s graph keep its ``.grad`` after backward, so
    that ``draw_graph(..., show_grad=True)`` shows gradient norms on op boxes, not only on leaves.
    Call it before ``backward()``. Returns ``tensor``."""
    order, _ = tensors(tensor)
    for t in order:
        if t._ctx is not None:
            t.retain_grad()
    return tensor


# ------------------------------------------------------------------------ module lookup


class _Names:
    """Module and parameter names from ``params``: an nn.Module, a mapping name -> Tensor, or
    an iterable of (name, Tensor) pairs such as ``model.named_parameters()``."""

    def __init__(self, params):
        self.model = None
        self.modules = {}       # id(module) -> dotted name
        self.by_name = {}       # dotted name -> module
        self.params = {}        # id(tensor) -> dotted name
        if params is None:
            return
        if hasattr(params, "named_modules") and hasattr(params, "named_parameters"):
            self.model = params
            for name, m in params.named_modules():
                self.modules[id(m)] = name
                self.by_name[name] = m
            pairs = params.named_parameters()
        else:
            pairs = params.items() if hasattr(params, "items") else params
        for name, p in pairs:
            if not isinstance(p, Tensor):
                raise TypeError(f"draw_graph: params must map names to Tensors; {name!r} is a {type(p).__name__}")
            self.params.setdefault(id(p), str(name))

    def owner(self, pname):
        """The module that owns parameter ``pname`` ('conv1.weight' -> conv1), or None."""
        if self.model is None:
            return None
        return self.by_name.get(pname.rpartition(".")[0])


class _Clusters:
    """Clusters keyed by module path (a tuple of module ids, outermost first, without the root
    model), so that nesting follows the forward calls (which follow the module tree)."""

    def __init__(self, names):
        self.names = names
        self.info = {}        # key -> (dotted name, class name)
        self.first = {}       # id(module) -> the first key it ended
        self._anon = {}

    def path(self, op):
        scope = getattr(op, "scope", ())
        model = self.names.model
        if model is not None:
            for i, m in enumerate(scope):
                if m is model:
                    scope = scope[i + 1:]
                    break
        key = ()
        for m in scope:
            key = key + (id(m),)
            if key not in self.info:
                name = self.names.modules.get(id(m))
                if name is None:  # a module outside the model: name it by its class
                    name = self._anon.setdefault(id(m), f"{type(m).__name__}#{len(self._anon) + 1}")
                self.info[key] = (name, type(m).__name__)
                self.first.setdefault(id(m), key)
        return key


# ------------------------------------------------------------------------------ the view


class _View:
    """Nodes (id, DOT attributes, cluster key) and edges (src, dst, attributes), in BFS order."""

    def __init__(self):
        self.ids, self.attrs, self.cluster = [], [], []
        self.edges = []
        self.hints = []  # (src, dst): invisible layout-only edges
        self.data = None  # per node: on the data path (depends on an input)?

    def add(self, attrs, cluster=()):
        self.ids.append(f"n{len(self.ids)}")
        self.attrs.append(attrs)
        self.cluster.append(cluster)
        return len(self.ids) - 1


def _tensor_lines(t, names, show_grad):
    """(label HTML, style) of a leaf tensor."""
    shape_line = f"{_shape(t.shape)} {t.dtype}"
    pname = names.params.get(id(t))
    rows = []
    # parameters: named ones when names were given, else every leaf that requires grad
    if pname is not None or (t.requires_grad and not names.params):
        style = _STYLE_PARAM
        title = pname or t.name
        if title:
            rows.append(_font(title, 10, "#0b2a5c", bold=True))
        rows.append(_font(shape_line))
    elif t.data.size == 1 and not t.name:
        value = t.data.reshape(-1)[0]
        value = value.item() if hasattr(value, "item") else value
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return f"<{html.escape(text)} {_font(shape_line if t.ndim else str(t.dtype), 8, '#888888')}>", _STYLE_CONST
    else:
        style = _STYLE_INPUT
        if t.name:
            rows.append(_font(t.name, 10, "#1d4d1a", bold=True))
        rows.append(_font(shape_line))
    if show_grad and (t.requires_grad or t.grad is not None):
        rows.append(_grad_row(None if t.grad is None else grad_norm(t.grad)))
    return "<" + "<BR/>".join(rows) + ">", style


def _grad_row(norm):
    text, color = _grad_text(norm)
    return _font(text, 9, color or "#222222", bold=color == _RED)


def _alert(norm):
    _, color = _grad_text(norm)
    return f' color="{color}" penwidth=2' if color in (_RED, _ORANGE) else ""


def _node_attrs(t, names, show_grad):
    """DOT attributes of one graph node: an op box, or a leaf styled by its kind."""
    if t._ctx is not None:
        label, extra = _op_label(t, show_grad)
        return f"label={label} {_STYLE_OP}{extra}"
    label, style = _tensor_lines(t, names, show_grad)
    attrs = f"label={label} {style}"
    if show_grad and t.grad is not None:
        attrs += _alert(grad_norm(t.grad))
    return attrs


def _op_label(t, show_grad):
    op = t._ctx
    args = op_label(op)
    head = f"<B>{html.escape(op.name)}</B>"
    if args:
        head += " " + _font(args, 9, "#222222")
    rows = [head]
    if t.name:
        rows.append(_font(t.name, 9, "#1d4d1a", bold=True))
    rows.append(_font(f"{_shape(t.shape)} {t.dtype}", 9, "#555555"))
    extra = ""
    if show_grad and t.grad is not None:
        norm = grad_norm(t.grad)
        rows.append(_grad_row(norm))
        extra = _alert(norm)
    return "<" + "<BR/>".join(rows) + ">", extra


def _detail_view(order, parents, names, clusters, show_grad, use_clusters):
    view = _View()
    data = _data_path(order, parents, names)
    keys = [()] * len(order)
    if use_clusters:
        for i, t in enumerate(order):
            if t._ctx is not None:
                keys[i] = clusters.path(t._ctx)
        consumer_keys = {}
        for i, ps in enumerate(parents):
            for j in ps:
                if order[j]._ctx is None:
                    consumer_keys.setdefault(j, set()).add(keys[i])
        for i, t in enumerate(order):
            if t._ctx is not None:
                continue
            pname = names.params.get(id(t))
            if pname is not None:  # a parameter sits in its module's cluster
                owner = names.owner(pname)
                keys[i] = clusters.first.get(id(owner), ()) if owner is not None else ()
            elif not data[i] and len(consumer_keys.get(i, ())) == 1:  # so does a constant only it uses
                keys[i] = next(iter(consumer_keys[i]))
    for i, t in enumerate(order):
        view.add(_node_attrs(t, names, show_grad), keys[i])
    for i, ps in enumerate(parents):
        if not ps:
            continue
        op_name = order[i]._ctx.name
        labelled = len(ps) > 1 and op_name not in _COMMUTATIVE
        for slot, j in enumerate(ps):
            attrs = []
            if labelled:  # the input's position matters (a - b, a @ b): say which is which
                tag = ("lhs", "rhs")[slot] if len(ps) == 2 else f"in{slot}"
                attrs.append(f'headlabel="{tag}" labeldistance=1.6 labelfontsize=8 labelfontcolor="#888888"')
            if data[j]:
                attrs.append("weight=8")  # keep the data path straight; parameters hang beside it
            view.edges.append((j, i, f" [{' '.join(attrs)}]" if attrs else ""))
    view.data = data
    if use_clusters:
        _rank_hints(view, parents, data, keys, names, order)
    return view


def _rank_hints(view, parents, data, keys, names, order):
    """Invisible edges from the tensor that enters a module's cluster to the module's parameters,
    so that dot ranks the parameters below that tensor: the cluster box then starts below it
    and the data path runs straight down instead of stepping sideways around the box."""
    feeder = {}
    for i, ps in enumerate(parents):
        key = keys[i]
        if not key:
            continue
        for j in ps:
            if not data[j]:
                continue
            src = keys[j]
            for d in range(1, len(key) + 1):  # every cluster around i that j is outside of
                k = key[:d]
                if src[:d] != k:
                    feeder.setdefault(k, j)
    for i, t in enumerate(order):
        if keys[i] and t._ctx is None and id(t) in names.params:
            j = feeder.get(keys[i])
            if j is not None:
                view.hints.append((j, i))


def _collapsed_view(order, parents, names, clusters, show_grad, depth):
    """One node per module (``depth`` levels below the root model; shallower modules whole),
    with its parameters and the constants only it uses folded in; ops outside modules as they are."""
    n = len(order)
    keys = [None] * n            # group key (module path), or None for a node drawn as itself
    for i, t in enumerate(order):
        if t._ctx is not None:
            path = clusters.path(t._ctx)
            keys[i] = path[:depth] or None
        else:
            pname = names.params.get(id(t))
            owner = names.owner(pname) if pname is not None else None
            if owner is not None and id(owner) in clusters.first:
                keys[i] = clusters.first[id(owner)][:depth] or None
    data = _data_path(order, parents, names)
    consumers = [[] for _ in range(n)]
    for i, ps in enumerate(parents):
        for j in ps:
            consumers[j].append(i)
    for i, t in enumerate(order):  # a constant used inside one module only belongs to it
        if t._ctx is None and keys[i] is None and not data[i] and consumers[i]:
            ks = {keys[c] for c in consumers[i]}
            if len(ks) == 1:
                keys[i] = ks.pop()
    leaves_out = [i == 0 or any(keys[c] != keys[i] for c in consumers[i]) for i in range(n)]
    members = {}
    for i in range(n):
        if keys[i] is not None:
            members.setdefault(keys[i], []).append(i)
    parents_of_groups = {k[:d] for k in members for d in range(1, len(k))}
    view = _View()
    vflags = []
    vindex, groups = [0] * n, {}
    for i, t in enumerate(order):
        key = keys[i]
        if key is None:
            vindex[i] = view.add(_node_attrs(t, names, show_grad), ())
            vflags.append(data[i])
            continue
        if key in groups:
            vindex[i] = groups[key]
            continue
        name, cls = clusters.info[key]
        group = members[key]
        params = [order[k] for k in group if order[k]._ctx is None and id(order[k]) in names.params]
        n_params = sum(p.numel() for p in params)
        rows = [f"<B>{html.escape(name)}</B> " + _font(cls, 9, "#3d2c73")]
        if n_params:
            rows.append(_font(f"{n_params:,} params", 9, "#555555"))
        outs = []
        for k in group:
            if leaves_out[k] and order[k]._ctx is not None:
                s = _shape(order[k].shape)
                if s not in outs:
                    outs.append(s)
        if outs:
            rows.append(_font(f"out {', '.join(outs)} {order[group[0]].dtype}", 9, "#555555"))
        extra = ""
        if show_grad and params:
            grads = [p.grad for p in params if p.grad is not None]
            norm = math.sqrt(sum(grad_norm(g) ** 2 for g in grads)) if grads else None
            text, color = _grad_text(norm)
            rows.append(_font("params " + text, 9, color or "#222222", bold=color == _RED))
            extra = _alert(norm) if norm is not None else ""
        place = key if key in parents_of_groups else key[:-1]
        groups[key] = vindex[i] = view.add(f"label=<{'<BR/>'.join(rows)}> {_STYLE_MODULE}{extra}", place)
        vflags.append(any(data[k] for k in group))
    seen = set()
    for i, ps in enumerate(parents):
        for j in ps:
            a, b = vindex[j], vindex[i]
            if a != b and (a, b) not in seen:
                seen.add((a, b))
                view.edges.append((a, b, " [weight=8]" if vflags[a] else ""))
    view.data = vflags
    return view


# ------------------------------------------------------------------------------ the DOT


class DotNotFound(graphviz.ExecutableNotFound):
    """Graphviz's ``dot`` is missing: the DOT source was written, nothing was rendered."""

    def __init__(self, source_path, target=None):
        target = os.fspath(target) if target is not None else "graph.svg"
        fmt = os.path.splitext(target)[1].lstrip(".") or "svg"
        RuntimeError.__init__(
            self, f"Graphviz's `dot` program was not found, so only the DOT source was written, to "
                  f"{source_path}; {INSTALL_HINT}, then render again (or run: dot -T{fmt} {source_path} -o {target})")
        self.source_path = source_path


class GraphView(graphviz.Digraph):
    """A ``graphviz.Digraph`` whose ``render`` also takes an image path (``g.render("g.svg")``:
    format from the extension, the ``.dot`` source beside it, removed after success) and, when
    ``dot`` is missing, keeps the source and raises ``DotNotFound`` saying how to install it.

    Files are written as ``tinygrad_cnn.io.atomic_write`` writes them: whole or not at all, and
    a symbolic link at the path is replaced, never written through (its target is left alone).
    ``dot`` only ever sees temporary names that start with a dot, so a path such as
    ``-Tx.svg`` is never taken for one of its options."""

    def save(self, filename=None, directory=None, *, skip_existing=False):
        if filename is not None:
            self.filename = filename
        if directory is not None:
            self.directory = directory
        filepath = self.filepath
        if skip_existing and os.path.exists(filepath):
            return filepath
        text = self.source.encode(self.encoding)
        atomic_write(filepath, lambda f: f.write(text))
        return filepath

    def render(self, filename=None, directory=None, view=False, cleanup=None, format=None, **kwargs):
        outfile = kwargs.pop("outfile", None)
        if filename is not None and outfile is None:
            stem, ext = os.path.splitext(os.fspath(filename))
            ext = ext.lower().lstrip(".")
            if ext in IMAGE_FORMATS:
                if format is not None and format != ext:
                    raise ValueError(f"render: the path {filename!r} ends in .{ext} but format={format!r}")
                target = os.path.join(os.fspath(directory), os.fspath(filename)) if directory else os.fspath(filename)
                return self._render_image(target, ext, True if cleanup is None else cleanup, view, **kwargs)
        if format is not None and format not in graphviz.FORMATS:
            raise ValueError(f"render: unknown format {format!r}; use one of {', '.join(IMAGE_FORMATS)}")
        try:
            return super().render(filename=filename, directory=directory, view=view, cleanup=bool(cleanup),
                                  format=format, outfile=outfile, **kwargs)
        except graphviz.ExecutableNotFound as e:
            if isinstance(e, DotNotFound):
                raise
            raise DotNotFound(self.filepath, outfile) from None

    def _render_image(self, target, fmt, cleanup, view, engine=None, renderer=None, formatter=None,
                      neato_no_op=None, quiet=False, quiet_view=False):
        """Render to ``target`` through temporary files beside it, then rename into place."""
        source = os.path.splitext(target)[0] + ".dot"
        src_fd, tmp_source = temp_file_beside(source)
        out_fd, tmp_out = temp_file_beside(target)
        os.close(out_fd)
        try:
            with os.fdopen(src_fd, "wb") as f:
                f.write(self.source.encode(self.encoding))
            try:
                graphviz.render(engine or self.engine, fmt, tmp_source, renderer=renderer, formatter=formatter,
                                neato_no_op=neato_no_op, quiet=quiet, outfile=tmp_out)
            except graphviz.ExecutableNotFound:
                self.save(source)
                raise DotNotFound(source, target) from None
            os.chmod(tmp_out, file_mode_for(target))  # as open() would: the umask, or the mode it had
            os.replace(tmp_out, target)
        finally:
            for tmp in (tmp_source, tmp_out):
                if os.path.exists(tmp):
                    os.unlink(tmp)
        if not cleanup:
            self.save(source)
        if view or quiet_view:
            self._view(target, format=fmt, quiet=quiet_view)
        return target


def _emit(view, clusters, max_nodes):
    n = len(view.ids)
    keep = n if max_nodes is None else min(n, max_nodes)
    lines = []
    # nodes, nested in their clusters
    tree = {}
    for i in reversed(range(keep)):  # inputs first: dot lays the graph out in reading order
        tree.setdefault(view.cluster[i], []).append(i)
    if view.data:  # in a cluster, the data path first: it stays on the left, parameters to its right
        for key, members in tree.items():
            if key:
                members.sort(key=lambda i: not view.data[i])
    children = {}
    for key in list(tree):  # in order of first appearance: stable
        while key:
            parent = key[:-1]
            kids = children.setdefault(parent, [])
            if key in kids:
                break
            kids.append(key)
            key = parent
    for i in tree.get((), ()):
        lines.append(f"\t{view.ids[i]} [{view.attrs[i]}]\n")
    used = set()
    stack = [(k, 1, False) for k in reversed(children.get((), []))]
    while stack:
        key, depth, closing = stack.pop()
        pad = "\t" * depth
        if closing:
            lines.append(f"{pad}}}\n")
            continue
        name, cls = clusters.info[key]
        cid = "cluster_" + name.replace("\\", "\\\\").replace('"', '\\"')
        if cid in used:  # one module reached along two call paths: two clusters, distinct ids
            cid += f"#{len(used)}"
        used.add(cid)
        fill = ("#f7f8fb", "#eef1f7", "#e5e9f2", "#dde2ee")[min(depth - 1, 3)]
        lines.append(f'{pad}subgraph "{cid}" {{\n')
        lines.append(f'{pad}\tlabel=<<B>{html.escape(name)}</B> {_font(cls, 9, "#3d2c73")}> '
                     f'style="rounded,filled" fillcolor="{fill}" color="#9aa3b5" labeljust=l fontsize=10\n')
        for i in tree.get(key, ()):
            lines.append(f"{pad}\t{view.ids[i]} [{view.attrs[i]}]\n")
        stack.append((key, depth, True))
        stack.extend((k, depth + 1, False) for k in reversed(children.get(key, [])))
    # edges
    cut = set()
    for a, b, attrs in reversed(view.edges):
        if b >= keep:
            continue
        if a >= keep:
            cut.add(b)
            continue
        lines.append(f"\t{view.ids[a]} -> {view.ids[b]}{attrs}\n")
    for a, b in view.hints:
        if a < keep and b < keep:
            lines.append(f"\t{view.ids[a]} -> {view.ids[b]} [style=invis]\n")
    if keep < n:
        lines.append(f'\tmore [label="... {n - keep:,} more nodes" {_STYLE_MORE}]\n')
        for b in sorted(cut):
            lines.append(f'\tmore -> {view.ids[b]} [style=dashed color="#888888"]\n')
    return lines, keep


def draw_graph(tensor, params=None, show_grad=False, rankdir="TB", max_nodes=None, *,
               collapse=False, clusters=None, title=None) -> graphviz.Digraph:
    """Draw the graph that produced ``tensor`` and return it as a ``graphviz.Digraph``.

    ``params``: the model (an ``nn.Module``: parameter names, module clusters, its class name
    as title), or a mapping / iterable of (name, Tensor) pairs naming the parameters.
    ``show_grad``: show ``|g|``, the gradient's L2 norm, on leaves (and on intermediates whose
    grad was retained, see ``retain_grads``). ``rankdir``: "TB" (top to bottom), "LR", "BT", "RL".
    ``max_nodes``: draw only the nodes nearest the output and one "... N more nodes" marker.
    ``collapse``: one node per module (True: the model's direct sub-modules; an int: that
    depth). ``clusters``: group ops by module (default: when a model is given).
    ``title``: the caption (default: the model's class name, with a count of ops and parameters).
    Save with ``.render("graph.svg")`` (or .png/.pdf), or ``.source`` for the DOT text.

    The DOT is deterministic: in the detailed view node ``n<i>`` is the i-th tensor met in a
    breadth-first walk from the output over each op's inputs in order (``n0`` is the output);
    each module's cluster is ``subgraph "cluster_<dotted name>"``; layout-only edges carry
    ``style=invis``; the truncation marker is the node ``more``.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"draw_graph: expects a Tensor; got {type(tensor).__name__}")
    if rankdir not in ("TB", "LR", "BT", "RL"):
        raise ValueError(f"draw_graph: rankdir must be 'TB', 'LR', 'BT' or 'RL'; got {rankdir!r}")
    if max_nodes is not None and (isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes < 1):
        raise ValueError(f"draw_graph: max_nodes must be a positive int or None; got {max_nodes!r}")
    depth = int(collapse) if not isinstance(collapse, bool) else (1 if collapse else 0)
    if depth < 0:
        raise ValueError(f"draw_graph: collapse must be a bool or a depth >= 1; got {collapse!r}")
    names = _Names(params)
    use_clusters = (names.model is not None) if clusters is None else bool(clusters)
    order, parents = tensors(tensor)
    groups = _Clusters(names)
    if depth:
        view = _collapsed_view(order, parents, names, groups, show_grad, depth)
    else:
        view = _detail_view(order, parents, names, groups, show_grad, use_clusters)
    # the output: highlighted
    view.attrs[0] += " " + _STYLE_OUTPUT
    body, kept = _emit(view, groups, max_nodes)

    n_ops = sum(1 for t in order if t._ctx is not None)
    param_leaves = [t for t in order if t._ctx is None and (id(t) in names.params if names.params
                                                             else t.requires_grad)]
    if title is None:
        title = type(names.model).__name__ if names.model is not None else "graph"
    caption = (f"<B>{html.escape(str(title))}</B>  " +
               _font(f"{n_ops:,} ops, {len(param_leaves)} parameter tensors "
                     f"({sum(t.numel() for t in param_leaves):,} values)", 10, "#333333"))
    caption += "<BR/>" + _font("blue: parameters   green: inputs   grey: ops (output shape, dtype)   "
                               "gold: output" + ("   purple: modules" if depth else ""), 9, "#666666")
    if show_grad:
        caption += "<BR/>" + _font(f"|g| = L2 norm of the gradient; red: 0, NaN/inf or > {GRAD_HUGE:.0e}; "
                                   f"orange: < {GRAD_TINY:.0e}", 9, "#666666")
    g = GraphView(
        name=str(title),
        graph_attr={"rankdir": rankdir, "label": f"<{caption}>", "labelloc": "t", "fontname": _FONT,
                    "nodesep": "0.25", "ranksep": "0.3"},
        node_attr={"fontname": _FONT, "fontsize": "10", "margin": "0.08,0.04", "height": "0.3"},
        edge_attr={"arrowsize": "0.6", "color": "#5f6670"},
        body=body)
    g.num_nodes = len(view.ids)     # nodes in the view (before max_nodes)
    g.num_drawn = kept
    return g


# --------------------------------------------------------------------------------------- CLI

PROG = "python -m tinygrad_cnn.viz"


class CliError(Exception):
    """A bad argument or a failure the CLI reports on one line (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CliError(message)


def _parser():
    p = _Parser(prog=PROG, description="Draw the autograd graph of a model's forward (and backward) pass.")
    p.add_argument("model", metavar="MODEL",
                   help="module:Class (e.g. models.seed_cnn:SeedCNN) or a checkpoint .npz (with --model-class)")
    p.add_argument("--input-shape", default="1,3,32,32", help="comma-separated input shape (default 1,3,32,32)")
    p.add_argument("--out", default="graph.svg", help="output file: .svg, .png, .pdf, or .dot for the source only")
    p.add_argument("--grad", action="store_true",
                   help="also run backward (cross-entropy against class 0 for (N, C) outputs, else the sum) "
                        "and show gradient norms")
    p.add_argument("--collapse", action="store_true", help="one node per module of the model")
    p.add_argument("--collapse-depth", type=int, metavar="N",
                   help="with --collapse: one node per module N levels below the model (default 1)")
    p.add_argument("--model-class", help="module:Class of the model a checkpoint holds (required with a checkpoint: "
                   "the file itself never chooses the code that runs)")
    p.add_argument("--randn", action="store_true", help="feed N(0, 1) samples (seed 0) instead of zeros")
    p.add_argument("--rankdir", default="TB", choices=("TB", "LR", "BT", "RL"), help="layout direction")
    p.add_argument("--max-nodes", type=int, help="draw at most this many nodes")
    return p


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _resolve_class(spec):
    from .nn import Module

    if ":" not in spec:
        raise CliError(f"model {spec!r} is neither module:Class (e.g. models.seed_cnn:SeedCNN) nor an "
                       f"existing checkpoint file")
    mod_name, _, cls_name = spec.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise CliError(f"cannot import module {mod_name!r} ({e})") from None
    except Exception as e:
        raise CliError(f"importing module {mod_name!r} failed: {type(e).__name__}: {e}") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise CliError(f"module {mod_name!r} has no attribute {cls_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise CliError(f"{spec} is not an nn.Module subclass")
    return cls


def _construct(cls):
    try:
        return cls()
    except Exception as e:
        raise CliError(f"cannot construct {cls.__name__}() with default arguments: {type(e).__name__}: {e}") from None


def _load_checkpoint(path, model_class):
    """A model from a checkpoint .npz: see docs/graphs.md for the accepted forms."""
    from . import io

    try:
        arrays = io.load_arrays(path)
        class_spec = None
        if "__state__" in arrays and hasattr(io, "load_state"):
            state = io.load_state(path)
            weights = state.get("model") if isinstance(state, dict) else None
            if not isinstance(weights, dict):
                raise CliError(f"{path}: a saved state without model weights under 'model'")
            class_spec = state.get("model_class")
        else:
            weights = dict(arrays)
            entry = weights.pop("__class__", None)
            class_spec = None if entry is None else str(np.asarray(entry))
    except io.CheckpointError as e:
        raise CliError(str(e)) from None
    if not model_class:  # a data file never chooses the code that runs: only the command line does
        if class_spec:
            raise CliError(f"{path} says its model class is {str(class_spec)!r}; a checkpoint never chooses the "
                           f"code that runs, so name it on the command line: --model-class {class_spec}")
        raise CliError(f"{path} does not name its model class; pass --model-class module:Class "
                       f"(e.g. --model-class models.seed_cnn:SeedCNN)")
    model = _construct(_resolve_class(model_class))
    try:
        model.load_state_dict(weights)
    except (KeyError, TypeError) as e:
        raise CliError(f"{path}: {e.args[0]}") from None
    return model


def _parse_shape(text):
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(n < 1 for n in shape):
        raise CliError(f"bad --input-shape {text!r}: expected comma-separated positive integers, e.g. 1,3,32,32")
    return shape


def _run(args):
    from . import functional as F
    from .rng import manual_seed

    shape = _parse_shape(args.input_shape)
    ext = os.path.splitext(args.out)[1].lower().lstrip(".")
    if ext not in IMAGE_FORMATS + ("dot", "gv"):
        raise CliError(f"--out {args.out!r}: the extension must be .svg, .png, .pdf or .dot")
    if args.max_nodes is not None and args.max_nodes < 1:
        raise CliError("--max-nodes must be positive")
    if args.collapse_depth is not None and args.collapse_depth < 1:
        raise CliError("--collapse-depth must be positive")
    collapse = (args.collapse_depth or 1) if (args.collapse or args.collapse_depth) else False
    manual_seed(0)
    if os.path.exists(args.model) or args.model.endswith(".npz"):
        model = _load_checkpoint(args.model, args.model_class)
    else:
        model = _construct(_resolve_class(args.model))
    first = next(iter(model.parameters()), None)
    dtype = first.dtype if first is not None else np.float32
    data = np.random.default_rng(0).standard_normal(shape) if args.randn else np.zeros(shape)
    # requires_grad so that the first op on the input (conv1's im2col) is recorded too
    x = Tensor(data.astype(dtype), requires_grad=True, name="input")
    try:
        out = model(x)
        if not isinstance(out, Tensor):
            raise TypeError(f"forward returned a {type(out).__name__}, not a Tensor")
        root = out
        if args.grad:
            if out.ndim == 2:
                root = F.cross_entropy(out, np.zeros(out.shape[0], dtype=np.int64))
            else:
                root = out.sum()
            root.name = "loss"
            retain_grads(root)  # so that op boxes show |g| too, not only the leaves
            root.backward()
    except CliError:
        raise
    except Exception as e:
        what = "forward/backward" if args.grad else "forward"
        raise CliError(f"{what} of {type(model).__name__} on an input of shape {shape} failed: "
                       f"{type(e).__name__}: {e}") from None
    g = draw_graph(root, params=model, show_grad=args.grad, rankdir=args.rankdir, max_nodes=args.max_nodes,
                   collapse=collapse)
    try:
        if ext in ("dot", "gv"):
            g.save(args.out)
        else:
            g.render(args.out)
    except DotNotFound as e:
        raise CliError(str(e)) from None
    except (graphviz.CalledProcessError, OSError) as e:
        raise CliError(f"writing {args.out} failed: {type(e).__name__}: {e}") from None
    print(f"wrote {args.out}: {g.num_drawn} nodes ({type(model).__name__}, input {_shape(shape)})")
    return 0


def main(argv=None) -> int:
    """The CLI; returns the exit code (0, or 2 after a one-line error on stderr)."""
    try:
        return _run(_parser().parse_args(argv))
    except CliError as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
