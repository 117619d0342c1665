"""models: SeedCNN, FCBaseline, FastCNN — sizes, names, the seed's init, gradients reaching
every layer, and PyTorch as an oracle (identical torch networks take our state_dict 1:1 and give
the same logits and parameter gradients in float64)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import tinygrad_cnn.functional as F
from tinygrad_cnn import Tensor, manual_seed, optim
from models import MODELS, Airbench93, Airbench94, FastCNN, FCBaseline, ResNet9, SeedCNN, resnet20
from models.seed_cnn import seed_init
from benchmarks.torch_twins import torch_model


def _images(n=4, c=3, size=32, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n, c, size, size)).astype(dtype)


# ------------------------------------------------------------------------ structure


def test_models_registry():
    assert MODELS == {"seed_cnn": SeedCNN, "fc": FCBaseline, "fast_cnn": FastCNN, "airbench94": Airbench94,
                      "airbench93": Airbench93, "resnet20": resnet20, "resnet9": ResNet9}


def test_seed_cnn_has_exactly_136874_parameters_and_the_seed_layers():
    m = SeedCNN()
    assert m.num_parameters() == 136_874
    assert sum(p.numel() for p in m.parameters()) == 136_874
    assert [n for n, _ in m.named_children()] == ["conv1", "conv2", "fc1", "fc2"]
    shapes = {k: v.shape for k, v in m.state_dict().items()}
    assert shapes == {"conv1.weight": (16, 3, 3, 3), "conv1.bias": (16,), "conv2.weight": (32, 16, 3, 3),
                      "conv2.bias": (32,), "fc1.weight": (64, 2048), "fc1.bias": (64,),
                      "fc2.weight": (10, 64), "fc2.bias": (10,)}
    assert m.conv1.padding == (1, 1) and m.conv2.padding == (1, 1)  # stored as pairs, as PyTorch does


def test_parameter_counts_of_the_other_models():
    assert FCBaseline().num_parameters() == 3072 * 256 + 256 + 256 * 64 + 64 + 64 * 10 + 10 == 803_786
    assert FastCNN().num_parameters() == 160_234
    fast = FastCNN().state_dict()
    assert "block1.conv.weight" in fast and "block1.conv.bias" not in fast  # BN follows: no conv bias
    assert "block5.bn.running_var" in fast and fast["fc.weight"].shape == (10, 128 * 4 * 4)
    assert list(FCBaseline().state_dict()) == ["layers.0.weight", "layers.0.bias", "layers.1.weight",
                                                "layers.1.bias", "layers.2.weight", "layers.2.bias"]
    with pytest.raises(ValueError, match="sizes"):
        FCBaseline(sizes=(10,))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shapes_cifar_and_fashion_mnist(name):
    cls = MODELS[name]
    m = cls()
    assert m(Tensor(_images(2))).shape == (2, 10)
    m1 = cls(sizes=(784, 32, 10)) if name == "fc" else cls(in_channels=1, image_size=28)
    assert m1(Tensor(_images(3, c=1, size=28))).shape == (3, 10)
    if name == "seed_cnn":
        assert m1.fc1.weight.shape == (64, 32 * 7 * 7)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_init_is_repeatable_from_manual_seed(name):
    manual_seed(3)
    a = MODELS[name]().state_dict()
    manual_seed(3)
    b = MODELS[name]().state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = MODELS[name](rng=np.random.default_rng(3)).state_dict()
    d = MODELS[name](rng=np.random.default_rng(3)).state_dict()
    assert all(np.array_equal(c[k], d[k]) for k in c)


# ------------------------------------------------------------------------ the seed's init


def test_seed_init_gives_the_documented_std_per_layer():
    """Every weight and bias ~ N(0, 1)/sqrt(fan-in channels): 3 for conv1, 16 for conv2, 32 for
    fc1 (the seed's choice, not its 2048 inputs) and 64 for fc2."""
    m = seed_init(SeedCNN(), np.random.default_rng(0))
    expected = {"conv1": 1 / math.sqrt(3), "conv2": 1 / math.sqrt(16), "fc1": 1 / math.sqrt(32),
                "fc2": 1 / math.sqrt(64)}
    for layer, std in expected.items():
        w = getattr(m, layer).weight.data
        b = getattr(m, layer).bias.data
        assert w.dtype == np.float32 and b.dtype == np.float32
        values = np.concatenate([w.ravel(), b.ravel()]).astype(np.float64)
        n = values.size
        tol = 4 * std / math.sqrt(2 * n)  # 4 standard errors of a sample std
        assert abs(values.std() - std) < tol, (layer, values.std(), std)
        assert abs(values.mean()) < 4 * std / math.sqrt(n), layer
    # the biases are drawn too (not left at PyTorch's default init)
    assert abs(m.fc1.bias.data.std() - 1 / math.sqrt(32)) < 0.3 / math.sqrt(32)
    # seeded: the same generator seed gives the same network
    again = seed_init(SeedCNN(), np.random.default_rng(0)).state_dict()
    assert all(np.array_equal(v, again[k]) for k, v in m.state_dict().items())


def test_seed_init_differs_from_the_default_init():
    manual_seed(0)
    m = SeedCNN()
    default_std = m.fc1.weight.data.std()  # U(+-1/sqrt(2048)): std ~ 0.0128
    seed_init(m, np.random.default_rng(1))
    assert m.fc1.weight.data.std() > 10 * default_std


# ------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_parameter_gets_a_gradient_and_conv_filters_change(name):
    manual_seed(0)
    m = MODELS[name]()
    opt = optim.SGD(list(m.parameters()), lr=0.01)
    before = m.state_dict()
    x = Tensor(_images(8))
    y = np.arange(8) % 10
    loss = F.cross_entropy(m(x), y)
    loss.backward()
    for pname, p in m.named_parameters():
        if not p.requires_grad:  # frozen (airbench's whitening filters and BatchNorm scales)
            assert p.grad is None, pname
            continue
        assert p.grad is not None and p.grad.shape == p.shape, pname
        assert np.isfinite(p.grad.data).all(), pname
        assert np.abs(p.grad.data).max() > 0, pname
    for mod_name, mod in m.named_modules():
        if type(mod).__name__ == "Conv2d" and mod.weight.requires_grad:
            g = np.abs(mod.weight.grad.data).reshape(mod.weight.shape[0], -1).sum(axis=1)
            assert (g > 0).mean() >= 0.9, f"{mod_name}: {(g == 0).sum()} of {g.size} filters got no gradient"
    opt.step()
    after = m.state_dict()
    for pname, p in m.named_parameters():
        changed = not np.array_equal(before[pname], after[pname])
        assert changed == p.requires_grad, f"{pname}: changed {changed}, requires_grad {p.requires_grad}"
    # and the loss on the same batch goes down after a few steps
    for _ in range(3):
        loss2 = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss2.backward()
        opt.step()
    assert F.cross_entropy(m(x), y).item() < loss.item()


# ------------------------------------------------------------------------ torch oracle (benchmarks/torch_twins.py)


@pytest.mark.parametrize("name", ["seed_cnn", "fast_cnn", "fc"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_matches_torch_logits_and_gradients_float64(name, mode):
    torch = pytest.importorskip("torch")
    manual_seed(0)
    ours = MODELS[name]().astype(np.float64)
    theirs = torch_model(name).double()
    sd, tsd = ours.state_dict(), theirs.state_dict()
    assert list(sd) == list(tsd), "state_dict names/order differ from PyTorch's"
    assert {k: v.shape for k, v in sd.items()} == {k: tuple(v.shape) for k, v in tsd.items()}
    if mode == "eval" and name == "fast_cnn":  # non-trivial running statistics
        rng = np.random.default_rng(5)
        for k in sd:
            if k.endswith("running_mean"):
                sd[k] = rng.standard_normal(sd[k].shape) * 0.1
            elif k.endswith("running_var"):
                sd[k] = rng.uniform(0.5, 2.0, sd[k].shape)
        ours.load_state_dict(sd)
    theirs.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
    ours.train(mode == "train")
    theirs.train(mode == "train")

    x = _images(4, seed=1, dtype=np.float64)
    y = np.array([3, 1, 4, 1])
    logits = ours(Tensor(x))
    tlogits = theirs(torch.from_numpy(x))
    np.testing.assert_allclose(logits.data, tlogits.detach().numpy(), rtol=1e-9, atol=1e-10)
    F.cross_entropy(logits, y).backward()
    torch.nn.functional.cross_entropy(tlogits, torch.from_numpy(y)).backward()
    tparams = dict(theirs.named_parameters())
    assert [n for n, _ in ours.named_parameters()] == list(tparams)
    for pname, p in ours.named_parameters():
        tg = tparams[pname].grad.numpy()
        scale = max(np.abs(tg).max(), 1e-30)
        np.testing.assert_allclose(p.grad, tg, rtol=1e-7, atol=1e-9 * scale, err_msg=pname)
    if name == "fast_cnn":  # running statistics and batch counters agree after the forward
        tsd = theirs.state_dict()
        for k, v in ours.state_dict().items():
            np.testing.assert_allclose(v, tsd[k].numpy(), rtol=1e-10, atol=1e-12, err_msg=k)


def test_torch_state_dict_loads_into_our_model():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    theirs = torch_model("seed_cnn")
    ours = SeedCNN()
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()}, strict=True)
    x = _images(2, seed=2)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(Tensor(x)).data, expected, rtol=1e-4, atol=1e-5)
