"""models/resnet.py: He et al.'s CIFAR ResNets and Page's ResNet-9 — sizes, structure, init,
PyTorch twins (benchmarks/torch_twins.py) taking our state_dict and giving theirs (same logits
and parameter gradients in float64, train and eval mode, batch 1 and an odd batch), and short
real training runs through the CLI on fabricated data. Also ``init.kaiming_normal_``."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import tinygrad_cnn.functional as F
import train.cifar10 as tr
from benchmarks.torch_twins import torch_model
from models import MODELS
from models.resnet import BasicBlock, ResNet9, ResNetCifar, resnet20, resnet32, resnet44, resnet56, resnet110
from tinygrad_cnn import Tensor, init, manual_seed
from tinygrad_cnn.io import load_state
from test_train_cli import FakeClock, _interrupt_at, _main, _metrics, _no_plots, _untimed, loads  # noqa: F401


def _images(n, size=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size))


# ------------------------------------------------------------------------ structure


def test_resnet20_has_the_papers_0_27m_parameters_and_its_layers():
    m = resnet20()
    assert m.num_parameters() == 269_722  # "0.27M" (He et al., table 6)
    # 19 convolutions (1 + 3 stages x 3 blocks x 2) and the linear layer: 20 weighted layers
    convs = [mod for mod in m.modules() if type(mod).__name__ == "Conv2d"]
    assert len(convs) == 19 and all(c.bias is None and c.kernel_size == (3, 3) for c in convs)
    assert [len(s) for s in (m.layer1, m.layer2, m.layer3)] == [3, 3, 3]
    assert [s[0].conv1.stride for s in (m.layer1, m.layer2, m.layer3)] == [(1, 1), (2, 2), (2, 2)]
    assert [s[-1].conv2.out_channels for s in (m.layer1, m.layer2, m.layer3)] == [16, 32, 64]
    assert m.fc.weight.shape == (10, 64) and m.fc.bias is not None
    # option A: the shortcuts have no parameters
    assert all(not k.startswith(("layer2.0.shortcut", "layer3.0.shortcut")) for k in m.state_dict())
    assert "downsample" not in "".join(m.state_dict())


@pytest.mark.parametrize("factory, depth, params", [(resnet32, 32, 464_154), (resnet44, 44, 658_586),
                                                    (resnet56, 56, 853_018), (resnet110, 110, 1_727_962)])
def test_deeper_resnets_have_the_papers_sizes(factory, depth, params):
    m = factory()  # He et al. table 6: 0.46M, 0.66M, 0.85M, 1.7M
    assert m.depth == depth and m.num_parameters() == params == ResNetCifar(depth).num_parameters()
    assert len(m.layer3) == (depth - 2) // 6


@pytest.mark.parametrize("depth", [0, 7, 9, 21, 20.0, True, "20"])
def test_depth_must_be_6n_plus_2(depth):
    with pytest.raises(ValueError, match=r"ResNetCifar: depth must be 6n \+ 2 .* got"):
        ResNetCifar(depth)


def test_option_a_shortcut_subsamples_and_zero_pads_the_channels():
    block = BasicBlock(16, 32, stride=2)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 16, 7, 7)))
    s = block.shortcut(x).data
    assert s.shape == (2, 32, 4, 4)
    assert not s[:, :8].any() and not s[:, 24:].any()  # 8 zero channels before, 8 after
    np.testing.assert_array_equal(s[:, 8:24], x.data[:, :, ::2, ::2])
    assert block(Tensor(x.data.astype(np.float32))).shape == (2, 32, 4, 4)
    identity = BasicBlock(16, 16)
    assert identity.shortcut(x) is x


def test_stage_shapes_and_the_global_pools():
    m = resnet20()
    x = Tensor(_images(2).astype(np.float32))
    x = F.relu(m.bn1(m.conv1(x)))
    shapes = []
    for stage in (m.layer1, m.layer2, m.layer3):
        x = stage(x)
        shapes.append(x.shape)
    assert shapes == [(2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)]
    np.testing.assert_allclose(m.fc(x.mean((2, 3))).data, m(Tensor(_images(2).astype(np.float32))).data,
                               rtol=1e-5, atol=1e-6)


def test_resnet9_is_pages_net():
    m = ResNet9()
    assert m.num_parameters() == 6_573_120
    widths = [(m.prep.conv.in_channels, m.prep.conv.out_channels), (m.layer1.conv.out_channels,),
              (m.layer2.conv.out_channels,), (m.layer3.conv.out_channels,)]
    assert widths == [(3, 64), (128,), (256,), (512,)]
    assert m.fc.weight.shape == (10, 512) and m.fc.bias is None and m.scale == 0.125
    assert all(c.bias is None for c in m.modules() if type(c).__name__ == "Conv2d")
    assert sorted(k for k in m.state_dict() if k.startswith("res1.")) == sorted(
        f"res1.{r}.{p}" for r in ("res1", "res2") for p in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean",
                                                           "bn.running_var", "bn.num_batches_tracked"))


def test_the_registry_and_the_models_other_inputs():
    assert MODELS["resnet20"] is resnet20 and MODELS["resnet9"] is ResNet9
    gray = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    assert resnet20(in_channels=1, image_size=28)(Tensor(gray)).shape == (3, 10)
    assert ResNet9(in_channels=1, num_classes=7, image_size=28)(Tensor(gray)).shape == (3, 7)


# ------------------------------------------------------------------------ initialisation


def test_resnet_init_is_kaiming_normal_fan_out_and_bn_one_zero():
    m = resnet20(rng=np.random.default_rng(0))
    for name, mod in m.named_modules():
        kind = type(mod).__name__
        if kind == "Conv2d":
            w = mod.weight.data.astype(np.float64)
            c_out, _, kh, kw = w.shape
            std = math.sqrt(2.0 / (c_out * kh * kw))
            n = w.size
            assert abs(w.std() - std) < 5 * std / math.sqrt(2 * n), name
            assert abs(w.mean()) < 5 * std / math.sqrt(n), name
        elif kind == "BatchNorm2d":
            assert (mod.weight.data == 1).all() and (mod.bias.data == 0).all(), name
    # seeded: the same generator (or manual_seed) gives the same network
    again = resnet20(rng=np.random.default_rng(0)).state_dict()
    assert all(np.array_equal(v, again[k]) for k, v in m.state_dict().items())
    manual_seed(4)
    a = resnet20().state_dict()
    manual_seed(4)
    assert all(np.array_equal(v, a[k]) for k, v in resnet20().state_dict().items())


@pytest.mark.parametrize("shape, mode, nonlinearity, a, expected", [
    ((64, 16, 3, 3), "fan_out", "relu", 0, math.sqrt(2 / (64 * 9))),
    ((64, 16, 3, 3), "fan_in", "relu", 0, math.sqrt(2 / (16 * 9))),
    ((300, 200), "fan_in", "leaky_relu", 0, math.sqrt(2 / 200)),
    ((300, 200), "fan_in", "leaky_relu", 0.2, math.sqrt(2 / 1.04 / 200)),
    ((300, 200), "fan_out", "tanh", 0, 5 / 3 / math.sqrt(300)),
    ((300, 200), "fan_in", "linear", 0, 1 / math.sqrt(200)),
])
def test_kaiming_normal_std(shape, mode, nonlinearity, a, expected):
    w = Tensor(np.zeros(shape, np.float32))
    out = init.kaiming_normal_(w, a=a, mode=mode, nonlinearity=nonlinearity, generator=np.random.default_rng(0))
    assert out is w and w.dtype == np.float32
    n = w.numel()
    assert abs(float(w.data.std()) - expected) < 5 * expected / math.sqrt(2 * n)


def test_kaiming_gains_are_torchs():
    torch = pytest.importorskip("torch")
    for name in ("linear", "conv2d", "sigmoid", "tanh", "relu", "selu"):
        assert init.calculate_gain(name) == pytest.approx(torch.nn.init.calculate_gain(name), rel=1e-15)
    for slope in (None, 0, 0.2):
        assert init.calculate_gain("leaky_relu", slope) == pytest.approx(
            torch.nn.init.calculate_gain("leaky_relu", slope), rel=1e-15)


@pytest.mark.parametrize("call, message", [
    (lambda: init.kaiming_normal_(Tensor(np.zeros(5))), r"kaiming_normal_: .* at least 2 axes .* got shape \(5,\)"),
    (lambda: init.kaiming_normal_(Tensor(np.zeros((2, 2))), mode="fan"), "mode must be 'fan_in' or 'fan_out'; got 'fan'"),
    (lambda: init.kaiming_normal_(Tensor(np.zeros((2, 0)))), r"a weight of shape \(2, 0\) has fan_in 0"),
    (lambda: init.kaiming_normal_(Tensor(np.zeros((2, 2))), nonlinearity="swish"),
     "calculate_gain: unsupported nonlinearity 'swish'"),
])
def test_kaiming_normal_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------------ PyTorch twins


def _to_torch(torch, sd):
    return {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}


def _train_forwards(torch, ours, theirs, size, times=2):
    """A few train-mode forwards on both: non-trivial running statistics for eval mode."""
    ours.train()
    theirs.train()
    for i in range(times):
        x = _images(2, size, seed=10 + i) * (1 + i) + 0.5 * i
        ours(Tensor(x))
        with torch.no_grad():
            theirs(torch.from_numpy(x))


@pytest.mark.parametrize("name, size", [("resnet20", 16), ("resnet9", 16)])
@pytest.mark.parametrize("direction", ["ours_to_torch", "torch_to_ours"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_twin_gives_the_same_logits_and_gradients_float64(name, size, direction, mode):
    """Weights moved through state_dict / load_state_dict as numpy arrays, one way or the other;
    then batch 1 and an odd batch (3) give the same logits and gradients of every parameter. In
    eval mode, after train-mode forwards (running statistics, batch counters compared)."""
    torch = pytest.importorskip("torch")
    manual_seed(0)
    torch.manual_seed(0)
    ours, theirs = MODELS[name]().astype(np.float64), torch_model(name).double()
    sd, tsd = ours.state_dict(), theirs.state_dict()
    assert list(sd) == list(tsd), "state_dict names/order differ from PyTorch's"
    assert {k: v.shape for k, v in sd.items()} == {k: tuple(v.shape) for k, v in tsd.items()}
    if direction == "ours_to_torch":  # our state_dict, as numpy arrays, into torch's
        theirs.load_state_dict(_to_torch(torch, sd), strict=True)
    else:  # torch's (its own init) into ours, through numpy arrays
        ours.load_state_dict({k: v.numpy() for k, v in tsd.items()}, strict=True)
        assert not np.allclose(ours.fc.weight.data, MODELS[name]().fc.weight.data)
    if mode == "eval":
        _train_forwards(torch, ours, theirs, size)
        tsd = theirs.state_dict()
        for k, v in ours.state_dict().items():  # running statistics and batch counters agree
            np.testing.assert_allclose(v, tsd[k].numpy(), rtol=1e-10, atol=1e-12, err_msg=k)
        counter = "bn1.num_batches_tracked" if name == "resnet20" else "prep.bn.num_batches_tracked"
        assert int(ours.state_dict()[counter]) == 2
    ours.train(mode == "train")
    theirs.train(mode == "train")
    tparams = dict(theirs.named_parameters())
    assert [n for n, _ in ours.named_parameters()] == list(tparams)
    for batch in (1, 3):
        ours.zero_grad()
        theirs.zero_grad()
        x = _images(batch, size, seed=batch)
        y = np.arange(batch) * 3 % 10
        logits = ours(Tensor(x))
        tlogits = theirs(torch.from_numpy(x))
        np.testing.assert_allclose(logits.data, tlogits.detach().numpy(), rtol=1e-9, atol=1e-10)
        F.cross_entropy(logits, y).backward()
        torch.nn.functional.cross_entropy(tlogits, torch.from_numpy(y)).backward()
        for pname, p in ours.named_parameters():
            tg = tparams[pname].grad.numpy()
            scale = max(np.abs(tg).max(), 1e-30)
            np.testing.assert_allclose(p.grad, tg, rtol=1e-7, atol=1e-9 * scale, err_msg=f"batch {batch}: {pname}")


def test_resnet20_twin_at_full_size_batch_1():
    """32 x 32 images (the stages at 32, 16 and 8 pixels), train mode, our weights into torch's."""
    torch = pytest.importorskip("torch")
    manual_seed(1)
    ours, theirs = resnet20().astype(np.float64), torch_model("resnet20").double()
    theirs.load_state_dict(_to_torch(torch, ours.state_dict()), strict=True)
    x = _images(1, 32, seed=7)
    logits, tlogits = ours(Tensor(x)), theirs(torch.from_numpy(x))
    np.testing.assert_allclose(logits.data, tlogits.detach().numpy(), rtol=1e-9, atol=1e-10)
    logits.sum().backward()
    tlogits.sum().backward()
    tparams = dict(theirs.named_parameters())
    for pname, p in ours.named_parameters():
        tg = tparams[pname].grad.numpy()
        np.testing.assert_allclose(p.grad, tg, rtol=1e-7, atol=1e-9 * max(np.abs(tg).max(), 1e-30), err_msg=pname)


# ------------------------------------------------------------------------ training through the CLI


def _cli(out, model, *extra):
    return ["--model", model, "--epochs", "2", "--batch-size", "16", "--limit-train", "32", "--limit-test", "16",
            "--no-progress", "--out", str(out), *extra]


def test_resnet20_trains_through_the_cli_and_resumes_exactly(tmp_path, capsys, loads, monkeypatch):
    """He et al.'s defaults (SGD 0.1, momentum 0.9, wd 1e-4, cosine, crop + flip), two BatchNorm
    shards per batch; Ctrl-C inside epoch 2 then --resume gives the uninterrupted run's weights."""
    cfg = tr.config_from_args(tr.build_parser().parse_args(["--model", "resnet20"]))
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.schedule, cfg.augment,
            cfg.nesterov, cfg.micro_batch, cfg.micro_threads) == ("sgd", 0.1, 0.9, 1e-4, 128, "cosine", True,
                                                                   False, 64, 2)
    ref, out = tmp_path / "ref", tmp_path / "cut"
    assert tr.main(_cli(ref, "resnet20")) == 0
    records = _metrics(ref)
    assert len(records) == 2 and all(np.isfinite(r["train_loss"]) and r["images"] == 32 for r in records)
    summary = json.loads((ref / "summary.json").read_text())
    assert summary["model"] == "resnet20" and summary["parameters"] == 269_722
    model = resnet20()
    model.load(ref / "model.npz")  # strict: a ResNet-20's names and shapes
    with monkeypatch.context() as m:
        _interrupt_at(m, 5)  # the first step of epoch 2 (2 steps an epoch, 2 micro-batches a step)
        code, _, err = _main(_cli(out, "resnet20"), capsys)
    assert code == tr.INTERRUPTED and "interrupted in epoch 2, after 16 of its images" in err
    assert load_state(out / "checkpoint.npz")["config"]["model"] == "resnet20"
    code, _, err = _main(_cli(out, "resnet20", "--resume"), capsys)
    assert code == 0, err
    assert _untimed(_metrics(out)) == _untimed(records)
    theirs = dict(np.load(out / "model.npz"))
    for k, v in dict(np.load(ref / "model.npz")).items():
        np.testing.assert_array_equal(theirs[k], v, err_msg=k)


def test_resnet20_on_a_budget(tmp_path, loads, monkeypatch):
    FakeClock(monkeypatch)
    out = tmp_path / "budget"
    assert tr.main(["--model", "resnet20", "--budget", "6", "--batch-size", "16", "--limit-train", "32",
                    "--limit-test", "16", "--no-progress", "--out", str(out)]) == 0
    records = _metrics(out)
    assert records and all(r["wall_time"] <= 6 for r in records)


def test_resnet9_trains_through_the_cli(tmp_path, loads):
    cfg = tr.config_from_args(tr.build_parser().parse_args(["--model", "resnet9"]))
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.schedule, cfg.nesterov, cfg.weight_decay) == (
        "sgd", 0.4, 512, "onecycle", True, 5e-4)
    out = tmp_path / "r9"
    assert tr.main(["--model", "resnet9", "--epochs", "1", "--batch-size", "8", "--limit-train", "16",
                    "--limit-test", "8", "--no-progress", "--out", str(out)]) == 0
    (record,) = _metrics(out)
    assert np.isfinite(record["train_loss"]) and record["images"] == 16
    ResNet9().load(Path(out) / "model.npz")
