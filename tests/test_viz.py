"""Graph views (tinygrad_cnn.viz): one DOT node per graph node and one edge per dependency,
labels, module clusters, the collapsed view, gradient norms, truncation, speed, rendering,
the missing-`dot` path and the CLI's error paths."""
import os
import re
import shutil
import subprocess
import sys
import time

import graphviz
import numpy as np
import pytest

import tinygrad_cnn.functional as F
from models import FastCNN, FCBaseline, SeedCNN
from tinygrad_cnn import Tensor, io, nn
from tinygrad_cnn.graph import tensors
from tinygrad_cnn.viz import DotNotFound, draw_graph, main, retain_grads

HAVE_DOT = shutil.which("dot") is not None
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NODE_RE = re.compile(r"^\s*(n\d+) \[label=(.*)$")
EDGE_RE = re.compile(r"^\s*(n\d+|more) -> (n\d+)(.*)$")


# ------------------------------------------------------------------------------ helpers


def bfs(root):
    """The graph as the engine records it: tensors in BFS order from the output (the shared
    walk, graph.tensors, which tests/test_graph.py checks against a walk of its own), and for
    each op input one (input index, node index) edge."""
    order, inputs = tensors(root)
    return order, [(j, i) for i, ks in enumerate(inputs) for j in ks]


def parse(source):
    """{node id: label line}, [(src, dst)] visible edges, {cluster name: [node ids directly in it]},
    {cluster name: parent cluster name or None}."""
    nodes, edges, members, parent = {}, [], {}, {}
    stack = []
    for line in source.splitlines():
        m = re.match(r'^\s*subgraph "cluster_([^"]+)" \{', line)
        if m:
            name = m.group(1)
            parent[name] = stack[-1] if stack else None
            members[name] = []
            stack.append(name)
            continue
        if line.strip() == "}" and stack:
            stack.pop()
            continue
        m = NODE_RE.match(line)
        if m:
            nodes[m.group(1)] = line
            if stack:
                members[stack[-1]].append(m.group(1))
            continue
        m = EDGE_RE.match(line)
        if m and "invis" not in m.group(3):
            edges.append((m.group(1), m.group(2)))
    return nodes, edges, members, parent


def label_text(line):
    return re.sub(r"<[^>]*>", " ", line)


def seed_forward(requires_grad_input=True, seed=0):
    model = SeedCNN()
    x = Tensor(np.random.default_rng(seed).standard_normal((2, 3, 32, 32)).astype(np.float32),
               requires_grad=requires_grad_input)
    return model, model(x)


# ------------------------------------------------------------------ nodes, edges, labels


def test_one_node_per_graph_node_and_one_edge_per_dependency():
    a = Tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = Tensor([0.5, -1.0, 2.0], requires_grad=True)
    c = a * b + a                  # a used twice
    d = (c.relu() - b * b).sum()   # b * b: the same tensor on both inputs
    order, edges = bfs(d)
    nodes, dot_edges, _, _ = parse(draw_graph(d).source)
    assert len(nodes) == len(order)
    assert sorted(dot_edges) == sorted((f"n{i}", f"n{j}") for i, j in edges)
    assert ("n0" in nodes) and "ffdf80" in nodes["n0"]  # the output is highlighted


def test_counts_match_on_a_model_graph():
    model, out = seed_forward()
    loss = F.cross_entropy(out, np.array([1, 2]))
    order, edges = bfs(loss)
    nodes, dot_edges, _, _ = parse(draw_graph(loss, params=model).source)
    assert len(nodes) == len(order)
    assert len(dot_edges) == len(edges)
    assert sorted(dot_edges) == sorted((f"n{i}", f"n{j}") for i, j in edges)


def test_dot_is_deterministic():
    model, out = seed_forward()
    assert draw_graph(out, params=model).source == draw_graph(out, params=model).source


def test_labels_carry_op_names_args_shapes_dtypes_and_parameter_names():
    model, out = seed_forward()
    loss = F.cross_entropy(out, np.array([1, 2]))
    src = draw_graph(loss, params=model).source
    text = label_text(src)
    for op in ("im2col", "matmul", "max_pool2d", "log_softmax", "reshape", "transpose", "relu", "getitem"):
        assert op in text, op
    assert "axis=-1" in text                # log_softmax
    for name, p in model.named_parameters():
        assert name in text
        assert f"{'x'.join(map(str, p.shape))} float32" in text
    assert "2x3x32x32 float32" in text      # the input
    assert "28x2048 float32" in text        # im2col's output: 27 taps and the ones row
    assert "2x10 float32" in text


# Labels are each op's own (Op.label).


@pytest.mark.parametrize("needle", [
    "im2col k=3x3 s=1 p=1 +ones",  # conv's im2col, with the bias's row of ones
    "max_pool2d k=2x2 s=2 p=0",
    "transpose axes=(1,0,2,3)",
    "log_softmax axis=-1",
])
def test_model_graph_labels_show_each_ops_key_arguments(needle):
    model, out = seed_forward()
    text = label_text(draw_graph(F.cross_entropy(out, np.array([1, 2])), params=model).source)
    assert needle in " ".join(text.split())


def test_dtype_shown_for_float64():
    x = Tensor(np.ones((2, 3)), requires_grad=True)  # float64
    src = draw_graph((x * x).sum(axis=1)).source
    assert "2x3 float64" in src and "2 float64" in src and "axis=1" in label_text(src)


@pytest.mark.parametrize("needle", [
    "pad pad=((0,0),(0,0),(1,1),(2,2)) value=1",
    "im2col k=2x3 s=1x2 p=0", "col2im k=2x3 s=1x2 p=0 1x2x5x8 float64",
    "getitem [:, 0:1, ::2, None]", "pow ^3", "cast to float32",
    "max axis=(0,2) keepdims",
    "log_softmax axis=1", "sum axis=all",
])
def test_every_kind_of_argument_is_formatted(needle):
    x = Tensor(np.arange(24, dtype=np.float64).reshape(1, 2, 3, 4), requires_grad=True)
    y = F.pad(x, ((0, 0), (0, 0), (1, 1), (2, 2)), value=1.0)         # 1x2x5x8
    cols = F.im2col(y, (2, 3), stride=(1, 2), padding=0)              # 12 x 12
    back = F.col2im(cols, y.shape, (2, 3), stride=(1, 2))
    z = (back[:, 0:1, ::2, None] ** 3).astype(np.float32).max(axis=(0, 2), keepdims=True)
    text = label_text(draw_graph(z.log_softmax(axis=1).sum()).source)
    assert needle in " ".join(text.split())


def test_a_label_that_raises_does_not_break_drawing(monkeypatch):
    x = Tensor(np.ones(3), requires_grad=True)
    y = x * 2.0
    monkeypatch.setattr(type(y.grad_fn), "label", lambda self: 1 / 0)
    assert "mul" in label_text(draw_graph(y).source)  # drawn, with the raw parameters (none here)


def test_long_labels_are_clipped_to_one_short_line():
    x = Tensor(np.ones((2,) * 10), requires_grad=True)
    y = x[(slice(0, 1),) * 10]  # "[0:1, 0:1, ...]": 48 characters
    label = label_text(re.search(r"<B>getitem</B> (.*?)<BR/>", draw_graph(y).source).group(1)).strip()
    assert label.startswith("[0:1, 0:1") and len(label) == 40 and label.endswith("...")


def test_params_as_mapping_or_named_parameters_iterable():
    model, out = seed_forward()
    for params in (dict(model.named_parameters()), model.named_parameters()):
        src = draw_graph(out, params=params).source
        assert "conv1.weight" in src and "fc2.bias" in src
        assert "cluster_" not in src  # clusters need the model itself
    with pytest.raises(TypeError):
        draw_graph(out, params={"w": np.zeros(3)})


def test_parameters_inputs_and_intermediates_are_styled_apart():
    model, out = seed_forward()
    nodes, _, _, _ = parse(draw_graph(out, params=model).source)
    order, _ = bfs(out)
    pids = {id(p) for p in model.parameters()}
    for i, t in enumerate(order):
        line = nodes[f"n{i}"]
        if id(t) in pids:
            assert "#cfe3ff" in line           # parameter
        elif t._ctx is None:
            assert "#dcf2d8" in line           # input
        else:
            assert "rounded,filled" in line    # op / intermediate


def test_constant_scalars_show_their_value():
    x = Tensor([1.0, 2.0], requires_grad=True)
    src = draw_graph(x * 0.25 + 3.0).source
    assert "label=<0.25 " in src and "label=<3 " in src


# --------------------------------------------------------------------------------- clusters


def test_clusters_follow_the_module_tree_for_seed_cnn():
    model, out = seed_forward()
    nodes, _, members, parent = parse(draw_graph(out, params=model).source)
    assert set(members) == {"conv1", "conv2", "fc1", "fc2"}
    assert all(p is None for p in parent.values())
    order, _ = bfs(out)
    names = {id(m): n for n, m in model.named_modules()}
    where = {nid: c for c, ids in members.items() for nid in ids}
    for i, t in enumerate(order):
        nid = f"n{i}"
        if t._ctx is not None:
            scope = [names[id(m)] for m in t._ctx.scope if names[id(m)]]
            assert where.get(nid) == (scope[-1] if scope else None), label_text(nodes[nid])
    conv1 = " ".join(label_text(nodes[n]) for n in members["conv1"])
    assert "im2col" in conv1 and "matmul" in conv1 and "conv1.weight" in conv1 and "conv1.bias" in conv1
    assert "conv2.weight" not in conv1
    fc2 = " ".join(label_text(nodes[n]) for n in members["fc2"])
    assert "matmul" in fc2 and "fc2.weight" in fc2 and "im2col" not in fc2
    outside = " ".join(label_text(nodes[n]) for n in nodes if n not in where)
    assert "max_pool2d" in outside and "relu" in outside and "2x3x32x32 float32" in outside


def test_nested_clusters_for_fast_cnn():
    model = FastCNN()
    out = model(Tensor(np.zeros((1, 3, 32, 32), np.float32), requires_grad=True))
    _, _, members, parent = parse(draw_graph(out, params=model).source)
    module_names = {n for n, _ in model.named_modules() if n}
    assert set(members) == module_names
    for name, p in parent.items():
        assert p == (name.rpartition(".")[0] or None)
    assert parent["block3.bn"] == "block3" and parent["block3"] is None


def test_sequential_children_that_ran_without_their_container():
    model = FCBaseline()  # iterates self.layers without calling it: layers.0.. are top-level clusters
    out = model(Tensor(np.zeros((1, 3, 32, 32), np.float32)))
    _, _, members, parent = parse(draw_graph(out, params=model).source)
    assert set(members) == {"layers.0", "layers.1", "layers.2"}
    assert all(p is None for p in parent.values())


def test_module_called_twice_and_modules_outside_the_model():
    from tinygrad_cnn import nn

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(F.relu(self.lin(x)))

    model, extra = Twice(), nn.Linear(4, 2)
    out = extra(model(Tensor(np.ones((1, 4), np.float32))))
    order, edges = bfs(out)
    nodes, dot_edges, members, _ = parse(draw_graph(out, params=model).source)
    assert len(nodes) == len(order) and len(dot_edges) == len(edges)
    assert set(members) == {"lin", "Linear#1"}  # both calls of lin in one cluster; extra by class
    collapsed = parse(draw_graph(out, params=model, collapse=True).source)[0]
    assert sum("box3d" in line for line in collapsed.values()) == 2


def test_collapsed_view_has_one_node_per_module():
    model, out = seed_forward()
    src = draw_graph(out, params=model, collapse=True).source
    nodes, edges, members, _ = parse(src)
    modules = [line for line in nodes.values() if "box3d" in line]
    assert sorted(re.search(r"<B>([^<]+)</B>", m).group(1) for m in modules) == ["conv1", "conv2", "fc1", "fc2"]
    assert "im2col" not in src and "conv1.weight" not in src
    assert "448 params" in src and "out 2x16x32x32 float32" in src
    assert members == {}
    ids = {re.search(r"<B>([^<]+)</B>", line).group(1): n for n, line in nodes.items() if "box3d" in line}
    assert len(edges) == len(set(edges))  # one edge per pair of modules, not per tensor
    assert all(any(e[0] == ids[m] for e in edges) for m in ("conv1", "conv2", "fc1"))
    assert not any(e[0] == ids["fc2"] for e in edges)

    model = FastCNN()
    out = model(Tensor(np.zeros((1, 3, 32, 32), np.float32), requires_grad=True))
    one = parse(draw_graph(out, params=model, collapse=True).source)[0]
    two_src = draw_graph(out, params=model, collapse=2).source
    two, _, members2, _ = parse(two_src)
    assert sum("box3d" in line for line in one.values()) == 6      # block1..5, fc
    assert sum("box3d" in line for line in two.values()) == 11     # block*.conv, block*.bn, fc
    assert set(members2) == {f"block{i}" for i in range(1, 6)}


# ---------------------------------------------------------------------------------- grads


def test_show_grad_shows_norms_after_backward():
    model, out = seed_forward()
    retain_grads(out)
    loss = F.cross_entropy(out, np.array([1, 2]))
    loss.backward()
    src = draw_graph(loss, params=model, show_grad=True).source
    norms = re.findall(r"\|g\|=(\d\.\de[+-]\d\d)", src)
    order, _ = bfs(loss)
    assert len(norms) == sum(t.grad is not None for t in order)
    w = model.conv1.weight
    assert f"|g|={np.linalg.norm(w.grad.astype(np.float64)):.1e}" in src
    assert "L2 norm of the gradient" in src
    assert "|g|" not in draw_graph(loss, params=model).source


@pytest.mark.parametrize("scale,text,color", [(0.0, "|g|=0", "#d62728"), (float("nan"), "|g|=nan", "#d62728"),
                                              (1e6, "|g|=", "#d62728"), (1e-12, "|g|=", "#e67e00")])
def test_bad_gradients_are_marked(scale, text, color):
    w = Tensor(np.ones(4, np.float32), requires_grad=True)
    (w * scale).sum().backward()
    nodes, _, _, _ = parse(draw_graph((w * 1.0).sum(), show_grad=True).source)
    line = next(line for line in nodes.values() if "4 float32" in line and "rounded" not in line)
    assert text in line and f'color="{color}"' in line


def test_leaf_without_grad_says_so():
    w = Tensor(np.ones(3, np.float32), requires_grad=True)
    assert "no grad" in draw_graph((w * 2.0).sum(), show_grad=True).source


# ---------------------------------------------------------------------------- large graphs


def test_max_nodes_truncates_with_a_marker():
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    y = x
    for _ in range(50):
        y = y.tanh()
    g = draw_graph(y, max_nodes=10)
    nodes, edges, _, _ = parse(g.source)
    assert len(nodes) == 10 and set(nodes) == {f"n{i}" for i in range(10)}
    assert "... 41 more nodes" in g.source
    assert ("more", "n9") in edges
    assert draw_graph(y, max_nodes=1000).source.count("more nodes") == 0
    with pytest.raises(ValueError):
        draw_graph(y, max_nodes=0)


def test_ten_thousand_node_graph_builds_fast():
    x = Tensor(np.ones(4, np.float32), requires_grad=True)
    y = x
    for _ in range(9_999):
        y = y.tanh()
    t0 = time.perf_counter()
    src = draw_graph(y).source
    elapsed = time.perf_counter() - t0
    print(f"\n10,000-node graph: DOT built in {elapsed * 1000:.0f} ms")
    assert src.count("[label=") == 10_000
    assert elapsed < 5.0  # ~0.15 s measured; generous for a noisy shared machine


def test_twenty_thousand_op_chain_needs_no_recursion():
    x = Tensor(np.ones(2, np.float32), requires_grad=True)
    y = x
    for _ in range(20_000):
        y = -y
    assert draw_graph(y, max_nodes=50).source.count("more nodes") == 1
    assert len(parse(draw_graph(y).source)[0]) == 20_001


# -------------------------------------------------------------------------------- saving


@pytest.mark.skipif(not HAVE_DOT, reason="Graphviz's dot is not installed")
def test_render_svg(tmp_path):
    model, out = seed_forward()
    g = draw_graph(out, params=model)
    path = g.render(tmp_path / "seed.svg")
    assert os.path.samefile(path, tmp_path / "seed.svg")
    svg = (tmp_path / "seed.svg").read_text()
    assert "<svg" in svg and "conv1.weight" in svg and "im2col" in svg
    assert not (tmp_path / "seed.dot").exists()          # the source is cleaned up
    g.render(tmp_path / "plain", format="svg")           # graphviz's own signature still works
    assert (tmp_path / "plain.svg").exists() and (tmp_path / "plain").exists()


def test_missing_dot_writes_source_and_says_how_to_install(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    x = Tensor([1.0, 2.0], requires_grad=True)
    g = draw_graph((x * x).sum())
    with pytest.raises(DotNotFound) as info:
        g.render(tmp_path / "graph.svg")
    assert isinstance(info.value, graphviz.ExecutableNotFound)
    message = str(info.value)
    assert "apt-get install -y graphviz" in message and "graph.dot" in message
    assert (tmp_path / "graph.dot").read_text().startswith("digraph")


# ----------------------------------------------------------------------------------- CLI


def run_main(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_dot_and_svg(tmp_path, capsys):
    out = tmp_path / "seed.dot"
    code, stdout, err = run_main(["models.seed_cnn:SeedCNN", "--input-shape", "1,3,32,32", "--out", str(out)], capsys)
    assert code == 0, err
    assert "cluster_conv1" in out.read_text() and "wrote" in stdout
    code, _, err = run_main(["models.fc_baseline:FCBaseline", "--grad", "--collapse", "--out", str(tmp_path / "fc.dot")], capsys)
    assert code == 0, err
    src = (tmp_path / "fc.dot").read_text()
    assert "params |g|=" in src and "box3d" in src
    if HAVE_DOT:
        svg = tmp_path / "seed.svg"
        code, _, err = run_main(["models.seed_cnn:SeedCNN", "--out", str(svg), "--grad"], capsys)
        assert code == 0, err
        assert "<svg" in svg.read_text() and "|g|=" in svg.read_text()


def test_cli_checkpoints(tmp_path, capsys):
    model = SeedCNN()
    plain = tmp_path / "plain.npz"
    model.save(plain)
    code, _, err = run_main([str(plain), "--out", str(tmp_path / "a.dot")], capsys)
    assert code == 2 and "--model-class" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main([str(plain), "--model-class", "models.seed_cnn:SeedCNN", "--out",
                             str(tmp_path / "a.dot")], capsys)
    assert code == 0, err
    # a checkpoint that names its class: the name is only a hint, the command line decides
    named = tmp_path / "named.npz"
    np.savez(named, __class__=np.array("models.seed_cnn:SeedCNN"), **model.state_dict())
    state = tmp_path / "state.npz"  # a training checkpoint: weights under "model", class under "model_class"
    io.save_state(state, {"model": model.state_dict(), "model_class": "models.seed_cnn:SeedCNN", "epoch": 3})
    for path in (named, state):
        code, _, err = run_main([str(path), "--out", str(tmp_path / "b.dot")], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert "never chooses the code that runs" in err and "--model-class models.seed_cnn:SeedCNN" in err
        code, _, err = run_main([str(path), "--model-class", "models.seed_cnn:SeedCNN", "--out",
                                 str(tmp_path / "b.dot")], capsys)
        assert code == 0, err
    code, _, err = run_main([str(plain), "--model-class", "models.fc_baseline:FCBaseline", "--out",
                             str(tmp_path / "c.dot")], capsys)
    assert code == 2 and "missing keys" in err


def test_cli_never_imports_a_module_a_checkpoint_names(tmp_path, capsys, monkeypatch):
    """The viz CLI used to import whatever module:Class a checkpoint named: a data file chose
    the code that ran."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_module_17.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for path, write in ((tmp_path / "evil.npz", lambda p: np.savez(p, __class__=np.array("evil_module_17:Net"),
                                                                   w=np.zeros(2))),
                        (tmp_path / "evil_state.npz", lambda p: io.save_state(p, {"model": {"w": np.zeros(2)},
                                                                                  "model_class": "evil_module_17:Net"}))):
        write(path)
        code, _, err = run_main([str(path), "--out", str(tmp_path / "g.dot")], capsys)
        assert code == 2 and "--model-class evil_module_17:Net" in err
    assert not marker.exists() and "evil_module_17" not in sys.modules


def test_dot_output_through_a_symlink_leaves_its_target_alone(tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    for name in ("graph.dot", "graph.svg") if HAVE_DOT else ("graph.dot",):
        link = tmp_path / name
        link.symlink_to(precious)
        code, _, err = run_main(["models.fc_baseline:FCBaseline", "--out", str(link)], capsys)
        assert code == 0, err
        assert precious.read_text() == "keep me"
        assert not link.is_symlink() and link.read_text().lstrip().startswith(("digraph", "<?xml", "<svg"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.skipif(not HAVE_DOT, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("name", ["-Tpng.svg", "-o.svg", "-.svg"])
def test_an_out_starting_with_a_dash_never_reaches_dot_as_an_option(tmp_path, capsys, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(["models.fc_baseline:FCBaseline", f"--out={name}"], capsys)
    assert code == 0, err
    assert (tmp_path / name).read_text().lstrip().startswith(("<?xml", "<svg"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # the source and temp files cleaned up


def test_rendered_files_get_the_umask_mode(tmp_path, capsys):
    old = os.umask(0o027)
    try:
        outs = [tmp_path / "g.dot"] + ([tmp_path / "g.svg"] if HAVE_DOT else [])
        for out in outs:
            assert run_main(["models.fc_baseline:FCBaseline", "--out", str(out)], capsys)[0] == 0
    finally:
        os.umask(old)
    for out in outs:
        assert (out.stat().st_mode & 0o777) == 0o640, out


@pytest.mark.parametrize("argv,needle", [
    (["no_such_module:Net"], "cannot import module 'no_such_module'"),
    (["models.seed_cnn:NoSuchNet"], "has no attribute 'NoSuchNet'"),
    (["models.seed_cnn:seed_init"], "not an nn.Module"),
    (["nonsense"], "neither module:Class"),
    (["models.seed_cnn:SeedCNN", "--input-shape", "1,3,x,32"], "bad --input-shape"),
    (["models.seed_cnn:SeedCNN", "--input-shape", "1,0,32,32"], "bad --input-shape"),
    (["models.seed_cnn:SeedCNN", "--input-shape", "1,3,64,64"], "forward of SeedCNN on an input of shape"),
    (["models.seed_cnn:SeedCNN", "--input-shape", "1,1,32,32"], "channels"),
    (["models.seed_cnn:SeedCNN", "--out", "graph.jpg"], "extension"),
    (["missing.npz"], "no such file"),
    ([], "required"),
    (["models.seed_cnn:SeedCNN", "--bogus"], "unrecognized arguments"),
])
def test_cli_errors_are_one_line(argv, needle, capsys, tmp_path):
    if "--out" not in argv and argv:
        argv = argv + ["--out", str(tmp_path / "g.dot")]
    code, _, err = run_main(argv, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and needle in err


def _cli(args, env=None):
    return subprocess.run([sys.executable, "-m", "tinygrad_cnn.viz", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_subprocess_error_has_no_traceback():
    r = _cli(["models.seed_cnn:SeedCNN", "--input-shape", "2,3,16,16", "--out", "unused.dot"])
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "forward of SeedCNN" in r.stderr


def test_cli_subprocess_missing_dot(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = dict(os.environ, PATH=str(empty))
    r = _cli(["models.seed_cnn:SeedCNN", "--out", str(tmp_path / "g.svg")], env=env)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "apt-get install -y graphviz" in r.stderr
    assert (tmp_path / "g.dot").read_text().startswith("digraph")


def test_batch_norm_label_shows_eps_and_momentum_not_the_running_arrays():
    bn = nn.BatchNorm2d(3)
    text = label_text(draw_graph(bn(Tensor(np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32))),
                                 params=bn).source)
    assert "batch_norm" in text and "eps=1e-05 momentum=0.1" in text
    assert "running" not in text


def test_grad_norm_reads_gradient_tensors_and_device_arrays():
    from tinygrad_cnn.viz import grad_norm

    assert grad_norm(Tensor(np.array([3.0, 4.0], np.float32))) == 5.0

    class DeviceArray:  # what a CuPy array offers: .get() copies it to the host
        def get(self):
            return np.array([6.0, 8.0])

    assert grad_norm(Tensor._wrap(DeviceArray(), False)) == 10.0
    assert grad_norm(np.array([np.inf, 1.0])) == np.inf
