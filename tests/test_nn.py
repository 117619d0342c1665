"""nn: Module registration and traversal, PyTorch's names and shapes, state_dict / strict load,
atomic ``.npz`` save/load, nested checkpoints, default init, BatchNorm2d and Dropout.

Torch (CPU, float64) is an optional oracle: the tests that use it skip cleanly without it."""
from __future__ import annotations

import math
import os
import zipfile

import numpy as np
import pytest

import tinygrad_cnn as tc
import tinygrad_cnn.functional as F
from tinygrad_cnn import Tensor, nn, optim
from tinygrad_cnn.io import CheckpointError, load_arrays, load_state, save_arrays, save_state
from tinygrad_cnn.rng import default_generator, get_state, manual_seed, set_state

try:  # optional oracle
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed (optional oracle)")


class Net(nn.Module):
    """Two named layers, a Sequential, a BatchNorm (buffers) and a plain attribute."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.features = nn.Sequential(nn.Conv2d(4, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 5))
        self.scale = 2.0  # a plain attribute: not registered

    def forward(self, x):
        return self.features(self.bn(self.conv1(x))) * self.scale


NET_KEYS = ["conv1.weight", "conv1.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
            "bn.num_batches_tracked", "features.0.weight", "features.0.bias", "features.3.weight",
            "features.3.bias"]


def _x(shape=(2, 3, 4, 4), seed=0, dtype=np.float32):
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


# ------------------------------------------------------------------------ registration


def test_assignment_registers_parameters_and_modules():
    m = Net()
    assert list(m._parameters) == []
    assert list(dict(m.named_children())) == ["conv1", "bn", "features"]
    assert [type(c).__name__ for c in m.children()] == ["Conv2d", "BatchNorm2d", "Sequential"]
    assert m.scale == 2.0 and "scale" not in m._parameters and "scale" not in m._modules
    names = [n for n, _ in m.named_parameters()]
    assert names == ["conv1.weight", "conv1.bias", "bn.weight", "bn.bias", "features.0.weight",
                     "features.0.bias", "features.3.weight", "features.3.bias"]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in m.parameters())
    assert len(list(m.parameters())) == len(names)
    # modules(): self first, depth first, each once
    assert [type(x).__name__ for x in m.modules()] == [
        "Net", "Conv2d", "BatchNorm2d", "Sequential", "Conv2d", "ReLU", "Flatten", "Linear"]
    assert [n for n, _ in m.named_modules()] == ["", "conv1", "bn", "features", "features.0", "features.1",
                                                  "features.2", "features.3"]
    # attribute access goes to the registered objects
    assert m.conv1.weight is dict(m.named_parameters())["conv1.weight"]
    assert m.features[3] is dict(m.named_modules())["features.3"]


def test_reassignment_replaces_and_delete_unregisters():
    m = Net()
    old = m.conv1
    m.conv1 = nn.Conv2d(3, 4, 1)
    assert m.conv1 is not old and m.conv1.weight.shape == (4, 3, 1, 1)
    assert [n for n, _ in m.named_children()][0] == "conv1"
    # a registered name re-assigned to a plain value stops being a module
    m.conv1 = None
    assert "conv1" not in m._modules and m.conv1 is None
    assert not any(n.startswith("conv1.") for n, _ in m.named_parameters())
    m.extra = nn.Parameter(np.zeros(3, np.float32))
    assert "extra" in dict(m.named_parameters())
    del m.extra
    assert "extra" not in dict(m.named_parameters())
    with pytest.raises(AttributeError):
        m.extra


def test_missing_super_init_is_a_clear_error():
    class Bad(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match="super"):
        Bad()


def test_shared_parameter_listed_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 3)
            self.b.weight = self.a.weight

    t = Tied()
    assert [n for n, _ in t.named_parameters()] == ["a.weight", "a.bias", "b.bias"]
    assert t.num_parameters() == 9 + 3 + 3


def test_call_runs_forward_and_base_forward_is_abstract():
    m = nn.Linear(3, 2)
    x = _x((4, 3))
    np.testing.assert_array_equal(m(x).data, m.forward(x).data)
    with pytest.raises(NotImplementedError):
        nn.Module()(x)


def test_train_eval_and_zero_grad():
    m = Net()
    assert all(x.training for x in m.modules())
    assert m.eval() is m
    assert not any(x.training for x in m.modules())
    m.train()
    assert all(x.training for x in m.modules())
    m.train(False)
    assert not m.bn.training
    m.train()
    out = m(_x()).sum()
    out.backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    m(_x()).sum().backward()
    kept = [p.grad.data for p in m.parameters()]
    m.zero_grad(set_to_none=False)  # zeros, in the same arrays
    for p, g in zip(m.parameters(), kept):
        assert p.grad.data is g
        np.testing.assert_array_equal(p.grad, 0)


def test_sequential_indexing_and_type_check():
    s = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert len(s) == 3 and isinstance(s[1], nn.ReLU)
    assert [n for n, _ in s.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    head = s[:2]
    assert isinstance(head, nn.Sequential) and len(head) == 2 and head[0] is s[0]
    assert list(iter(s)) == [s[0], s[1], s[2]]
    x = _x((5, 3))
    np.testing.assert_allclose(s(x).data, s[2](s[1](s[0](x))).data)
    with pytest.raises(TypeError, match="item 1"):
        nn.Sequential(nn.ReLU(), lambda x: x)


def test_simple_layers():
    x = _x((2, 3, 4, 4))
    np.testing.assert_array_equal(nn.ReLU()(x).data, np.maximum(x.data, 0))
    np.testing.assert_array_equal(nn.Identity()(x).data, x.data)
    assert nn.Flatten()(x).shape == (2, 48)
    p = nn.MaxPool2d(2)(x)
    np.testing.assert_array_equal(p.data, x.data.reshape(2, 3, 2, 2, 2, 2).max(axis=(3, 5)))
    assert "kernel_size=2" in repr(nn.MaxPool2d(2))
    assert repr(nn.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True)) == \
        "MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True)"
    a = nn.AvgPool2d(2)(x)
    np.testing.assert_allclose(a.data, x.data.reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5)))
    assert repr(nn.AvgPool2d(3, 2, 1, count_include_pad=False)) == \
        "AvgPool2d(kernel_size=3, stride=2, padding=1, count_include_pad=False)"
    g = nn.AdaptiveAvgPool2d(1)(x)
    assert g.shape == (2, 3, 1, 1) and repr(nn.AdaptiveAvgPool2d(1)) == "AdaptiveAvgPool2d(output_size=1)"
    np.testing.assert_allclose(g.data[:, :, 0, 0], x.data.mean(axis=(2, 3)))
    m = nn.AdaptiveMaxPool2d((1, 2))(x)
    np.testing.assert_array_equal(m.data, x.data.reshape(2, 3, 4, 2, 2).max(axis=(2, 4))[:, :, None, :])
    r = repr(Net())
    assert "(conv1): Conv2d(3, 4" in r and "(features): Sequential" in r and "(3): Linear(in_features=32" in r


# ------------------------------------------------------------------------ shapes and init


def test_weight_shapes_match_pytorch_layout():
    assert nn.Linear(7, 3).weight.shape == (3, 7) and nn.Linear(7, 3).bias.shape == (3,)
    c = nn.Conv2d(3, 8, (5, 3))
    assert c.weight.shape == (8, 3, 5, 3) and c.bias.shape == (8,)
    assert nn.Linear(7, 3, bias=False).bias is None
    assert [n for n, _ in nn.Conv2d(3, 8, 3, bias=False).named_parameters()] == ["weight"]
    bn = nn.BatchNorm2d(6)
    assert {k: v.shape for k, v in bn.state_dict().items()} == {
        "weight": (6,), "bias": (6,), "running_mean": (6,), "running_var": (6,), "num_batches_tracked": ()}
    assert bn.state_dict()["num_batches_tracked"].dtype == np.int64


@pytest.mark.parametrize("make,fan_in", [(lambda: nn.Linear(400, 300), 400),
                                         (lambda: nn.Conv2d(16, 64, 5), 16 * 25)])
def test_default_init_is_pytorch_kaiming_uniform(make, fan_in):
    manual_seed(0)
    layer = make()
    bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) and PyTorch's bias bound
    for p in (layer.weight, layer.bias):
        assert p.dtype == np.float32
        assert np.abs(p.data).max() <= bound
        assert np.abs(p.data).max() > 0.9 * bound
    w = layer.weight.data
    assert abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound  # U(-b, b) has std b/sqrt(3)
    assert abs(w.mean()) < 0.02 * bound


def test_init_is_seedable():
    manual_seed(123)
    a = Net().state_dict()
    manual_seed(123)
    b = Net().state_dict()
    manual_seed(124)
    c = Net().state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])
    # an explicit generator overrides the default one and leaves it untouched
    state = get_state()
    l1 = nn.Linear(5, 5, rng=np.random.default_rng(7))
    l2 = nn.Linear(5, 5, rng=np.random.default_rng(7))
    assert get_state() == state
    np.testing.assert_array_equal(l1.weight.data, l2.weight.data)
    # get_state / set_state replay the stream
    s = get_state()
    x1 = default_generator().random(4)
    set_state(s)
    np.testing.assert_array_equal(default_generator().random(4), x1)


@needs_torch
def test_default_init_distribution_matches_torch():
    torch.manual_seed(0)
    tw = torch.nn.Conv2d(16, 64, 5).weight.detach().numpy()
    ours = nn.Conv2d(16, 64, 5, rng=np.random.default_rng(0)).weight.data
    assert ours.shape == tw.shape
    assert abs(ours.std() - tw.std()) < 0.03 * tw.std()
    assert abs(np.abs(ours).max() - np.abs(tw).max()) < 0.01 * np.abs(tw).max()


def test_astype_converts_parameters_and_float_buffers():
    m = Net().astype(np.float64)
    sd = m.state_dict()
    assert all(sd[k].dtype == np.float64 for k in sd if k != "bn.num_batches_tracked")
    assert sd["bn.num_batches_tracked"].dtype == np.int64
    assert m(_x(dtype=np.float64)).dtype == np.float64


# ------------------------------------------------------------------------ state_dict


def test_state_dict_names_order_and_copies():
    m = Net()
    sd = m.state_dict()
    assert list(sd) == NET_KEYS
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    sd["conv1.weight"][...] = 0  # a copy: the model is untouched
    assert np.abs(m.conv1.weight.data).sum() > 0
    # buffers are included and reflect training
    m(_x())
    sd = m.state_dict()
    assert int(sd["bn.num_batches_tracked"]) == 1
    assert np.abs(sd["bn.running_mean"]).sum() > 0


def test_state_dict_round_trip():
    a, b = Net(), Net()
    a(_x())  # move the running stats
    result = b.load_state_dict(a.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])
        assert sa[k].dtype == sb[k].dtype
    a.eval(), b.eval()
    x = _x(seed=3)
    np.testing.assert_array_equal(a(x).data, b(x).data)
    # loaded values are copies, not aliases of the dict
    sd = a.state_dict()
    b.load_state_dict(sd)
    sd["conv1.weight"][...] = 0
    assert np.abs(b.conv1.weight.data).sum() > 0


def test_load_state_dict_writes_in_place_and_stales_a_graph_that_read_the_old_values():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    weight = b.weight.data
    loss = b(Tensor(np.ones((4, 3), np.float32))).sum()  # the graph holds b's arrays (read-only)
    b.load_state_dict(a.state_dict())
    assert b.weight.data is weight  # in place, as PyTorch's copy_
    np.testing.assert_array_equal(b.weight.data, a.weight.data)
    with pytest.raises(RuntimeError, match="modified in place.*written by Linear.load_state_dict"):
        loss.backward()
    b.load_state_dict({k: v.astype(np.float64) for k, v in a.state_dict().items()})
    assert b.weight.dtype == np.float32  # values are cast to the parameter's dtype
    b.weight.data.flags.writeable = False  # read-only for a reason of its own: replaced instead
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(b.weight.data, a.weight.data)


def test_strict_load_names_every_missing_unexpected_and_wrong_shaped_key():
    m = Net()
    sd = m.state_dict()
    del sd["conv1.bias"], sd["bn.running_var"]
    sd["features.9.weight"] = np.zeros(3, np.float32)
    sd["fc.bias"] = np.zeros(3, np.float32)
    sd["features.3.weight"] = np.zeros((5, 31), np.float32)
    before = m.state_dict()
    with pytest.raises(KeyError) as e:
        m.load_state_dict(sd)
    msg = str(e.value)
    for key in ("conv1.bias", "bn.running_var", "features.9.weight", "fc.bias", "features.3.weight"):
        assert key in msg
    assert "missing" in msg and "unexpected" in msg and "shape" in msg
    assert "(5, 32)" in msg and "(5, 31)" in msg
    after = m.state_dict()  # an error changes nothing
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_non_strict_load_reports_keys_but_still_rejects_shapes():
    m = Net()
    sd = m.state_dict()
    new_w = np.ones_like(sd["conv1.weight"])
    partial = {"conv1.weight": new_w, "other": np.zeros(1)}
    missing, unexpected = m.load_state_dict(partial, strict=False)
    assert unexpected == ["other"]
    assert set(missing) == set(NET_KEYS) - {"conv1.weight"}
    np.testing.assert_array_equal(m.conv1.weight.data, new_w)
    with pytest.raises(KeyError, match="conv1.weight"):
        m.load_state_dict({"conv1.weight": np.ones((1, 2))}, strict=False)


def test_load_keeps_parameter_dtype_and_identity():
    m = nn.Linear(3, 2)
    p = m.weight
    m.load_state_dict({"weight": np.ones((2, 3), np.float64), "bias": np.zeros(2, np.float64)})
    assert m.weight is p and m.weight.dtype == np.float32  # optimizers keep pointing at it


# ------------------------------------------------------------------------ save / load files


def test_save_load_round_trip(tmp_path):
    a = Net()
    a(_x())
    path = tmp_path / "net.npz"
    a.save(path)
    with np.load(path, allow_pickle=False) as f:  # plain arrays, no pickled objects
        assert sorted(f.files) == sorted(NET_KEYS)
    b = Net()
    b.load(path)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
    assert [p.name for p in tmp_path.iterdir()] == ["net.npz"]  # no temp files left behind
    # loading into the wrong model names the file and the keys
    with pytest.raises(CheckpointError) as e:
        nn.Linear(3, 2).load(path)
    assert str(path) in str(e.value) and "conv1.weight" in str(e.value)


def test_load_of_truncated_or_corrupt_file_raises_checkpoint_error_naming_it(tmp_path):
    good = tmp_path / "good.npz"
    Net().save(good)
    raw = good.read_bytes()
    cases = {"truncated.npz": raw[: len(raw) // 2], "empty.npz": b"", "garbage.npz": b"not a zip file" * 10}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as e:
            Net().load(path)
        assert str(path) in str(e.value), name
    # a corrupt member (zeroed bytes inside the stored payload) is caught too
    flipped = bytearray(raw)
    mid = len(flipped) // 2
    flipped[mid:mid + 64] = bytes(64)
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError) as e:  # the zip members' CRC-32 catches it
        Net().load(bad)
    assert str(bad) in str(e.value)
    missing = tmp_path / "nope.npz"
    with pytest.raises(CheckpointError, match="nope.npz"):
        Net().load(missing)


def test_pickled_npz_is_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, weight=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="obj.npz"):
        load_arrays(path)
    with pytest.raises(TypeError, match="Python object"):
        save_arrays(tmp_path / "x.npz", {"w": np.array([None], dtype=object)})


def test_crash_mid_save_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    old = Net()
    old.save(path)
    old_bytes = path.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        Net().save(path)
    assert path.read_bytes() == old_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]  # temp file removed
    monkeypatch.undo()
    loaded = Net()
    loaded.load(path)
    np.testing.assert_array_equal(loaded.conv1.weight.data, old.conv1.weight.data)


def test_crash_mid_write_after_partial_output_leaves_old_file(tmp_path, monkeypatch):
    """The temp file gets half-written before the failure: the target is still the old one."""
    path = tmp_path / "model.npz"
    Net().save(path)
    old_bytes = path.read_bytes()
    real = np.savez

    def half(file, **arrays):
        file.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", half)
    with pytest.raises(KeyboardInterrupt):
        Net().save(path)
    monkeypatch.setattr(np, "savez", real)
    assert path.read_bytes() == old_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


# ------------------------------------------------------------------------ nested checkpoints


def test_save_state_round_trip(tmp_path):
    state = {
        "format": 1, "name": "run", "none": None, "flag": True, "ratio": 0.25,
        "big": 2**62, "np_int": np.int64(7), "np_float": np.float32(1.5),
        "model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.zeros((), np.int64)},
        "history": [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}],
        "pair": (1, "a"), "opt": {"state": {0: {"step": 3, "exp_avg": np.ones(4)}}, "param_groups": []},
        "rng": default_generator().bit_generator.state,
    }
    path = tmp_path / "ckpt.npz"
    save_state(path, state)
    back = load_state(path)
    assert back["format"] == 1 and back["name"] == "run" and back["none"] is None and back["flag"] is True
    assert back["ratio"] == 0.25 and back["big"] == 2**62
    assert back["np_int"] == 7 and back["np_int"].dtype == np.int64
    assert back["np_float"] == 1.5 and back["np_float"].dtype == np.float32
    np.testing.assert_array_equal(back["model"]["w"], state["model"]["w"])
    assert back["model"]["w"].dtype == np.float32
    assert back["history"] == state["history"]
    assert back["pair"] == (1, "a") and isinstance(back["pair"], tuple)
    np.testing.assert_array_equal(back["opt"]["state"][0]["exp_avg"], np.ones(4))  # int keys survive
    assert back["rng"] == state["rng"]
    with np.load(path, allow_pickle=False) as f:  # readable without pickle
        assert "__state__" in f.files


def test_save_state_rejects_objects_and_load_state_checks_structure(tmp_path):
    with pytest.raises(TypeError, match="cannot store"):
        save_state(tmp_path / "x.npz", {"f": object()})
    assert not (tmp_path / "x.npz").exists()
    plain = tmp_path / "plain.npz"
    save_arrays(plain, {"w": np.zeros(2)})
    with pytest.raises(CheckpointError, match="plain.npz"):
        load_state(plain)
    trunc = tmp_path / "trunc.npz"
    save_state(trunc, {"w": np.zeros(1000)})
    trunc.write_bytes(trunc.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="trunc.npz"):
        load_state(trunc)


def _train_steps(model, opt, xs, ys):
    for x, y in zip(xs, ys):
        loss = F.cross_entropy(model(Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("make_opt", [
    lambda p: optim.Adam(p, lr=1e-2),
    lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
])
def test_optimizer_state_restored_through_checkpoint(tmp_path, make_opt):
    """Train 2 steps, checkpoint model+optimizer, restore into fresh objects, train 2 more:
    bit-identical to 4 uninterrupted steps."""
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((4, 8, 6)).astype(np.float32)
    ys = rng.integers(0, 3, (4, 8))

    def make():
        manual_seed(5)
        m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
        return m, make_opt(list(m.parameters()))

    ref, ref_opt = make()
    _train_steps(ref, ref_opt, xs, ys)

    a, a_opt = make()
    _train_steps(a, a_opt, xs[:2], ys[:2])
    save_state(tmp_path / "ck.npz", {"model": dict(a.state_dict()), "optimizer": a_opt.state_dict()})
    state = load_state(tmp_path / "ck.npz")
    b, b_opt = make()
    b.load_state_dict(state["model"])
    b_opt.load_state_dict(state["optimizer"])
    _train_steps(b, b_opt, xs[2:], ys[2:])
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)
    # without restoring the optimizer the run differs (the test has teeth)
    c, _ = make()
    c.load_state_dict(state["model"])
    _train_steps(c, make_opt(list(c.parameters())), xs[2:], ys[2:])
    assert not np.array_equal(c.state_dict()["0.weight"], ref.state_dict()["0.weight"])


# ------------------------------------------------------------------------ gradients


def test_conv_filters_get_nonzero_gradients_and_change_after_a_step():
    manual_seed(0)
    m = Net()
    opt = optim.SGD(list(m.parameters()), lr=0.1)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    loss = F.cross_entropy(m(_x((4, 3, 4, 4))), np.array([0, 1, 2, 3]))
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
        if name != "conv1.bias":
            assert np.abs(p.grad.data).sum() > 1e-4, name
    # conv1 feeds a BatchNorm, which removes any per-channel shift: its bias gets ~0 gradient
    np.testing.assert_allclose(m.conv1.bias.grad, 0, atol=1e-5)
    assert np.all(np.abs(m.conv1.weight.grad.data).reshape(4, -1).sum(axis=1) > 0)  # every filter
    opt.step()
    after = m.state_dict()
    for name in ("conv1.weight", "features.0.weight", "features.0.bias", "bn.weight"):
        assert not np.array_equal(before[name], after[name]), name


# ------------------------------------------------------------------------ BatchNorm2d


def test_batchnorm_train_normalises_and_tracks_running_stats():
    bn = nn.BatchNorm2d(3, momentum=0.2)
    x = _x((8, 3, 5, 5), seed=1, dtype=np.float64) * 3 + 1
    bn.astype(np.float64)
    y = bn(x).data
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-3)
    n = 8 * 25
    mean, var = x.data.mean(axis=(0, 2, 3)), x.data.var(axis=(0, 2, 3)) * n / (n - 1)
    np.testing.assert_allclose(bn.running_mean, 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.8 + 0.2 * var, rtol=1e-12)
    assert int(bn.num_batches_tracked) == 1
    bn.eval()
    y = bn(x).data
    expected = (x.data - bn.running_mean[None, :, None, None]) / np.sqrt(bn.running_var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    assert int(bn.num_batches_tracked) == 1  # eval does not count
    with pytest.raises(ValueError, match="BatchNorm2d"):
        bn(_x((2, 4, 3, 3)))


@needs_torch
@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_batchnorm_matches_torch_train_and_eval(momentum):
    rng = np.random.default_rng(0)
    ours = nn.BatchNorm2d(4, momentum=momentum).astype(np.float64)
    theirs = torch.nn.BatchNorm2d(4, momentum=momentum).double()
    w, b = rng.standard_normal(4) + 1, rng.standard_normal(4)
    ours.load_state_dict({**ours.state_dict(), "weight": w, "bias": b})
    theirs.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in ours.state_dict().items()})
    assert list(ours.state_dict()) == list(theirs.state_dict())

    for step in range(3):  # several training batches: running stats accumulate
        xn = rng.standard_normal((5, 4, 3, 3)) * (step + 1) + step
        g = rng.standard_normal((5, 4, 3, 3))
        x = Tensor(xn, requires_grad=True)
        tx = torch.tensor(xn, requires_grad=True)
        y, ty = ours(x), theirs(tx)
        np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
        (y * Tensor(g)).sum().backward()
        (ty * torch.from_numpy(g)).sum().backward()
        np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-9, atol=1e-11)
        ours.zero_grad()
        theirs.zero_grad()
    sd_t = theirs.state_dict()
    for k, v in ours.state_dict().items():
        np.testing.assert_allclose(v, sd_t[k].numpy(), rtol=1e-12, atol=0, err_msg=k)
    assert int(ours.num_batches_tracked) == int(sd_t["num_batches_tracked"]) == 3

    ours.eval(), theirs.eval()
    xn = rng.standard_normal((2, 4, 3, 3))
    x, tx = Tensor(xn, requires_grad=True), torch.tensor(xn, requires_grad=True)
    y, ty = ours(x), theirs(tx)
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    y.sum().backward()
    ty.sum().backward()
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-10)
    assert int(ours.num_batches_tracked) == 3


def test_batchnorm_gradient_comes_from_the_graph():
    """Finite differences agree with backward (the op is composed of primitives)."""
    bn = nn.BatchNorm2d(2).astype(np.float64)
    bn.weight.data[:] = [1.5, -0.5]
    rng = np.random.default_rng(1)
    xn = rng.standard_normal((3, 2, 2, 2))
    g = rng.standard_normal(xn.shape)

    def f(a):
        b = nn.BatchNorm2d(2).astype(np.float64)
        b.weight.data[:] = bn.weight.data
        return float((b(Tensor(a)).data * g).sum())

    x = Tensor(xn, requires_grad=True)
    (bn(x) * Tensor(g)).sum().backward()
    eps, num = 1e-6, np.zeros_like(xn)
    for i in np.ndindex(xn.shape):
        d = np.zeros_like(xn)
        d[i] = eps
        num[i] = (f(xn + d) - f(xn - d)) / (2 * eps)
    np.testing.assert_allclose(x.grad, num, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------ Dropout


def test_dropout_eval_is_identity():
    d = nn.Dropout(0.5).eval()
    x = _x((4, 5))
    assert d(x) is x or np.array_equal(d(x).data, x.data)


def test_dropout_train_zeroes_about_p_and_scales_the_rest():
    for p in (0.2, 0.5, 0.8):
        d = nn.Dropout(p, rng=np.random.default_rng(0))
        x = Tensor(np.ones((200, 500), np.float32), requires_grad=True)
        y = d(x)
        zero = y.data == 0
        assert abs(zero.mean() - p) < 0.01, p
        np.testing.assert_allclose(y.data[~zero], 1.0 / (1.0 - p), rtol=1e-6)
        assert abs(y.data.mean() - 1.0) < 0.03  # inverted: expectation preserved
        y.sum().backward()  # gradient flows through the kept elements only, scaled
        np.testing.assert_allclose(x.grad, np.where(zero, 0.0, 1.0 / (1.0 - p)), rtol=1e-6)
    x = _x((3, 3))
    np.testing.assert_array_equal(nn.Dropout(0.0)(x).data, x.data)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="p must"):
            nn.Dropout(bad)


def test_dropout_same_seed_same_mask():
    x = Tensor(np.ones((50, 50), np.float32))
    a = nn.Dropout(0.5, rng=np.random.default_rng(3))(x).data
    b = nn.Dropout(0.5, rng=np.random.default_rng(3))(x).data
    c = nn.Dropout(0.5, rng=np.random.default_rng(4))(x).data
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # with the framework's default generator: manual_seed makes it repeatable
    d = nn.Dropout(0.5)
    manual_seed(11)
    m1 = d(x).data
    m2 = d(x).data
    manual_seed(11)
    np.testing.assert_array_equal(d(x).data, m1)
    np.testing.assert_array_equal(d(x).data, m2)
    assert not np.array_equal(m1, m2)  # successive calls draw fresh masks


# ------------------------------------------------------------------------ torch interchange


@needs_torch
def test_state_dict_moves_to_and_from_torch():
    manual_seed(0)
    ours = Net()
    ours(_x())  # non-trivial running stats

    tnet = torch.nn.Module()
    tnet.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
    tnet.bn = torch.nn.BatchNorm2d(4)
    tnet.features = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1), torch.nn.ReLU(), torch.nn.Flatten(),
                                        torch.nn.Linear(32, 5))
    tsd = tnet.state_dict()
    sd = ours.state_dict()
    assert list(sd) == list(tsd)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in tsd.items()}
    tnet.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
    # and back: torch's state_dict, converted to numpy, loads strictly into ours
    back = Net()
    back.load_state_dict({k: v.numpy() for k, v in tnet.state_dict().items()})
    for k in sd:
        np.testing.assert_array_equal(back.state_dict()[k], sd[k])
    ours.eval(), tnet.eval()
    x = _x(seed=9)
    with torch.no_grad():
        t = tnet.features(tnet.bn(tnet.conv1(torch.from_numpy(x.data)))) * 2.0
    np.testing.assert_allclose(ours(x).data, t.numpy(), rtol=1e-4, atol=1e-5)


def test_no_grad_forward_records_nothing():
    m = Net()
    with tc.no_grad():
        y = m(_x())
    assert y.grad_fn is None and not y.requires_grad


def test_save_creates_missing_directories(tmp_path):
    path = tmp_path / "a" / "b" / "m.npz"
    nn.Linear(2, 2).save(path)
    assert path.exists() and zipfile.is_zipfile(path)
    assert os.listdir(path.parent) == ["m.npz"]
